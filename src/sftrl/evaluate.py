"""Evaluation: accuracy of a model on a set of examples (greedy decoding, graded by reward functions).

The full benchmark harness (avg@k / pass@k per data_source, vLLM) builds on this.
"""

from __future__ import annotations

import math
from typing import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .data import Example, render_prompt
from .rewards import score_completions
from .rollout import generate_completions


def reward_columns(examples: list[Example], repeat: int = 1) -> dict[str, list]:
    """Keyword columns for TRL-style reward functions: `answer` plus every other dataset column,
    each example's value repeated for its `repeat` completions."""
    columns: dict[str, list] = {"answer": [e.answer for e in examples for _ in range(repeat)]}
    for key in examples[0].columns:
        columns.setdefault(key, [e.columns.get(key) for e in examples for _ in range(repeat)])
    return columns


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    reward_fns: list[tuple[str, Callable]],
    max_new_tokens: int = 256,
    batch_size: int = 128,
    temperature: float = 0.0,
    progress=None,
) -> dict[str, float]:
    """Mean reward of one completion per example (greedy at temperature 0): accuracy for 0/1 rewards.

    Returns accuracy, mean completion length, the fraction of truncated completions, and the
    completions themselves under "completions" for inspection.
    """
    texts = [render_prompt(tokenizer, e.prompt) for e in examples]
    completions = generate_completions(model, tokenizer, texts, num_generations=1, max_new_tokens=max_new_tokens,
                                       temperature=temperature or 1.0, batch_size=batch_size,
                                       greedy=temperature == 0.0, progress=progress)
    rewards, _ = score_completions(reward_fns, [e.prompt for e in examples], completions.texts,
                                   reward_columns(examples))
    lengths = [len(c) for c in completions.completion_ids]
    return {
        "accuracy": float(rewards.nan_to_num(0.0).mean()),
        "mean_length": sum(lengths) / len(lengths),
        "truncated": sum(completions.truncated) / len(lengths),
        "completions": completions.texts,
    }


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021, Eq. 1)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def avg_at_k(grades: list[float]) -> float:
    """avg@k: the mean grade over a question's k samples (the papers' AIME/AMC metric with k = 32)."""
    if not grades:
        raise ValueError("avg@k of no samples")
    return sum(grades) / len(grades)
