"""A control reward for benchmarks/sandbox_gains.py: 1 or 0 with probability 1/2, unrelated to the answer.

RL trained on it must not gain accuracy; if it did, the "gain" of RL with the real reward would be an
artefact of the update (clipping, length or entropy effects) rather than of the reward.
"""

import random

_generator = random.Random(0)


def random_reward(prompts, completions, **kwargs):
    return [float(_generator.random() < 0.5) for _ in completions]
