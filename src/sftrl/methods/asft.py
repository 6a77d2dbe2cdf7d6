"""ASFT, Anchored Supervised Fine-Tuning (arXiv 2509.23753): DFT plus a KL anchor to the reference model.

Per demonstration token (NeMo-RL's ASFTLossFn, nemo_rl/algorithms/loss/loss_functions.py):
  l_t = -sg(p_t) log p_t + λ·k3_t,   k3_t = exp(r_t) - 1 - r_t,  r_t = log π_ref(d_t) - log π_θ(d_t),
with r clamped to ±20 and k3 to ±10 (`asft_kl_input_clamp`, `asft_kl_output_clamp`), λ = `asft_kl_coef`
(0.03); L = Σ l_t / (demonstration tokens of the step), NeMo-RL's masked_mean with the global valid-token
count. π_ref is the model before training (the frozen reference; the base of a LoRA run). The k3 is
taken on the demonstration's tokens, which π_θ did not sample, as NeMo-RL does (its policies expose
per-token log-probabilities only); `kl_ref` logs the exact full-vocabulary KL beside it.
"""

from .. import losses
from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, TokenView, always, only


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    kl_sums = {"k3": 0.0, "p": 0.0}
    last: dict = {}

    def token_loss(logps, ref_logps):
        if ref_logps is not None:
            last["k3"] = losses.clamped_k3_kl(logps.detach(), ref_logps, cfg.asft_kl_input_clamp,
                                              cfg.asft_kl_output_clamp)
        return losses.asft_token_loss(logps, ref_logps, cfg.asft_kl_coef, cfg.asft_kl_input_clamp,
                                      cfg.asft_kl_output_clamp)

    def observe(view: TokenView) -> None:  # after each micro-batch's token_loss: its k3 and DFT weights on the counted tokens
        if "k3" in last:
            kl_sums["k3"] += float((last.pop("k3") * view.mask).sum())
        kl_sums["p"] += float((view.logps.exp() * view.mask).sum())

    metrics = trainer.sft_backward(examples, token_loss=token_loss, observe=observe)
    k3, p, tokens = trainer.global_sums([kl_sums["k3"], kl_sums["p"], sum(len(trainer.demonstration_ids(e)[0])
                                                                          for e in examples)])
    if tokens:
        metrics.update({"asft/k3": k3 / tokens, "dft/mean_p": p / tokens, "asft/kl_coef": cfg.asft_kl_coef})
    return metrics


METHOD = Method(name="asft", plan=always(StepKind.SFT), step=step, kinds=only(StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=False,
                needs_reference=lambda config: config.asft_kl_coef > 0)
