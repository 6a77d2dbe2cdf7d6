"""GRPO ("zero-RL" from the base model): G rollouts per prompt, group advantages, clipped surrogate (+β·KL)."""

from .base import Method, StepKind, always, only


def step(trainer, state, examples, kind):
    return trainer.grpo_backward(examples)


METHOD = Method(name="grpo", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=False, needs_rollouts=True)
