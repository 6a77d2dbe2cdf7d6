"""SFT: token NLL of the demonstrations of this step's prompts; no rollouts."""

NEEDS_DEMONSTRATIONS = True
NEEDS_ROLLOUTS = False
LEARNING_RATES = ("sft_learning_rate",)


def step(trainer, state, examples):
    return trainer.sft_backward(examples)
