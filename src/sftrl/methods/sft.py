"""SFT: token NLL of the demonstrations of this step's prompts; no rollouts."""


from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, always, only


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    return trainer.sft_backward(examples)


METHOD = Method(name="sft", plan=always(StepKind.SFT), step=step, kinds=only(StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=False, needs_reference=lambda config: False)
