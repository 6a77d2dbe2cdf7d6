"""GRPO→SFT, the reverse two-stage order (SRFT Table 1 reports it as harmful): `grpo_steps` GRPO
steps, then SFT. With `sft_kl_coef` = λ > 0 the SFT steps add λ·KL(π_θ‖π_RL-end), the exact
full-vocabulary KL to the model as it was at the end of RL (RL→SFT_KL), on the demonstration positions.
"""


from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, only


def plan(config, step, state):
    return StepKind.POLICY if step < config.grpo_steps else StepKind.SFT


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    if kind is StepKind.POLICY:
        return trainer.grpo_backward(examples)
    return trainer.sft_backward(examples, kl_coef=trainer.config.sft_kl_coef)


def after_step(trainer: StepContext, state: State, metrics: Metrics) -> None:
    cfg = trainer.config
    if trainer.step == cfg.grpo_steps and cfg.sft_kl_coef > 0:
        trainer.snapshot_reference()  # π_RL-end, kept in checkpoints from here on


METHOD = Method(name="grpo-then-sft", plan=plan, step=step, kinds=only(StepKind.POLICY, StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=True, after_step=after_step,
                snapshots_reference=lambda config: config.sft_kl_coef > 0)
