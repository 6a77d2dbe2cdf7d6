"""GRPO ("zero-RL" from the base model): G rollouts per prompt, group advantages, clipped surrogate (+β·KL)."""


from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, always, only


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    return trainer.grpo_backward(examples)


METHOD = Method(name="grpo", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=False, needs_rollouts=True)
