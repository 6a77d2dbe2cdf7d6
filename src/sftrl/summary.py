"""Statistics, tables and figures over compared runs (`sftrl compare`): means with 95% confidence
intervals over seeds, paired (same-seed) differences, gains over the base model and over the
negative control, learning curves, and the regime map (which method wins where).

A result row is one run's evaluation: ``{"method": label, "seed": s, "in-dist": {"avg@k": ...},
"in-dist/chain": ..., "ood": ..., "greedy_after": ..., "curve": [{"step", "token_passes", "avg@k"}]}``;
the base model has rows of its own under the label ``base``. Accuracies are fractions; tables print
points (percent).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any, Callable

from .formatting import number
from .report import legend_outside, save_figure, series_style

# Display order; grpo-random, the negative control, sits beside GRPO, GAC beside SASR.
METHOD_ORDER = ["sft", "grpo", "grpo-random", "sft-then-grpo", "grpo-then-sft", "static", "luffy", "srft", "hpt",
                "relift", "chord", "uft", "sasr", "gac"]
CONTROL = "grpo-random"
BASE = "base"
HEADLINE = "in-dist"  # the split whose avg@k ranks methods (the map's colour, the gains)
# Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond 30).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


# ------------------------------------------------------------------------------------ statistics
def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its two-sided 95% confidence interval (Student t; 0 for one value)."""
    mean, std = mean_std(values)
    n = len(values)
    if n < 2:
        return mean, 0.0
    t = T95[n - 2] if n - 1 <= len(T95) else 1.96
    return mean, t * std / math.sqrt(n)


def paired(results: list[dict[str, Any]], metric: Callable[[dict], float | None], a: str, b: str
           ) -> dict[str, Any] | None:
    """metric(a) - metric(b) over the seeds both have: mean, 95% CI half-width, whether the interval
    excludes zero (`separated`); None with fewer than two shared seeds."""
    values = {(r["method"], r["seed"]): metric(r) for r in results}
    seeds = sorted(s for (m, s), v in values.items() if m == a and v is not None and values.get((b, s)) is not None)
    if len(seeds) < 2:
        return None
    mean, half = mean_ci([values[(a, s)] - values[(b, s)] for s in seeds])
    return {"a": a, "b": b, "seeds": len(seeds), "mean": mean, "ci95": half, "separated": abs(mean) > half}


def paired_differences(results: list[dict[str, Any]], metric: Callable[[dict], float | None],
                       methods: list[str]) -> list[dict[str, Any]]:
    """`paired` for every pair of methods (a before b in `methods`) that shares two seeds or more."""
    rows = [paired(results, metric, a, b) for a, b in itertools.combinations(methods, 2)]
    return [row for row in rows if row is not None]


def headline(result: dict[str, Any]) -> float | None:
    """A row's headline metric: in-distribution avg@k."""
    return result.get(HEADLINE, {}).get("avg@k")


# ------------------------------------------------------------------------------------ tables
def names_in(results: list[dict[str, Any]]) -> list[str]:
    """The row labels present, base first, then METHOD_ORDER, then any other in name order."""
    return ordered_labels({r["method"] for r in results})


def ordered_labels(present: set[str]) -> list[str]:
    """Labels in display order: base first (always), then METHOD_ORDER, then any other in name order."""
    names = [BASE] + [m for m in METHOD_ORDER if m in present]
    return names + sorted(present - set(names))


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    return _mean_text(*mean_ci([v * scale for v in values]), len(values), digits)


def _mean_text(mean: float, half: float, n: int, digits: int = 1) -> str:
    """`mean ± half` (the mean alone for one value), as every table cell prints it."""
    spec = f".{digits}f"
    return f"{number(mean, spec)} ± {number(half, spec)}" if n > 1 else number(mean, spec)


def _difference_cell(d: dict[str, Any] | None) -> str:
    if d is None:
        return "–"
    text = f"{number(100 * d['mean'], '+.1f')} ± {number(100 * d['ci95'], '.1f')}"
    return f"**{text}**" if d["separated"] else text


def above_control(results: list[dict[str, Any]], label: str) -> bool | None:
    """Whether `label`'s headline gain exceeds the control's with a paired interval above zero; None
    when there is no control (or too few shared seeds) to say."""
    d = paired(results, headline, label, CONTROL)
    return None if d is None else d["mean"] - d["ci95"] > 0


def comparison_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: one row per method (base model first), mean ± 95% CI half-width over seeds, in percent;
    the gain over the base model and over the negative control (paired, same seeds), a † where the gain
    is not above the control's; greedy accuracy and the cost beside it."""
    columns = [("in-dist", f"in-dist avg@{k}"), ("in-dist/chain", "chain"), ("in-dist/double", "double"),
               ("ood", f"ood avg@{k}"), ("ood/chain", "ood chain"), ("ood/double", "ood double")]
    lines = ["| method | seeds | " + " | ".join(title for _, title in columns)
             + " | gain vs base | gain vs control | greedy in-dist | steps | token passes (M) | train s |",
             "|---|---:|" + "---:|" * (len(columns) + 6)]
    has_control = any(r["method"] == CONTROL for r in results)
    for name in names_in(results):
        rows = [r for r in results if r["method"] == name]
        cells = [_cell([r[key]["avg@k"] for r in rows if key in r]) for key, _ in columns]
        gain = _difference_cell(paired(results, headline, name, BASE)) if name != BASE else "–"
        over = "–"
        if has_control and name not in (BASE, CONTROL):
            over = _difference_cell(paired(results, headline, name, CONTROL))
            if above_control(results, name) is False:
                over += " †"
        greedy = _cell([r["greedy_after"] for r in rows if r.get("greedy_after") is not None])
        steps = _cell([r["steps"] for r in rows if r.get("steps") is not None], 1.0, 0)
        tokens = _cell([r["total_token_passes"] for r in rows if r.get("total_token_passes")], 1e-6, 2)
        seconds = _cell([r["train_seconds"] for r in rows if r.get("train_seconds") is not None], 1.0, 0)
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells)
                     + f" | {gain} | {over} | {greedy} | {steps} | {tokens} | {seconds} |")
    return "\n".join(lines)


def differences_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: paired differences (row a minus b, same seeds) of avg@k with 95% CIs, in points;
    a bold entry's interval excludes zero."""
    names = names_in(results)
    diffs = {split: {(d["a"], d["b"]): d for d in
                     paired_differences(results, lambda r, s=split: r.get(s, {}).get("avg@k"), names)}
             for split in ("in-dist", "ood")}
    lines = [f"| a − b | in-dist avg@{k} | ood avg@{k} |", "|---|---:|---:|"]
    for a, b in itertools.combinations(names, 2):
        cells = [_difference_cell(diffs[split].get((a, b))) for split in ("in-dist", "ood")]
        if any(c != "–" for c in cells):
            lines.append(f"| {a} − {b} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ figures
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_accuracy(results: list[dict[str, Any]], k: int, splits: dict[str, str], path: Path) -> None:
    """Grouped bars: in-distribution and OOD avg@k per method, mean over seeds, error bars the 95% CI,
    seeds as dots."""
    plt = _pyplot()
    names = names_in(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 1.5), 4))
    for offset, (split, color) in zip((-0.2, 0.2), (("in-dist", "#1f77b4"), ("ood", "#ff7f0e"))):
        for i, name in enumerate(names):
            values = [100 * r[split]["avg@k"] for r in results if r["method"] == name and split in r]
            if not values:
                continue
            mean, half = mean_ci(values)
            ax.bar(i + offset, mean, width=0.4, color=color, yerr=half if len(values) > 1 else None, capsize=3,
                   label=f"{split} ({splits[split]})" if i == 0 else None)
            ax.scatter([i + offset] * len(values), values, color="black", s=6, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel=f"avg@{k} (%)", title="Sandbox accuracy after equal budgets (mean, 95% CI over seeds)")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax, 2)  # beside the bars: over them it hides the seeds' dots
    save_figure(fig, path)


def curve_points(results: list[dict[str, Any]], label: str, x_key: str) -> list[tuple[float, float, float]]:
    """(x, mean, CI half-width) of `label`'s learning curve, over the seeds that have each point; x is
    the step (`x_key` "step") or the mean token passes at that step over seeds ("token_passes")."""
    by_step: dict[int, list[dict]] = {}
    for r in results:
        if r["method"] == label:
            for point in r.get("curve", []):
                by_step.setdefault(point["step"], []).append(point)
    points = []
    for step in sorted(by_step):
        mean, half = mean_ci([100 * p["avg@k"] for p in by_step[step]])
        x = step if x_key == "step" else sum(p["token_passes"] for p in by_step[step]) / len(by_step[step])
        points.append((x, mean, half))
    return points


def plot_curves(results: list[dict[str, Any]], k: int, path: Path) -> bool:
    """Learning curves: in-distribution avg@k against optimizer steps and against token passes, mean
    and 95% band over seeds per method. Returns False (and writes nothing) when no run has a curve."""
    labels = [name for name in names_in(results) if any(r["method"] == name and r.get("curve") for r in results)]
    if not labels:
        return False
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    for ax, x_key, x_label in ((axes[0], "step", "optimizer step"), (axes[1], "token_passes", "token passes")):
        for i, label in enumerate(labels):
            points = curve_points(results, label, x_key)
            xs, means, halves = [p[0] for p in points], [p[1] for p in points], [p[2] for p in points]
            color, linestyle = series_style(i)
            ax.plot(xs, means, marker="o", markersize=3, label=label, color=color, linestyle=linestyle)
            ax.fill_between(xs, [m - h for m, h in zip(means, halves)], [m + h for m, h in zip(means, halves)],
                            color=color, alpha=0.12)
        ax.set(xlabel=x_label, ylabel=f"in-dist avg@{k} (%)")
        ax.grid(alpha=0.3)
    axes[0].set_title("Learning curves (mean, 95% band over seeds)")
    axes[1].set_title("The same against what each run spent")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------ the regime map
def regime_cells(regimes: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per regime and method: the headline mean and CI half-width, the table's text for it, the gain over
    the control, and the map's marks: `best` (highest mean) and `tied` (its paired difference with the
    best does not exclude zero: not separated from the winner). The map's table and figure are drawn
    from these cells alone, so a map can be redrawn from saved regimes.json files without the runs."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    for name, results in regimes:
        row: dict[str, dict[str, Any]] = {}
        for label in names_in(results):
            values = [headline(r) for r in results if r["method"] == label and headline(r) is not None]
            if values:
                mean, half = mean_ci(values)
                # the comparison table's cell, so a regime's number reads the same digits in both
                row[label] = {"mean": mean, "ci95": half, "seeds": len(values), "text": _cell(values),
                              "above_control": above_control(results, label) if label not in (BASE, CONTROL) else None}
        methods = [m for m in row if m != BASE]
        if methods:
            best = max(methods, key=lambda m: row[m]["mean"])
            for m in methods:
                d = paired(results, headline, best, m) if m != best else None
                row[m]["best"] = m == best
                row[m]["tied"] = m != best and d is not None and not d["separated"]
        cells[name] = row
    return cells


def regime_map_table(regimes: list[tuple[str, list[dict[str, Any]]]], k: int) -> str:
    """Markdown: methods x regimes, in-dist avg@k mean ± CI; **bold** the best, *italic* a method not
    separated from the best (paired 95% interval includes zero); † a gain not above the control's."""
    return map_table(regime_cells(regimes))


def plot_regime_map(regimes: list[tuple[str, list[dict[str, Any]]]], k: int, path: Path) -> None:
    """The regime map's heatmap for compared runs (see draw_map)."""
    draw_map(regime_cells(regimes), k, path)


def map_table(cells: dict[str, dict[str, dict[str, Any]]]) -> str:
    """`regime_map_table` from cells (regime -> label -> cell, as regime_cells and regimes.json give them)."""
    labels = ordered_labels({label for row in cells.values() for label in row})
    lines = ["| method | " + " | ".join(cells) + " |", "|---|" + "---:|" * len(cells)]
    for label in labels:
        row = []
        for name in cells:
            c = cells[name].get(label)
            if c is None:
                row.append("–")
                continue
            # a regimes.json written before cells carried their text: the same format from mean and CI
            text = c.get("text") or _mean_text(100 * c["mean"], 100 * c["ci95"], c.get("seeds", 2))
            text = f"**{text}**" if c.get("best") else f"*{text}*" if c.get("tied") else text
            row.append(text + (" †" if c.get("above_control") is False else ""))
        lines.append(f"| {label} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def draw_map(cells: dict[str, dict[str, dict[str, Any]]], k: int, path: Path) -> None:
    """Heatmap: methods (rows) x regimes (columns), colour = mean in-dist avg@k over seeds; ★ the best
    in each regime, ○ a method whose paired difference with the best does not exclude zero, † a gain
    not above the random-reward control's."""
    plt = _pyplot()
    regimes = list(cells)
    labels = ordered_labels({label for row in cells.values() for label in row})
    grid = [[100 * cells[name][label]["mean"] if label in cells[name] else math.nan for name in regimes]
            for label in labels]
    fig, ax = plt.subplots(figsize=(1.6 * len(regimes) + 3, 0.42 * len(labels) + 1.8))
    image = ax.imshow(grid, cmap="viridis", aspect="auto")
    brightest = max(v for row in grid for v in row if not math.isnan(v))
    for i, label in enumerate(labels):
        for j, name in enumerate(regimes):
            c = cells[name].get(label)
            if c is None:  # a row added to some regimes only: say so, not a blank that reads as zero
                ax.text(j, i, "not run", ha="center", va="center", fontsize=7, color="grey")
                continue
            mark = " ★" if c.get("best") else " ○" if c.get("tied") else ""
            mark += " †" if c.get("above_control") is False else ""
            value = grid[i][j]
            ax.text(j, i, f"{number(value, '.0f')}{mark}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 * brightest else "white")
    ax.set_xticks(range(len(regimes)), regimes, rotation=20, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_title(f"Which method wins where: in-dist avg@{k} (%), mean over seeds\n"
                 "★ best, ○ not separated from the best (paired 95% CI), † gain not above the random-reward control",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
