"""SFT→GRPO, the two-stage baseline, run as arXiv 2604.23747 shows it must be: an SFT stage with its
own length (`sft_steps`, or `sft_epochs` passes over the training rows), batch (`sft_batch_size`),
peak rate (`sft_learning_rate`) and schedule over the stage (`sft_lr_scheduler`, `sft_warmup_ratio`,
`sft_min_lr_ratio`: its recipe is cosine, 10% warm-up, floor 0.1), then GRPO from the fine-tuned model
with the run's schedule (`lr_scheduler`, `warmup_steps`) restarted over the RL stage and, as a
separate RL job would, fresh AdamW moments (`stage_reset_optimizer`). Both stages normalise their
losses over the whole step (never a mean of micro-batch means: 2604.23747's second bug).
"""

import math

from ..config import ConfigError
from ..data import Example
from ..formatting import number
from ..schedules import lr_factor

from .base import Method, Metrics, State, StepContext, StepKind, only, peak_learning_rate


def sft_stage_steps(config, train_size: int) -> int:
    """The SFT stage's length: ceil(sft_epochs · rows / sft_batch_size), or sft_steps."""
    if config.sft_epochs is None:
        return config.sft_steps
    return math.ceil(config.sft_epochs * train_size / config.sft_batch)


def init_state(config, train_size: int) -> dict:
    sft = sft_stage_steps(config, train_size)
    total = sft + config.rl_steps if config.rl_steps is not None else config.max_steps
    if config.sft_epochs is not None and total <= sft:
        raise ConfigError(f"max_steps: {config.max_steps} leaves no RL stage after the SFT stage of {sft} steps "
                          f"(sft_epochs {number(config.sft_epochs, 'g')} over {train_size} rows, {config.sft_batch} a step); "
                          "set rl_steps, the RL stage's length")
    return {"sft_stage_steps": sft, "total_steps": total}


def total_steps(config, state) -> int:
    return state["total_steps"]


def plan(config, step, state):
    return StepKind.SFT if step < state["sft_stage_steps"] else StepKind.POLICY


def learning_rate(config, step, kind, state) -> float:
    """Each stage's peak rate times its own schedule, over its own steps."""
    sft = state["sft_stage_steps"]
    if kind is StepKind.SFT:
        scheduler = config.sft_lr_scheduler or config.lr_scheduler
        warmup = config.warmup_steps if config.sft_warmup_ratio is None else round(config.sft_warmup_ratio * sft)
        factor = lr_factor(step, sft, warmup, scheduler, config.sft_min_lr_ratio)
    else:
        factor = lr_factor(step - sft, state["total_steps"] - sft, config.warmup_steps, config.lr_scheduler)
    return peak_learning_rate(config, kind) * factor


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    return trainer.sft_backward(examples) if kind is StepKind.SFT else trainer.grpo_backward(examples)


def after_step(trainer: StepContext, state: State, metrics: Metrics) -> None:
    if trainer.step == state["sft_stage_steps"] and trainer.config.stage_reset_optimizer:
        trainer.reset_optimizer_state()  # the RL stage starts as a new job would (2604.23747)
    metrics["sft_then_grpo/stage"] = "sft" if trainer.step <= state["sft_stage_steps"] else "rl"


METHOD = Method(name="sft-then-grpo", plan=plan, step=step, kinds=only(StepKind.SFT, StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state, after_step=after_step,
                learning_rate=learning_rate, total_steps=total_steps)
