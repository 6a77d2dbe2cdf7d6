"""avg@k and pass@k: per question, summarised per data_source and overall, and the summary as a
plain-text table."""

from __future__ import annotations

import math
from typing import Any

from .formatting import number


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


def pass_ks(k: int) -> list[int]:
    """The pass@k values reported for k samples: 1, 2, 4, ... up to k, and k itself."""
    values = [1]
    while values[-1] * 2 <= k:
        values.append(values[-1] * 2)
    return values if values[-1] == k else values + [k]


def _summarize_group(records: list[dict]) -> dict[str, float]:
    """Means over questions of avg@k and pass@j, each question with its own k; pass@j for the j
    every question in the group has samples for."""
    k = min(len(r["grades"]) for r in records)
    out: dict[str, float] = {"questions": len(records), "k": k,
                             "avg@k": sum(avg_at_k(r["grades"]) for r in records) / len(records)}
    for j in pass_ks(k):
        out[f"pass@{j}"] = sum(pass_at_k(len(r["grades"]), int(sum(r["grades"])), j) for r in records) / len(records)
    lengths = [n for r in records for n in r["lengths"]]
    out["mean_length"] = sum(lengths) / len(lengths)
    out["truncated"] = sum(t for r in records for t in r["truncated"]) / len(lengths)
    return out


def summarize(records: list[dict]) -> dict[str, Any]:
    """avg@k, pass@j (j = 1, 2, 4, ..., k), mean length and truncation per data_source; overall, with
    every question weighted equally; and `source_mean`, the mean over sources of avg@k (the papers'
    "average" column)."""
    if not records:
        raise ValueError("nothing to summarize: no graded questions")
    by_source: dict[str, list[dict]] = {}
    for record in records:
        by_source.setdefault(record["data_source"], []).append(record)
    sources = {name: _summarize_group(group) for name, group in by_source.items()}
    return {"by_source": sources, "overall": _summarize_group(records),
            "source_mean": sum(s["avg@k"] for s in sources.values()) / len(sources)}


def format_summary(summary: dict[str, Any]) -> str:
    """The summary as a plain-text table: one row per data_source, then overall."""
    rows = [(name, s) for name, s in summary["by_source"].items()] + [("overall", summary["overall"])]
    header = f"{'data_source':<20} {'n':>6} {'k':>4} {'avg@k':>8} {'pass@1':>8} {'pass@k':>8} {'length':>8} {'trunc':>7}"
    lines = [header, "-" * len(header)]
    for name, s in rows:
        k = int(s["k"])
        lines.append(f"{name:<20} {int(s['questions']):>6} {k:>4} {number(s['avg@k'], '>8.1%')} "
                     f"{number(s['pass@1'], '>8.1%')} {number(s[f'pass@{k}'], '>8.1%')} "
                     f"{number(s['mean_length'], '>8.1f')} {number(s['truncated'], '>7.1%')}")
    if len(summary["by_source"]) > 1:
        lines.append(f"mean avg@k over the {len(summary['by_source'])} sources: {number(summary['source_mean'], '.1%')}")
    return "\n".join(lines)
