"""The negative control's reward: a seeded coin, unrelated to the completion.

GRPO trained on it (`sftrl compare`'s `grpo-random` row) shows how far a run moves with a reward that
carries no information about the answer: any method's gain that does not exceed the control's is not
evidence of learning from the reward. Each reward is a pure function of (seed, optimizer step,
prompt, position of the completion in the call), never of the completion's text, so a run is
reproducible and resumable and two completions of the same prompt get independent coins.
"""

from __future__ import annotations

import hashlib
from typing import Any

from .contract import RewardFunction


def coin_value(seed: int, step: int, prompt: Any, position: int) -> float:
    """A uniform number in [0, 1) fixed by its arguments (SHA-256, the same on every machine)."""
    key = f"sftrl.coin:{seed}:{step}:{position}:{prompt!r}".encode("utf-8")
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0 ** 64


def coin_reward(prob: float, seed: int) -> RewardFunction:
    """A TRL-style reward function paying 1 with probability `prob` and 0 otherwise, per completion."""
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"coin_reward: prob must be in [0, 1], got {prob}")

    def coin(prompts: list, completions: list, trainer_state: Any = None, **_: Any) -> list[float]:
        step = getattr(trainer_state, "global_step", 0) or 0
        return [1.0 if coin_value(seed, step, prompt, i) < prob else 0.0 for i, prompt in enumerate(prompts)]

    return coin
