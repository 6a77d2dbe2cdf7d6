"""`sftrl report RUN_DIR...`: training-dynamics plots and a table from the metrics of one or many runs.

    sftrl report runs/sandbox-sasr-seed0 runs/sandbox-srft-seed0 -o reports/sasr-vs-srft

Runs are grouped by method (or by --label): a group of several seeds is drawn as its mean with a
band from its lowest to its highest seed. Each panel is a PNG; `report.md` shows them with the table
and `report.html` is the same page with the images embedded (one file to send around).
"""

from __future__ import annotations

import base64
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import runlog
from .formatting import number

# (file name, title, y label, metric keys); a panel is drawn when some run logged one of its keys.
PANELS = [
    ("sampled_accuracy", "Eval accuracy (sampled, avg@k: the headline)", "accuracy", ["eval/sampled_accuracy"]),
    ("accuracy", "Eval accuracy (greedy)", "accuracy", ["eval/accuracy"]),
    ("kl_from_base", "Forward KL from the base model on held-out demonstrations (RL's Razor: forgetting)",
     "nats per token", ["kl_from_base"]),
    ("reward", "Training reward of rollouts", "mean reward", ["reward"]),
    ("length", "Response length of rollouts", "tokens", ["completions/mean_length"]),
    ("entropy", "Policy entropy on rollouts", "nats per token", ["entropy"]),
    ("sft_entropy", "Entropy on demonstrations", "nats per token", ["sft/entropy"]),
    ("grad_norm", "Gradient norm (before clipping)", "L2 norm", ["grad_norm"]),
    ("kl_ref", "KL to the reference model", "nats per token", ["kl_ref"]),
    ("sasr_p_sft", "SASR: probability of an SFT step (p_t)", "p_t", ["sasr/p_sft"]),
    ("srft_weights", "SRFT: weights of the SFT and RL terms", "weight", ["srft/w_sft", "srft/w_rl"]),
]
# Sparse points (logged at evaluations): drawn as they are, with markers.
SMOOTH_EXCEPT = {"eval/accuracy", "eval/sampled_accuracy", "kl_from_base"}
STEP_COLORS = {"sft": "#1f77b4", "grpo": "#ff7f0e", "sft+grpo": "#2ca02c"}


@dataclass
class Run:
    """One run directory's config and metric records."""

    path: Path
    config: dict[str, Any]
    records: list[dict[str, Any]]
    summary: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of one metric, skipping records without it and non-finite values."""
        points = [(r["step"], float(r[key])) for r in self.records
                  if isinstance(r.get(key), (int, float)) and math.isfinite(float(r[key]))]
        return [p[0] for p in points], [p[1] for p in points]


def load_run(path: str | Path, label: str | None = None) -> Run:
    """Read `config.yaml`, `metrics.jsonl` and (if the run finished) `summary.json` from a run directory."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.exists():
        raise FileNotFoundError(f"{path} is not a run directory: it has no metrics.jsonl")
    records = runlog.read(metrics)  # a last line cut off by a crash is left out
    config = yaml.safe_load((path / "config.yaml").read_text()) if (path / "config.yaml").exists() else {}
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").exists() else {}
    return Run(path, config or {}, records, summary, label or config.get("method") or path.name)


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average over `window` points (the first points average what exists so far)."""
    out, total = [], 0.0
    for i, value in enumerate(values):
        total += value - (values[i - window] if i >= window else 0.0)
        out.append(total / min(i + 1, window))
    return out


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = {}
    for run in runs:
        groups.setdefault(run.label, []).append(run)
    return groups


# 15 colours, one per series up to the 15 a full comparison draws (13 methods and more): tab10's ten and
# five darker ones that none of them resembles. The line style cycles too, so that colours of one family
# (tab10's blue and the navy, its green and the olive) are told apart by their dashes as well, on a
# grey-scale print, and so that (colour, style) pairs stay distinct well past 15 series (60).
SERIES_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
                 "#17becf", "#393b79", "#637939", "#e7ba52", "#7b4173", "#252525"]
SERIES_LINESTYLES = ["-", "--", ":", "-."]


def series_style(i: int) -> tuple[str, str]:
    """(colour, line style) of the i-th series of a panel."""
    return SERIES_COLORS[i % len(SERIES_COLORS)], SERIES_LINESTYLES[i % len(SERIES_LINESTYLES)]


def legend_outside(ax, entries: int) -> None:
    """The legend to the right of the axes, never over the data (saved with bbox_inches="tight")."""
    if entries:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  ncol=1 if entries <= 16 else 2, handlelength=3.0)


def panel_figure(groups: dict[str, list[Run]], keys: list[str], title: str, ylabel: str, window: int = 5):
    """(figure, axes) of one panel: every group's mean curve of each key, with a min-max band over its
    runs; None when no run logged any of the keys."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = 0
    for i, (label, runs) in enumerate(groups.items()):
        color, group_style = series_style(i)
        # One key: the group's own style; several (SRFT's two weights): the key's style, the group's colour.
        styles = [group_style] if len(keys) == 1 else SERIES_LINESTYLES
        for style, key in zip(styles, keys):
            curves = [run.series(key) for run in runs]
            curves = [c for c in curves if c[0]]
            if not curves:
                continue
            # Each run smoothed on its own steps; a step's mean and band use the runs that logged it.
            by_step: dict[int, list[float]] = {}
            for c_steps, c_values in curves:
                values = c_values if key in SMOOTH_EXCEPT else smooth(c_values, window)
                for step, value in zip(c_steps, values):
                    by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            cols = [by_step[s] for s in steps]
            mean = [sum(col) / len(col) for col in cols]
            name = label if len(keys) == 1 else f"{label}: {key.split('/')[-1]}"
            if len(runs) > 1:
                name += f" (n={len(curves)})"
            marker = "o" if key in SMOOTH_EXCEPT else None
            ax.plot(steps, mean, linestyle=style, color=color, label=name, marker=marker, markersize=4)
            if len(curves) > 1:
                ax.fill_between(steps, [min(col) for col in cols], [max(col) for col in cols],
                                color=color, alpha=0.15, linewidth=0)
            drawn += 1
    if not drawn:
        plt.close(fig)
        return None
    smoothing = "" if all(k in SMOOTH_EXCEPT for k in keys) or window <= 1 else f" ({window}-step mean)"
    ax.set(title=title + smoothing, xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    legend_outside(ax, drawn)
    return fig, ax


def save_figure(fig, path: Path) -> None:
    """Write a PNG with everything outside the axes (the legend) inside the picture, and close it."""
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_panel(groups: dict[str, list[Run]], keys: list[str], title: str, ylabel: str, path: Path,
               window: int = 5) -> bool:
    """One PNG of `panel_figure`; False (and no file) if no run logged the keys."""
    drawn = panel_figure(groups, keys, title, ylabel, window)
    if drawn is not None:
        save_figure(drawn[0], path)
    return drawn is not None


def plot_step_types(runs: list[Run], path: Path) -> bool:
    """Which kind of step (SFT, GRPO, both) every run took at every step: one row of ticks per run."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    rows = [(run, [(r["step"], r["step_type"]) for r in run.records if r.get("step_type")]) for run in runs]
    rows = [(run, types) for run, types in rows if types]
    if not rows or all(len({t for _, t in types}) < 2 for _, types in rows):
        return False  # every run took one kind of step: nothing to show
    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.32 * len(rows)))
    for y, (run, types) in enumerate(rows):
        for kind, color in STEP_COLORS.items():
            steps = [s for s, t in types if t == kind]
            ax.broken_barh([(s - 1, 1) for s in steps], (y - 0.4, 0.8), facecolors=color)
    labels = [f"{run.label} s{run.config.get('seed', '?')}" for run, _ in rows]
    ax.set_yticks(range(len(rows)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set(title="Step type per optimizer step", xlabel="optimizer step")
    used = {t for _, types in rows for _, t in types}
    ax.legend(handles=[Patch(color=c, label=k) for k, c in STEP_COLORS.items() if k in used],
              fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)  # beside the rows
    save_figure(fig, path)
    return True


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def run_table(runs: list[Run], tail: int = 10) -> list[dict[str, Any]]:
    """One row per run: accuracy before/after, training time, and means over its last `tail` steps."""
    rows = []
    for run in runs:
        _, accuracy = run.series("eval/accuracy")
        _, kl_from_base = run.series("kl_from_base")
        steps = [r["step"] for r in run.records if r.get("step_type")]
        types = [r["step_type"] for r in run.records if r.get("step_type")]
        row = {"run": run.path.name, "label": run.label, "seed": run.config.get("seed"),
               "steps": max(steps) if steps else 0,
               "acc_before": run.summary.get("eval_before", {}).get("eval/accuracy", accuracy[0] if accuracy else None),
               "acc_after": run.summary.get("eval_after", {}).get("eval/accuracy",
                                                                 accuracy[-1] if len(accuracy) > 1 else None),
               "kl_from_base_after": run.summary.get("eval_after", {}).get(
                   "kl_from_base", kl_from_base[-1] if len(kl_from_base) > 1 else None),
               "train_seconds": run.summary.get("train_seconds"),
               "sft_steps": types.count("sft") + types.count("sft+grpo"),
               "grpo_steps": types.count("grpo") + types.count("sft+grpo")}
        for key, name in [("reward", "reward_last"), ("entropy", "entropy_last"),
                          ("completions/mean_length", "length_last")]:
            row[name] = _mean(run.series(key)[1][-tail:])
        first_entropy = run.series("entropy")[1][:tail]
        row["entropy_first"] = _mean(first_entropy)
        rows.append(row)
    return rows


# (row key, column title, format spec of formatting.number)
TABLE_COLUMNS = [("label", "method", ""), ("seed", "seed", ""), ("steps", "steps", ""),
                 ("sft_steps", "SFT steps", ""), ("grpo_steps", "GRPO steps", ""),
                 ("acc_before", "acc. before", ".1%"), ("acc_after", "acc. after", ".1%"),
                 ("kl_from_base_after", "KL from base (after)", ".4f"),
                 ("reward_last", "reward (last 10)", ".3f"), ("entropy_first", "entropy (first 10)", ".3f"),
                 ("entropy_last", "entropy (last 10)", ".3f"), ("length_last", "length (last 10)", ".1f"),
                 ("train_seconds", "train s", ".0f")]


def _cell(value: Any, spec: str) -> str:
    return "–" if value is None else number(value, spec)


def markdown_table(rows: list[dict[str, Any]], columns=TABLE_COLUMNS) -> str:
    lines = ["| " + " | ".join(title for _, title, _ in columns) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(columns))) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_cell(row.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines)


PAGE_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
              "table{border-collapse:collapse;font-size:14px}td,th{border:1px solid #ccc;padding:3px 8px;"
              "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:49%}")


def write_page(out_dir: Path, title: str, intro: str, sections: list[tuple[str, str]], images: list[Path]) -> None:
    """`report.md` (images linked) and `report.html` (images embedded) with the same content;
    `sections` are (heading, markdown table) pairs."""
    md = [f"# {title}", "", intro, ""]
    for heading, table in sections:
        md += [f"## {heading}", "", table, ""]
    md += ["## Plots", ""] + [f"![{p.stem}]({p.name})" for p in images]
    (out_dir / "report.md").write_text("\n".join(md) + "\n")

    def table_html(table: str) -> str:
        lines = [line.strip("|").split("|") for line in table.splitlines()]
        head = "".join(f"<th>{html.escape(c.strip())}</th>" for c in lines[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c.strip())}</td>" for c in line) + "</tr>"
                       for line in lines[2:])
        return f"<table><tr>{head}</tr>{body}</table>"

    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{PAGE_STYLE}</style>",
             f"<h1>{html.escape(title)}</h1><p>{html.escape(intro)}</p>"]
    for heading, table in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{table_html(table)}")
    parts.append("<h2>Plots</h2>")
    for image in images:
        data = base64.b64encode(image.read_bytes()).decode()
        parts.append(f"<img alt='{html.escape(image.stem)}' src='data:image/png;base64,{data}'>")
    (out_dir / "report.html").write_text("\n".join(parts) + "\n")


def write_report(runs: list[Run], out_dir: str | Path, window: int = 5, title: str = "sftrl training report",
                 extra_sections: list[tuple[str, str]] | None = None,
                 extra_images: list[Path] | None = None) -> list[Path]:
    """Every panel with data as `<name>.png`, the step-type chart, and `report.md` / `report.html`;
    returns the PNG paths."""
    import matplotlib

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    groups = group_runs(runs)
    images = list(extra_images or [])
    for name, panel_title, ylabel, keys in PANELS:
        path = out_dir / f"{name}.png"
        if plot_panel(groups, keys, panel_title, ylabel, path, window):
            images.append(path)
    if plot_step_types(runs, out_dir / "step_types.png"):
        images.append(out_dir / "step_types.png")
    intro = (f"{len(runs)} run(s): " + ", ".join(str(run.path) for run in runs)
             + f". Curves are {window}-step trailing means; a band spans the seeds of a method.")
    sections = list(extra_sections or []) + [("Runs", markdown_table(run_table(runs)))]
    write_page(out_dir, title, intro, sections, images)
    return images
