"""SFT→GRPO, the two-stage baseline: `sft_steps` SFT steps, then GRPO from the fine-tuned model.

The optimizer and its schedule carry on across the switch (one run, one schedule), as a single
training job with a stage boundary would; set `warmup_steps` for a fresh warm-up at the start only.
"""

NEEDS_DEMONSTRATIONS = True
NEEDS_ROLLOUTS = True
LEARNING_RATES = ("learning_rate", "sft_learning_rate")


def step(trainer, state, examples):
    if trainer.step < trainer.config.sft_steps:
        return trainer.sft_backward(examples)
    return trainer.grpo_backward(examples)
