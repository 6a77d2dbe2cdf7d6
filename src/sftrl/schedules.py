"""Learning-rate schedules: pure functions of the step, shared by the trainer and the methods.

A schedule gives the factor the step's peak learning rate is multiplied by. Imports nothing of
sftrl, so config-level code, methods and the trainer can all use it.
"""

from __future__ import annotations

import math

SCHEDULERS = ("constant", "cosine")


def lr_factor(step: int, total_steps: int, warmup_steps: int, scheduler: str, min_ratio: float = 0.0) -> float:
    """The factor for 0-based `step` of a stage `total_steps` long: linear warm-up to 1 over
    `warmup_steps` ((s+1)/(W+1), so the first step does not train at rate 0), then constant, or cosine
    decay from 1 to `min_ratio` at `total_steps` (2604.23747's SFT stage floors at 0.1 of the peak)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if scheduler == "constant":
        return 1.0
    if scheduler != "cosine":
        raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {scheduler!r}")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
