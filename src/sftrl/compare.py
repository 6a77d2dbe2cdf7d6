"""`sftrl compare`: methods x seeds on the sandbox under one budget, each evaluated in and out of
distribution, summarised as a table (mean ± std over seeds) and plots.

    sftrl compare                                  # every method, seeds 0 1 2, the sandbox recipes' budget
    sftrl compare --methods sft grpo sasr --seeds 0 1 --max-steps 50 --batch-size 16 -o runs/compare-small

Equal budget: every run takes the same optimizer steps with the same prompts per step and rollouts
per prompt; phase lengths scale with it (SFT→GRPO and GRPO→SFT switch at half the steps, SASR warms
up for a fifth). Each run lives in OUT/<method>-seed<seed>/; a finished run with the same settings
is reused, an interrupted one resumes from its newest checkpoint, and evaluations resume from their
samples files. Outputs: results.json, comparison.md, final_accuracy.png and the training-dynamics report
(report.md / report.html and its plots).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

import yaml

from .config import Config, ConfigError, load_config
from .methods import METHODS

METHOD_ORDER = ["sft", "grpo", "sft-then-grpo", "grpo-then-sft", "static", "luffy", "srft", "sasr"]
SPLITS = {"in-dist": "sandbox:test", "ood": "sandbox:ood"}
IGNORED_WHEN_REUSING = {"resume", "progress"}  # settings that do not change what a run computes


def budget_overrides(max_steps: int, batch_size: int, num_generations: int) -> dict[str, Any]:
    """The config values every run shares; phase lengths are fractions of the budget."""
    return {"model": "sandbox", "train_data": "sandbox", "max_steps": max_steps, "batch_size": batch_size,
            "num_generations": num_generations, "sft_steps": max_steps // 2, "grpo_steps": max_steps // 2,
            "sasr_warmup_steps": max(1, max_steps // 5)}


def run_config(method: str, seed: int, out_dir: Path, shared: dict[str, Any], checkpoint_every: int) -> Config:
    """One run's config: the method's defaults and preset, then the shared budget, then seed and paths."""
    return load_config(None, {"method": method, **shared, "seed": seed, "output_dir": str(out_dir / f"{method}-seed{seed}"),
                              "save_every": checkpoint_every, "save_total_limit": 1000})


def _same_settings(run_dir: Path, config: Config) -> bool:
    old = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    new = config.to_dict()
    return all(old.get(key) == value for key, value in new.items() if key not in IGNORED_WHEN_REUSING)


def train_or_reuse(config: Config) -> tuple[Path, str]:
    """Train the run unless it already finished with these settings; returns (run dir, what happened)."""
    from .trainer import train

    run_dir = config.run_dir
    if (run_dir / "summary.json").exists():
        if not _same_settings(run_dir, config):
            raise FileExistsError(f"{run_dir} holds a finished run with other settings; "
                                  f"choose another --output-dir or delete it")
        return run_dir, "reused"
    has_checkpoint = any((run_dir / "checkpoints").glob("step-*"))
    if has_checkpoint and _same_settings(run_dir, config):
        config.resume = True
        train(config)
        return run_dir, "resumed"
    if run_dir.exists():  # started but nothing to resume from (or other settings and unfinished): start over
        shutil.rmtree(run_dir)
    train(config)
    return run_dir, "trained"


def evaluate_run(model_dir: Path, eval_dir: Path, k: int, temperature: float, limit: int, seed: int,
                 max_new_tokens: int) -> dict[str, dict]:
    """avg@k and pass@k of one model on each split; samples go to eval_dir/<split>.jsonl (resumable)."""
    from .data import load_examples
    from .evaluate import build_questions, run_benchmark, summarize
    from .models import load_model, load_tokenizer

    tokenizer, model = load_tokenizer(str(model_dir)), load_model(str(model_dir))
    results = {}
    for name, source in SPLITS.items():
        questions = build_questions(load_examples(source, limit=limit), source, k=k)
        settings = {"model": str(model_dir), "k": k, "shuffle_choices": False}
        records = run_benchmark(model, tokenizer, questions, eval_dir / f"{name}.jsonl", settings,
                                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        results[name] = summarize(records)["overall"]
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def comparison_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: one row per method (base model first), mean ± std over seeds, in percent."""
    names = ["base"] + [m for m in METHOD_ORDER if any(r["method"] == m for r in results)]
    names += sorted({r["method"] for r in results} - set(names))
    pass_key = f"pass@{k}"
    lines = [f"| method | seeds | in-dist avg@{k} | ood avg@{k} | in-dist {pass_key} | ood {pass_key} | "
             f"greedy in-dist | train s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        rows = [r for r in results if r["method"] == name]
        if not rows:
            continue

        def cell(get, scale=100.0, digits=1):
            values = [get(r) for r in rows if get(r) is not None]
            if not values:
                return "–"
            mean, std = mean_std([v * scale for v in values])
            return f"{mean:.{digits}f} ± {std:.{digits}f}" if len(values) > 1 else f"{mean:.{digits}f}"

        lines.append(f"| {name} | {len(rows)} | {cell(lambda r: r['in-dist']['avg@k'])} | "
                     f"{cell(lambda r: r['ood']['avg@k'])} | {cell(lambda r: r['in-dist'].get(pass_key))} | "
                     f"{cell(lambda r: r['ood'].get(pass_key))} | {cell(lambda r: r.get('greedy_after'))} | "
                     f"{cell(lambda r: r.get('train_seconds'), scale=1.0, digits=0)} |")
    return "\n".join(lines)


def plot_accuracy(results: list[dict[str, Any]], k: int, path: Path) -> None:
    """Grouped bars: in-distribution and OOD avg@k per method, mean over seeds, error bars ±1 std, seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["base"] + [m for m in METHOD_ORDER if any(r["method"] == m for r in results)]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 1.5), 4))
    for offset, (split, color) in zip((-0.2, 0.2), (("in-dist", "#1f77b4"), ("ood", "#ff7f0e"))):
        for i, name in enumerate(names):
            values = [100 * r[split]["avg@k"] for r in results if r["method"] == name]
            if not values:
                continue
            mean, std = mean_std(values)
            ax.bar(i + offset, mean, width=0.4, color=color, yerr=std if len(values) > 1 else None, capsize=3,
                   label=f"{split} ({SPLITS[split]})" if i == 0 else None)
            ax.scatter([i + offset] * len(values), values, color="black", s=6, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel=f"avg@{k} (%)", title=f"Sandbox accuracy after equal budgets (mean ± std over seeds)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare(methods: list[str], seeds: list[int], out_dir: str | Path, max_steps: int = 100, batch_size: int = 32,
            num_generations: int = 8, k: int = 4, temperature: float = 0.6, eval_limit: int = 200,
            checkpoint_every: int = 0, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Train (or reuse) every method x seed, evaluate each, and write the table, plots and report."""
    from .models import resolve_model_path
    from .report import load_run, write_report

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHOD_ORDER)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shared = {**budget_overrides(max_steps, batch_size, num_generations), **(overrides or {})}
    configs = [run_config(m, s, out_dir, shared, checkpoint_every) for s in seeds for m in methods]  # fail early
    max_new_tokens = configs[0].max_completion_length if configs else 64
    base = Path(resolve_model_path(shared["model"]))
    results, runs = [], []
    start = time.perf_counter()
    for seed in seeds:  # the base model's score varies with the sampling seed only
        evals = evaluate_run(base, out_dir / f"base-seed{seed}", k, temperature, eval_limit, seed, max_new_tokens)
        results.append({"method": "base", "seed": seed, **evals})
    for number, config in enumerate(configs, 1):
        print(f"[{number}/{len(configs)}] {config.method} seed {config.seed} -> {config.run_dir}", flush=True)
        run_dir, what = train_or_reuse(config)
        if what == "reused":
            print(f"    reused the finished run in {run_dir}", flush=True)
        evals = evaluate_run(run_dir / "model", run_dir / "eval", k, temperature, eval_limit, config.seed,
                             max_new_tokens)
        run = load_run(run_dir)
        results.append({"method": config.method, "seed": config.seed, "run_dir": str(run_dir), **evals,
                        "greedy_after": run.summary.get("eval_after", {}).get("eval/accuracy"),
                        "train_seconds": run.summary.get("train_seconds")})
        runs.append(run)
        print(f"    in-dist avg@{k} {evals['in-dist']['avg@k']:.1%}, ood avg@{k} {evals['ood']['avg@k']:.1%}",
              flush=True)
    table = comparison_table(results, k)
    budget = (f"{max_steps} steps x {batch_size} prompts x {num_generations} rollouts (or demonstrations), "
              f"evaluated on {eval_limit} prompts per split with {k} samples at temperature {temperature}")
    (out_dir / "results.json").write_text(json.dumps({"budget": shared, "k": k, "temperature": temperature,
                                                      "eval_limit": eval_limit, "results": results}, indent=2))
    (out_dir / "comparison.md").write_text(f"Budget: {budget}. Accuracy in percent, mean ± std over seeds "
                                           f"{', '.join(map(str, seeds))}.\n\n{table}\n")
    plot_accuracy(results, k, out_dir / "final_accuracy.png")
    if runs:
        write_report(runs, out_dir, title="sftrl compare: sandbox", extra_sections=[("Comparison", table)],
                     extra_images=[out_dir / "final_accuracy.png"])
    print(table)
    print(f"wrote {out_dir / 'comparison.md'}, {out_dir / 'final_accuracy.png'}, {out_dir / 'report.html'} "
          f"({time.perf_counter() - start:.0f} s)")
    return results
