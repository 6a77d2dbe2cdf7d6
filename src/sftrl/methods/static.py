"""Static hybrids, the fixed SFT/GRPO mixtures SASR is compared against (`static_mode`):
- alternate: k SFT steps, then m GRPO steps, repeating (`static_sft_steps`, `static_grpo_steps`);
- probability: each step is SFT with a fixed probability p (`static_sft_prob`), drawn from the
  run's seeded generator (checkpointed, so a resumed run draws the same);
- weighted: one loss μ·SFT + (1-μ)·GRPO on the same prompts every step (`static_sft_weight`).
"""

import random


from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind


def init_state(config, train_size: int) -> dict:
    return {"rng": random.Random(config.seed).getstate(), "mode": None}


def mode_at(config, step: int, state: dict) -> str:
    """"sft", "grpo" or "weighted" for 0-based step `step` (probability mode advances the generator).
    Called once per step, by plan; the step reads the mode back from the state."""
    if config.static_mode == "alternate":
        cycle = config.static_sft_steps + config.static_grpo_steps
        return "sft" if step % cycle < config.static_sft_steps else "grpo"
    if config.static_mode == "probability":
        generator = random.Random()
        generator.setstate(state["rng"])
        alpha = generator.random()
        state["rng"] = generator.getstate()
        return "sft" if alpha < config.static_sft_prob else "grpo"
    return "weighted"


def plan(config, step: int, state: dict) -> StepKind:
    state["mode"] = mode_at(config, step, state)
    return StepKind.SFT if state["mode"] == "sft" else StepKind.POLICY


def kinds(config) -> frozenset[StepKind]:
    if config.static_mode == "weighted":
        return frozenset({StepKind.POLICY})  # one mixed loss every step
    return frozenset({StepKind.SFT, StepKind.POLICY})


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    if state["mode"] == "sft":
        return trainer.sft_backward(examples)
    if state["mode"] == "grpo":
        return trainer.grpo_backward(examples)
    mu = cfg.static_sft_weight
    return {**trainer.sft_backward(examples, weight=mu), **trainer.grpo_backward(examples, weight=1.0 - mu),
            "static/sft_weight": mu}


METHOD = Method(name="static", plan=plan, step=step, kinds=kinds, needs_demonstrations=True, needs_rollouts=True,
                init_state=init_state)
