"""DFT, Dynamic Fine-Tuning (arXiv 2508.05629): SFT whose token NLL is weighted by the token's own probability.

L = -Σ_t sg(p_t) log p_t / (demonstration tokens of the step), p_t = π_θ(d_t | x, d_<t): the gradient
of plain SFT, sg(p)·∇log p = ∇p, no longer grows as 1/p on tokens the model finds implausible. As TRL
1.16's SFTTrainer computes it with loss_type="dft" (per_token_loss · log_probs.exp().detach(), summed and
divided by num_items_in_batch, the token count of the whole step): a token mean over every demonstration
token of the step, whatever the micro-batches. Logits at temperature 1; no rollouts, no reference.
"""

from .. import losses
from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, always, only


def dft_token_weights(logps, entropy):
    return losses.dft_weights(logps)


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    metrics = trainer.sft_backward(examples, token_weights=dft_token_weights)
    if "sft/mean_weight" in metrics:
        metrics["dft/mean_p"] = metrics.pop("sft/mean_weight")
    return metrics


METHOD = Method(name="dft", plan=always(StepKind.SFT), step=step, kinds=only(StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=False, needs_reference=lambda config: False)
