"""SFT→GRPO, the two-stage baseline: `sft_steps` SFT steps, then GRPO from the fine-tuned model.

The optimizer and its schedule carry on across the switch (one run, one schedule), as a single
training job with a stage boundary would; set `warmup_steps` for a fresh warm-up at the start only.
"""

from .base import Method, StepKind, only


def plan(config, step, state):
    return StepKind.SFT if step < config.sft_steps else StepKind.POLICY


def step(trainer, state, examples, kind):
    return trainer.sft_backward(examples) if kind is StepKind.SFT else trainer.grpo_backward(examples)


METHOD = Method(name="sft-then-grpo", plan=plan, step=step, kinds=only(StepKind.SFT, StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True)
