"""SFT: token NLL of the demonstrations of this step's prompts; no rollouts."""

from .base import Method, StepKind, always, only


def step(trainer, state, examples, kind):
    return trainer.sft_backward(examples)


METHOD = Method(name="sft", plan=always(StepKind.SFT), step=step, kinds=only(StepKind.SFT),
                needs_demonstrations=True, needs_rollouts=False, needs_reference=lambda config: False)
