"""`sftrl analyze tokens | map`: the SRFT paper's two pictures of how training moves a model.

    # which response tokens changed probability, and by how much (SFT: broad shifts; RL: selective ones)
    sftrl analyze tokens --before sandbox --after runs/compare/sft-seed0/model runs/compare/grpo-seed0/model
    # every checkpoint of some runs as a point placed by its distances to three reference models
    sftrl analyze map --references sandbox runs/compare/sft-seed0/model runs/compare/grpo-seed0/model \\
        --runs runs/compare/sasr-seed0 runs/compare/srft-seed0

Both score a fixed probe set of (prompt, response) pairs (default: the sandbox test prompts with
their worked solutions) by the probability each model gives every response token, p(y_t | x, y_<t).
"""

from __future__ import annotations

import html
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError
from .data import load_examples, render_prompt
from .errors import DataError
from .batching import pack, target_logprobs
from .formatting import number
from .report import legend_outside, save_figure, series_style


def probe_pairs(source: str, limit: int, split: str = "test") -> list[tuple[Any, str]]:
    """(prompt, response) pairs from a dataset's demonstrations: the texts every model is scored on."""
    examples = [e for e in load_examples(source, split, limit=None) if e.demonstration][:limit]
    if not examples:
        raise DataError("has no rows with a demonstration to use as probe responses", source=source)
    return [(e.prompt, e.demonstration) for e in examples]


def load_scorer(name: str, trust_remote_code: bool = False):
    """(model, tokenizer) for a hub id, directory (a LoRA adapter's too) or 'sandbox', in eval mode."""
    from .models import load_model, load_tokenizer, resolve_model_path

    path = resolve_model_path(name)
    model = load_model(path, trust_remote_code=trust_remote_code)
    model.eval()
    return model, load_tokenizer(path, trust_remote_code)


@torch.no_grad()
def response_token_scores(model, tokenizer, pairs: list[tuple[Any, str]], batch_size: int = 64,
                          chat_template_kwargs: dict | None = None
                          ) -> tuple[list[list[tuple[str, float]]], list[list[float]]]:
    """For each pair, every response token (its text) with the probability the model gives it, and the
    entropy (nats) of the model's whole next-token distribution at that position."""
    eos = tokenizer.eos_token_id
    prompts = [tokenizer(render_prompt(tokenizer, p, chat_template_kwargs), add_special_tokens=False)["input_ids"]
               for p, _ in pairs]
    responses = [tokenizer(r, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
                 for _, r in pairs]
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    probs, entropies = [], []
    for start in range(0, len(pairs), batch_size):
        batch = pack(prompts[start:start + batch_size], responses[start:start + batch_size], pad, device)
        with torch.no_grad():
            logps, entropy = target_logprobs(model, batch, with_entropy=True)  # (B, T) each
        for row, ids in enumerate(responses[start:start + batch_size]):
            texts = [tokenizer.decode([t]) for t in ids]
            probs.append([(text, math.exp(float(lp))) for text, lp in zip(texts, logps[row, :len(ids)].tolist())])
            entropies.append([float(h) for h in entropy[row, :len(ids)].tolist()])
    return probs, entropies


def response_token_probs(model, tokenizer, pairs: list[tuple[Any, str]], batch_size: int = 64,
                         chat_template_kwargs: dict | None = None) -> list[list[tuple[str, float]]]:
    """For each pair, every response token (its text) and the probability the model gives it."""
    return response_token_scores(model, tokenizer, pairs, batch_size, chat_template_kwargs)[0]


# Bins of the base model's entropy at a token (nats): confident, in between, uncertain. The SRFT paper
# (Sec. 3) says RL moves mainly the high-entropy positions and SFT moves every position.
ENTROPY_EDGES = (0.1, 1.0)


def shift_by_entropy(before: list[list[tuple[str, float]]], after: list[list[tuple[str, float]]],
                     entropy: list[list[float]], edges: tuple[float, ...] = ENTROPY_EDGES) -> list[dict[str, Any]]:
    """Per bin of the before-model's entropy at each token: its tokens, their share, the mean |Δp| and
    the share moved more than 0.2 (empty bins are listed with 0 tokens)."""
    bounds = [0.0, *edges, math.inf]
    bins = [[] for _ in range(len(bounds) - 1)]
    for row_before, row_after, row_h in zip(before, after, entropy):
        for (_, p0), (_, p1), h in zip(row_before, row_after, row_h):
            index = next(i for i in range(len(bins)) if h < bounds[i + 1] or i == len(bins) - 1)
            bins[index].append(abs(p1 - p0))
    total = sum(len(b) for b in bins)
    return [{"entropy": f"{number(lo, 'g')}-{number(hi, 'g')}" if hi != math.inf else f">={number(lo, 'g')}",
             "tokens": len(b), "share": len(b) / total if total else 0.0,
             "mean_abs_shift": sum(b) / len(b) if b else 0.0,
             "share_moved_0.2": sum(m > 0.2 for m in b) / len(b) if b else 0.0}
            for lo, hi, b in zip(bounds[:-1], bounds[1:], bins)]


def probability_shift_stats(before: list[list[tuple[str, float]]], after: list[list[tuple[str, float]]],
                            top: int = 15) -> dict[str, Any]:
    """How far token probabilities moved from `before` to `after` on the same texts: the spread of
    Δp = p_after - p_before, the share of tokens that moved more than 0.05 / 0.2, and the tokens
    (by text) that rose and fell most on average."""
    deltas, by_token = [], defaultdict(list)
    for row_before, row_after in zip(before, after):
        for (text, p0), (_, p1) in zip(row_before, row_after):
            deltas.append(p1 - p0)
            by_token[text].append(p1 - p0)
    n = len(deltas)
    magnitudes = sorted(abs(d) for d in deltas)
    mean_by_token = sorted(((sum(v) / len(v), len(v), t) for t, v in by_token.items()), reverse=True)
    return {
        "tokens": n,
        "mean_abs_shift": sum(magnitudes) / n,
        "median_abs_shift": magnitudes[n // 2],
        "share_moved_0.05": sum(m > 0.05 for m in magnitudes) / n,
        "share_moved_0.2": sum(m > 0.2 for m in magnitudes) / n,
        "share_up": sum(d > 0.05 for d in deltas) / n,
        "share_down": sum(d < -0.05 for d in deltas) / n,
        "mean_p_before": sum(p for row in before for _, p in row) / n,
        "mean_p_after": sum(p for row in after for _, p in row) / n,
        "rose_most": [{"token": t, "mean_shift": m, "count": c} for m, c, t in mean_by_token[:top]],
        "fell_most": [{"token": t, "mean_shift": m, "count": c} for m, c, t in reversed(mean_by_token[-top:])],
    }


def _token_html(before, after, rows: int = 12) -> str:
    """Responses with each token's background coloured by its shift: green rose, red fell."""
    lines = []
    for row_before, row_after in list(zip(before, after))[:rows]:
        spans = []
        for (text, p0), (_, p1) in zip(row_before, row_after):
            d = p1 - p0
            alpha = number(min(1, abs(d)), ".2f")
            color = f"rgba(0,160,0,{alpha})" if d > 0 else f"rgba(220,0,0,{alpha})"
            shown = html.escape(text).replace("\n", "↵<br>") or "∅"
            spans.append(f"<span title='{number(p0, '.3f')} → {number(p1, '.3f')}' style='background:{color}'>"
                         f"{shown}</span>")
        lines.append("<p style='font-family:monospace'>" + "".join(spans) + "</p>")
    return "\n".join(lines)


def analyze_tokens(before: str, afters: list[str], labels: list[str], pairs, out_dir: str | Path,
                   trust_remote_code: bool = False, chat_template_kwargs: dict | None = None) -> dict[str, Any]:
    """Score the probe responses under `before` and every `afters` model; write tokens.json,
    tokens.png (histogram of shifts; p_before vs p_after) and tokens.html (coloured responses)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    def scores(name: str):
        model, tokenizer = load_scorer(name, trust_remote_code)
        return response_token_scores(model, tokenizer, pairs, chat_template_kwargs=chat_template_kwargs)

    base, base_entropy = scores(before)
    results, page = {}, [f"<!doctype html><meta charset='utf-8'><title>token shifts</title><h1>Token probability "
                         f"shifts from {html.escape(before)}</h1><p>Hover a token for p before → after.</p>"]
    fig, (hist, scatter) = plt.subplots(1, 2, figsize=(11, 4))
    for i, (after, label) in enumerate(zip(afters, labels)):
        color, style = series_style(i)
        probs = scores(after)[0]
        stats = probability_shift_stats(base, probs)
        by_entropy = shift_by_entropy(base, probs, base_entropy)
        results[label] = {"model": after, **stats, "by_base_entropy": by_entropy}
        deltas = [p1 - p0 for r0, r1 in zip(base, probs) for (_, p0), (_, p1) in zip(r0, r1)]
        hist.hist(deltas, bins=50, range=(-1, 1), histtype="step", linewidth=1.5, color=color, linestyle=style,
                  label=f"{label}: mean |Δp| {number(stats['mean_abs_shift'], '.3f')}, "
                        f"{number(stats['share_moved_0.2'], '.0%')} > 0.2")
        p0 = [p for r in base for _, p in r]
        p1 = [p for r in probs for _, p in r]
        scatter.scatter(p0, p1, s=3, alpha=0.35, color=color, label=label)
        page.append(f"<h2>{html.escape(label)}</h2><p>{stats['tokens']} tokens; mean |Δp| "
                    f"{number(stats['mean_abs_shift'], '.3f')}; {number(stats['share_up'], '.1%')} rose and "
                    f"{number(stats['share_down'], '.1%')} fell by more than 0.05. By the base model's entropy "
                    "at the token: " + "; ".join(
                        f"{b['entropy']} nats ({b['tokens']} tokens): mean |Δp| {number(b['mean_abs_shift'], '.3f')}"
                        for b in by_entropy) + ".</p>" + _token_html(base, probs))
    hist.set(yscale="log", xlabel="Δp = p_after − p_before (per response token)", ylabel="tokens",
             title=f"Token probability shifts from {Path(before).name or before}")
    scatter.plot([0, 1], [0, 1], color="gray", linewidth=0.8)
    scatter.set(xlabel="p before", ylabel="p after", title="Each response token, before vs after")
    # One legend, below the histogram (its entries carry the statistics), over no data; the scatter's
    # colours are the histogram's.
    hist.legend(fontsize=7, loc="upper left", bbox_to_anchor=(0.0, -0.15), borderaxespad=0.0,
                ncol=1 if len(afters) <= 8 else 2)
    save_figure(fig, out_dir / "tokens.png")
    (out_dir / "tokens.json").write_text(json.dumps({"before": before, "probes": len(pairs), "models": results},
                                                    indent=2))
    (out_dir / "tokens.html").write_text("\n".join(page) + "\n")
    return results


# ---------------------------------------------------------------------------------------------------
# the map


def model_distance(a: list[list[tuple[str, float]]], b: list[list[tuple[str, float]]]) -> float:
    """Mean absolute difference of the probabilities two models give the same probe tokens (0 to 1)."""
    diffs = [abs(p - q) for row_a, row_b in zip(a, b) for (_, p), (_, q) in zip(row_a, row_b)]
    return sum(diffs) / len(diffs)


def reference_triangle(d12: float, d13: float, d23: float) -> list[tuple[float, float]]:
    """Vertices for three references with these pairwise distances: R1 at the origin, R2 on the x axis,
    R3 above it (law of cosines; clamped when the distances break the triangle inequality)."""
    if d12 <= 0:
        raise ConfigError("the first two reference models score the probes identically; choose distinct references")
    x3 = (d13 ** 2 - d23 ** 2 + d12 ** 2) / (2 * d12)
    y3 = math.sqrt(max(d13 ** 2 - x3 ** 2, 0.0))
    if y3 == 0:
        raise ConfigError("the three reference models lie on a line in probability space; choose other references")
    return [(0.0, 0.0), (d12, 0.0), (x3, y3)]


def place(vertices: list[tuple[float, float]], distances: list[float]) -> tuple[float, float]:
    """The point whose distances to the three vertices best match `distances`: subtracting the first
    circle's equation from the other two leaves two linear equations in (x, y), solved exactly."""
    (x1, y1), (x2, y2), (x3, y3) = vertices
    r1, r2, r3 = distances
    a11, a12, b1 = 2 * (x2 - x1), 2 * (y2 - y1), r1 ** 2 - r2 ** 2 + x2 ** 2 - x1 ** 2 + y2 ** 2 - y1 ** 2
    a21, a22, b2 = 2 * (x3 - x1), 2 * (y3 - y1), r1 ** 2 - r3 ** 2 + x3 ** 2 - x1 ** 2 + y3 ** 2 - y1 ** 2
    det = a11 * a22 - a12 * a21
    return ((b1 * a22 - b2 * a12) / det, (a11 * b2 - a21 * b1) / det)


def run_models(run_dir: Path) -> list[tuple[int, str]]:
    """(step, model path) of a run's start model, every kept checkpoint and its final model."""
    import yaml

    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    models = [(0, config["model"])] if config.get("model") else []
    for checkpoint in sorted((run_dir / "checkpoints").glob("step-*")):
        models.append((int(checkpoint.name.split("-")[1]), str(checkpoint)))
    if (run_dir / "model").exists():
        models.append((config.get("max_steps", models[-1][0] + 1 if models else 1), str(run_dir / "model")))
    if len(models) < 2:
        raise FileNotFoundError(f"{run_dir}: no checkpoints or final model to place on the map")
    return models


def analyze_map(references: list[str], reference_labels: list[str], run_dirs: list[str], run_labels: list[str],
                pairs, out_dir: str | Path, trust_remote_code: bool = False,
                chat_template_kwargs: dict | None = None) -> dict[str, Any]:
    """Place every model of every run relative to three references; write map.json and map.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(references) != 3:
        raise ConfigError(f"the map needs exactly three reference models, got {len(references)}")
    models_by_run = [run_models(Path(run_dir)) for run_dir in run_dirs]  # a bad run dir fails before any scoring
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, list] = {}

    def scores(name: str):
        if name not in cache:
            model, tokenizer = load_scorer(name, trust_remote_code)
            cache[name] = response_token_probs(model, tokenizer, pairs, chat_template_kwargs=chat_template_kwargs)
        return cache[name]

    refs = [scores(r) for r in references]
    d12, d13, d23 = model_distance(refs[0], refs[1]), model_distance(refs[0], refs[2]), model_distance(refs[1], refs[2])
    vertices = reference_triangle(d12, d13, d23)
    result: dict[str, Any] = {"distance": "mean |p_a - p_b| over probe response tokens", "probes": len(pairs),
                              "references": [{"label": l, "model": m, "xy": v}
                                             for l, m, v in zip(reference_labels, references, vertices)],
                              "runs": []}
    fig, ax = plt.subplots(figsize=(7, 6))
    tri = vertices + [vertices[0]]
    ax.plot([v[0] for v in tri], [v[1] for v in tri], color="gray", linewidth=0.8, linestyle="--")
    for (x, y), label in zip(vertices, reference_labels):
        ax.scatter([x], [y], marker="*", s=220, color="black", zorder=4)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=10, weight="bold")
    for i, (run_dir, label, models) in enumerate(zip(run_dirs, run_labels, models_by_run)):
        color, style = series_style(i)
        points = []
        for step, path in models:
            probs = scores(path)
            distances = [model_distance(probs, ref) for ref in refs]
            xy = place(vertices, distances)
            points.append({"step": step, "model": path, "distances": distances, "xy": xy})
        result["runs"].append({"label": label, "run": run_dir, "points": points})
        xs, ys = [p["xy"][0] for p in points], [p["xy"][1] for p in points]
        ax.plot(xs, ys, linestyle=style, marker="o", color=color, markersize=4, label=label)
        ax.annotate("", xy=(xs[-1], ys[-1]), xytext=(xs[-2], ys[-2]),
                    arrowprops={"arrowstyle": "->", "color": color, "lw": 1.5})
        ax.annotate(f"{points[-1]['step']}", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, -10),
                    fontsize=7, color=color)
    ax.set(title="Models in probability space (distance: mean |Δp| on probe tokens)", xlabel="x", ylabel="y")
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    legend_outside(ax, len(run_dirs))
    save_figure(fig, out_dir / "map.png")
    (out_dir / "map.json").write_text(json.dumps(result, indent=2))
    return result
