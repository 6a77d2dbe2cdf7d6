"""OPD, on-policy distillation from another model (GKD, arXiv 2306.13649, with reverse KL; the Thinking
Machines recipe): the student samples G rollouts per prompt, the teacher `opd_teacher` (a local directory
or hub id, loaded once as the policy is, frozen; it must share the policy's tokenizer) scores the same
tokens in the same context, and the loss per token is OPSD's (`losses.distillation_token_loss`):
advantage log π_T(y_t) - log π_θ(y_t) (+ w·A, `distill_reward_coef`), whose gradient is the reverse-KL
policy gradient of verl's k1 distillation loss with use_policy_gradient (verl/trainer/distillation/losses.py:
advantages = -distillation_losses.detach()). Normalised by `loss_type` over the whole step; the preset
`dapo` is verl's token-mean (and TRL's DistillationTrainer's division by the step's token count).
"""

from ..data import Example
from ..models import resolve_model_path

from .base import Method, Metrics, State, StepContext, StepKind, always, only
from .opsd import distill_backward

PRESET = {"loss_type": "dapo"}


def init_state(config, train_size: int) -> dict:
    """No state; checks, as the run starts and before its first step, that a local opd_teacher holds a model
    (one line otherwise). A recipe may name a teacher that a run before it writes (recipes/sandbox-opd.yaml)."""
    resolve_model_path(config.opd_teacher, "opd_teacher")
    return {}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    assert cfg.opd_teacher is not None  # config validation requires it for opd
    return distill_backward(trainer, examples, trainer.frozen_model(cfg.opd_teacher, "opd_teacher"))


METHOD = Method(name="opd", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=False, needs_rollouts=True, init_state=init_state, preset=PRESET)
