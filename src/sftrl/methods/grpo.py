"""GRPO ("zero-RL" from the base model): G rollouts per prompt, group advantages, clipped surrogate (+β·KL)."""

NEEDS_DEMONSTRATIONS = False
NEEDS_ROLLOUTS = True
LEARNING_RATES = ("learning_rate",)


def step(trainer, state, examples):
    return trainer.grpo_backward(examples)
