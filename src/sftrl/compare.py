"""`sftrl compare`: methods x seeds on the sandbox under one budget, each evaluated in and out of
distribution, summarised with 95% confidence intervals and paired (same-seed) differences.

    sftrl compare                                   # every method, 5 seeds, the sandbox budget, 2 jobs
    sftrl compare --tune                            # first pick each method's learning rate(s) on sandbox:val
    sftrl compare --methods sft grpo sasr --seeds 0 1 --max-steps 20 -o runs/compare-small

Equal budget: every run takes the same optimizer steps with the same prompts per step and rollouts
per prompt; phase lengths scale with it (SFT→GRPO and GRPO→SFT switch at half the steps, SASR warms
up for a fifth, UFT's hints last 60% of the steps as its 300 of 500). Learning rates: `learning_rate` for steps with a policy-gradient term and
`sft_learning_rate` for SFT-only steps, from the budget, or per method from `--tune`, which trains
each method once per point of a small grid (seed `TUNE_SEED`, never one of the compared seeds) and
keeps the rates with the best greedy accuracy on the validation split `sandbox:val` (never the test
split). Runs go to OUT/<method>-seed<seed>/ (tuning runs to OUT/tune/); a finished run with the same
settings is reused, an interrupted one resumes from its newest checkpoint, and evaluations resume
from their samples files. `--jobs N` runs N runs at once in separate processes, each with its share
of the CPU threads, logging to OUT/logs/. Outputs: results.json, comparison.md,
final_accuracy.png and the training-dynamics report (report.md / report.html and its plots).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import math
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from .config import Config, ConfigError
from .errors import RunError, SftrlError
from .formatting import number
from .validate import load_config
from .methods import METHODS

# GAC sits beside SASR: both let gradient statistics pick the mixture.
METHOD_ORDER = ["sft", "grpo", "sft-then-grpo", "grpo-then-sft", "static", "luffy", "srft", "hpt", "relift", "chord",
                "uft", "sasr", "gac"]
SPLITS = {"in-dist": "sandbox:test", "ood": "sandbox:ood"}
FAMILIES = ("chain", "double")
TUNE_SEED = 1000  # tuning runs use a seed of their own, so the compared seeds never choose their own rates
# The sandbox budget every compared run shares (recipes/sandbox-*.yaml carry the same values).
DEFAULT_BUDGET: dict[str, Any] = {
    "max_steps": 50, "batch_size": 16, "sft_batch_size": 128, "num_generations": 8, "learning_rate": 1e-4,
    "sft_learning_rate": 1e-3,
    "lr_scheduler": "constant", "warmup_steps": 5, "max_completion_length": 64,
}
DEFAULT_LR_GRID = {"learning_rate": [3e-5, 1e-4, 3e-4], "sft_learning_rate": [3e-4, 1e-3, 3e-3]}
# Two-sided 95% Student t quantiles by degrees of freedom (1.96 beyond 30).
T95 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042]


def budget_overrides(budget: dict[str, Any]) -> dict[str, Any]:
    """The config values every run shares; phase lengths are fractions of the steps."""
    steps = budget["max_steps"]
    return {"model": "sandbox", "train_data": "sandbox", **budget, "sft_steps": steps // 2, "grpo_steps": steps // 2,
            "sasr_warmup_steps": max(1, steps // 5)}


def method_overrides(method: str, budget: dict[str, Any]) -> dict[str, Any]:
    """Phase lengths only one method reads, set for that method alone, so that a finished run of
    another method is still reused when they are added (a run's config records every field)."""
    if method == "uft":
        return {"uft_hint_steps": round(0.6 * budget["max_steps"])}  # UFT: hints for 300 of 500 steps
    return {}


def run_config(method: str, seed: int, run_dir: Path, shared: dict[str, Any], checkpoint_every: int) -> Config:
    """One run's config: the method's defaults and preset, then the shared budget, then seed and paths."""
    return load_config(None, {"method": method, **method_overrides(method, shared), **shared, "seed": seed,
                              "output_dir": str(run_dir),
                              "save_every": checkpoint_every, "save_total_limit": 1000})


def _differences(run_dir: Path, config: Config) -> list[str]:
    """The settings that differ from the run's and change its result (a field its config.yaml lacks,
    written before the field existed, counts as its default)."""
    from .checkpoint import config_differences, read_run_config

    return config_differences(read_run_config(run_dir), config)


def _same_settings(run_dir: Path, config: Config) -> bool:
    return not _differences(run_dir, config)


def train_or_reuse(config: Config) -> tuple[Path, str]:
    """Train the run unless it already finished with these settings; returns (run dir, what happened)."""
    from .trainer import train

    run_dir = config.run_dir
    if (run_dir / "summary.json").exists():
        differences = _differences(run_dir, config)
        if differences:
            raise FileExistsError(f"{run_dir} holds a finished run with other settings ({'; '.join(differences)}); "
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
                 max_new_tokens: int, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None) -> dict[str, dict]:
    """avg@k and pass@k of one model on each split, overall and per family (`<split>/<family>`);
    samples go to eval_dir/<split>.jsonl (resumable). Prompts are rendered as in training."""
    from .data import load_examples
    from .evaluate import build_questions, run_benchmark, sample_with_generate, summarize
    from .models import load_model, load_tokenizer, model_fingerprint

    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    model = load_model(str(model_dir), trust_remote_code=trust_remote_code)
    sampler = functools.partial(sample_with_generate, chat_template_kwargs=chat_template_kwargs)
    fingerprint = model_fingerprint(str(model_dir))  # a retrained model is evaluated again, never served old samples
    results = {}
    for name, source in SPLITS.items():
        questions = build_questions(load_examples(source, limit=limit), source, k=k)
        settings = {"model": str(model_dir), "k": k, "shuffle_choices": False, "model_sha256": fingerprint,
                    "chat_template_kwargs": chat_template_kwargs}
        records = run_benchmark(model, tokenizer, questions, eval_dir / f"{name}.jsonl", settings,
                                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, sampler=sampler)
        summary = summarize(records)
        results[name] = summary["overall"]
        for source_name, stats in summary["by_source"].items():
            family = source_name.rsplit("-", 1)[-1]
            if family in FAMILIES:
                results[f"{name}/{family}"] = stats
    return results


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


def paired_differences(results: list[dict[str, Any]], metric: Callable[[dict], float | None],
                       methods: list[str]) -> list[dict[str, Any]]:
    """For every pair of methods (a before b in `methods`), the mean over shared seeds of
    metric(a) - metric(b) and its 95% CI; `separated` when the interval excludes 0."""
    by_key = {(r["method"], r["seed"]): metric(r) for r in results}
    rows = []
    for a, b in itertools.combinations(methods, 2):
        seeds = sorted(s for (m, s), v in by_key.items() if m == a and v is not None
                       and by_key.get((b, s)) is not None)
        if len(seeds) < 2:
            continue
        mean, half = mean_ci([by_key[(a, s)] - by_key[(b, s)] for s in seeds])
        rows.append({"a": a, "b": b, "seeds": len(seeds), "mean": mean, "ci95": half,
                     "separated": abs(mean) > half})
    return rows


# ------------------------------------------------------------------------------------ tables
def _names(results: list[dict[str, Any]]) -> list[str]:
    present = {r["method"] for r in results}
    names = ["base"] + [m for m in METHOD_ORDER if m in present]
    return names + sorted(present - set(names))


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values:
        return "–"
    mean, half = mean_ci([v * scale for v in values])
    spec = f".{digits}f"
    return f"{number(mean, spec)} ± {number(half, spec)}" if len(values) > 1 else number(mean, spec)


def comparison_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: one row per method (base model first), mean ± 95% CI half-width over seeds, in percent."""
    columns = [("in-dist", f"in-dist avg@{k}"), ("in-dist/chain", "chain"), ("in-dist/double", "double"),
               ("ood", f"ood avg@{k}"), ("ood/chain", "ood chain"), ("ood/double", "ood double")]
    lines = ["| method | seeds | " + " | ".join(title for _, title in columns) + " | greedy in-dist | train s |",
             "|---|---:|" + "---:|" * (len(columns) + 2)]
    for name in _names(results):
        rows = [r for r in results if r["method"] == name]
        cells = [_cell([r[key]["avg@k"] for r in rows if key in r]) for key, _ in columns]
        greedy = _cell([r["greedy_after"] for r in rows if r.get("greedy_after") is not None])
        seconds = _cell([r["train_seconds"] for r in rows if r.get("train_seconds") is not None], 1.0, 0)
        lines.append(f"| {name} | {len(rows)} | " + " | ".join(cells) + f" | {greedy} | {seconds} |")
    return "\n".join(lines)


def differences_table(results: list[dict[str, Any]], k: int) -> str:
    """Markdown: paired differences (row a minus b, same seeds) of avg@k with 95% CIs, in points;
    a bold entry's interval excludes zero."""
    names = _names(results)
    diffs = {split: {(d["a"], d["b"]): d for d in
                     paired_differences(results, lambda r, s=split: r.get(s, {}).get("avg@k"), names)}
             for split in ("in-dist", "ood")}
    lines = [f"| a − b | in-dist avg@{k} | ood avg@{k} |", "|---|---:|---:|"]
    for a, b in itertools.combinations(names, 2):
        cells = []
        for split in ("in-dist", "ood"):
            d = diffs[split].get((a, b))
            if d is None:
                cells.append("–")
                continue
            text = f"{number(100 * d['mean'], '+.1f')} ± {number(100 * d['ci95'], '.1f')}"
            cells.append(f"**{text}**" if d["separated"] else text)
        if any(c != "–" for c in cells):
            lines.append(f"| {a} − {b} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def plot_accuracy(results: list[dict[str, Any]], k: int, path: Path) -> None:
    """Grouped bars: in-distribution and OOD avg@k per method, mean over seeds, error bars the 95% CI,
    seeds as dots."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _names(results)
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(names) + 1.5), 4))
    for offset, (split, color) in zip((-0.2, 0.2), (("in-dist", "#1f77b4"), ("ood", "#ff7f0e"))):
        for i, name in enumerate(names):
            values = [100 * r[split]["avg@k"] for r in results if r["method"] == name]
            if not values:
                continue
            mean, half = mean_ci(values)
            ax.bar(i + offset, mean, width=0.4, color=color, yerr=half if len(values) > 1 else None, capsize=3,
                   label=f"{split} ({SPLITS[split]})" if i == 0 else None)
            ax.scatter([i + offset] * len(values), values, color="black", s=6, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set(ylabel=f"avg@{k} (%)", title="Sandbox accuracy after equal budgets (mean, 95% CI over seeds)")
    ax.grid(axis="y", alpha=0.3)
    from .report import legend_outside, save_figure

    legend_outside(ax, 2)  # beside the bars: over them it hides the seeds' dots
    save_figure(fig, path)


# ------------------------------------------------------------------------------------ running jobs
def _job(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one run and/or evaluate one model; runs in a worker process or inline.

    task: {"config": dict | None, "eval": dict | None, "threads": int | None, "log": str | None}.
    """
    import torch

    if task.get("threads"):
        torch.set_num_threads(task["threads"])
    log = task.get("log")
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        if log:  # a worker's output goes to its run's log file, so parallel runs do not interleave
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            stream = stack.enter_context(open(log, "a", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(stream))
            stack.enter_context(contextlib.redirect_stderr(stream))
        out: dict[str, Any] = {}
        if task.get("config") is not None:
            config = load_config(None, task["config"])
            run_dir, out["what"] = train_or_reuse(config)
            summary = json.loads((run_dir / "summary.json").read_text())
            out["greedy_after"] = summary.get("eval_after", {}).get("eval/accuracy")
            out["train_seconds"] = summary.get("train_seconds")
        if task.get("eval") is not None:
            e = task["eval"]
            out["evals"] = evaluate_run(Path(e["model"]), Path(e["dir"]), e["k"], e["temperature"], e["limit"],
                                        e["seed"], e["max_new_tokens"], e["trust_remote_code"], e["chat_template_kwargs"])
    out["seconds"] = time.perf_counter() - started
    return out


def run_jobs(tasks: list[dict[str, Any]], jobs: int, describe: Callable[[dict, dict], str]) -> list[dict[str, Any]]:
    """Run tasks (inline with jobs=1, else in `jobs` spawned processes, each with its share of the
    threads); prints one line per finished task; results in task order. A failed task stops the rest."""
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        for number, task in enumerate(tasks):
            results[number] = _job({**task, "log": None, "threads": None})
            print(f"  [{number + 1}/{len(tasks)}] {describe(task, results[number])}", flush=True)
        return results  # type: ignore[return-value]
    threads = max(1, (os.cpu_count() or 2) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = {pool.submit(_job, {**task, "threads": threads}): i for i, task in enumerate(tasks)}
        done = 0
        for future in as_completed(futures):
            i = futures[future]
            try:
                results[i] = future.result()
            except BaseException as exc:
                for other in futures:
                    other.cancel()
                log = tasks[i].get("log")
                message = f"{describe(tasks[i], {})} failed: {exc}" + (f" (log: {log})" if log else "")
                # The user's problem (their input, their run directory) in one line; a bug keeps its traceback.
                kind = RunError if isinstance(exc, (SftrlError, FileExistsError, FileNotFoundError)) else RuntimeError
                raise kind(message) from exc
            done += 1
            print(f"  [{done}/{len(tasks)}] {describe(tasks[i], results[i])}", flush=True)
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------ tuning
def tuning_grid(method: str, shared: dict[str, Any], grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """The points to try: the product of the grid's values over the learning rates `method` uses."""
    fields = METHODS[method].learning_rate_fields(load_config(None, {"method": method, **shared}))
    return [dict(zip(fields, values)) for values in itertools.product(*(grid[f] for f in fields))]


def _rate_tag(point: dict[str, float]) -> str:
    short = {"learning_rate": "lr", "sft_learning_rate": "sftlr"}
    return "-".join(f"{short[k]}{number(v, 'g')}" for k, v in point.items())


def tune(methods: list[str], shared: dict[str, Any], out_dir: Path, grid: dict[str, list[float]],
         jobs: int) -> dict[str, dict[str, Any]]:
    """Train each method at every grid point (seed TUNE_SEED, greedy accuracy on sandbox:val) and keep
    the best point per method (ties: the earlier, lower rates). Returns {method: {"chosen", "scores"}}."""
    tasks, points = [], []
    for method in methods:
        for point in tuning_grid(method, shared, grid):
            run_dir = out_dir / "tune" / f"{method}-{_rate_tag(point)}"
            values = {"method": method, **shared, **point, "seed": TUNE_SEED, "eval_data": "sandbox:val",
                      "output_dir": str(run_dir), "save_every": 0, "progress": jobs <= 1}
            load_config(None, values)  # a bad value fails before anything runs
            tasks.append({"config": values, "log": str(out_dir / "logs" / f"tune-{run_dir.name}.log"), "point": point})
            points.append((method, point))
    print(f"tuning: {len(tasks)} runs on sandbox:val (seed {TUNE_SEED})", flush=True)

    def describe(task, result):
        c = task["config"]
        score = f": val greedy {number(result['greedy_after'], '.1%')}" if result.get("greedy_after") is not None else ""
        return f"tune {c['method']} {_rate_tag(task['point'])}{score}"

    finished = run_jobs(tasks, jobs, describe)
    tuning: dict[str, dict[str, Any]] = {}
    for (method, point), result in zip(points, finished):
        entry = tuning.setdefault(method, {"scores": [], "chosen": None, "best": -1.0})
        entry["scores"].append({**point, "val_greedy": result["greedy_after"]})
        if result["greedy_after"] > entry["best"]:
            entry["chosen"], entry["best"] = point, result["greedy_after"]
    return tuning


def tuning_table(tuning: dict[str, dict[str, Any]]) -> str:
    lines = ["| method | learning_rate | sft_learning_rate | val greedy | tried |", "|---|---:|---:|---:|---|"]
    for method, entry in tuning.items():
        chosen = entry["chosen"]
        tried = ", ".join(f"{_rate_tag({k: v for k, v in s.items() if k != 'val_greedy'})}: {number(s['val_greedy'], '.1%')}"
                          for s in entry["scores"])
        lines.append(f"| {method} | {chosen.get('learning_rate', '–')} | {chosen.get('sft_learning_rate', '–')} | "
                     f"{number(entry['best'], '.1%')} | {tried} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ compare
def compare(methods: list[str], seeds: list[int], out_dir: str | Path, budget: dict[str, Any] | None = None,
            k: int = 4, temperature: float = 0.6, eval_limit: int = 200, checkpoint_every: int = 0,
            overrides: dict[str, Any] | None = None, jobs: int = 1, tune_grid: dict[str, list[float]] | None = None
            ) -> list[dict[str, Any]]:
    """Train (or reuse) every method x seed, evaluate each, and write the tables, plots and report.

    budget: the shared settings (default DEFAULT_BUDGET; keys given replace its values); overrides:
    further config values for every run; tune_grid: {"learning_rate": [...], "sft_learning_rate":
    [...]} to tune each method's rates on sandbox:val first (None: no tuning).
    """
    from .report import load_run, write_report

    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    budget = {**DEFAULT_BUDGET, **(budget or {})}
    shared = {**budget_overrides(budget), **(overrides or {})}
    for method in methods:  # fail early on a bad setting
        run_config(method, seeds[0], out_dir / "check", shared, checkpoint_every)
    start = time.perf_counter()
    tuning = tune(methods, shared, out_dir, tune_grid, jobs) if tune_grid else {}
    rates = {m: tuning[m]["chosen"] for m in tuning}
    configs = [run_config(m, s, out_dir / f"{m}-seed{s}", {**shared, **rates.get(m, {}), "progress": jobs <= 1},
                          checkpoint_every) for s in seeds for m in methods]
    max_new_tokens = configs[0].max_completion_length
    evaluation = {"k": k, "temperature": temperature, "limit": eval_limit, "max_new_tokens": max_new_tokens,
                  "trust_remote_code": configs[0].trust_remote_code, "chat_template_kwargs": configs[0].chat_template_kwargs}
    from .models import resolve_model_path

    base = resolve_model_path(shared["model"])
    tasks = [{"config": None, "eval": {**evaluation, "model": base, "dir": str(out_dir / f"base-seed{s}"), "seed": s},
              "log": str(out_dir / "logs" / f"base-seed{s}.log"), "label": ("base", s)} for s in seeds]
    tasks += [{"config": c.to_dict(), "log": str(out_dir / "logs" / f"{c.run_dir.name}.log"), "label": (c.method, c.seed),
               "eval": {**evaluation, "model": str(c.run_dir / "model"), "dir": str(c.run_dir / "eval"), "seed": c.seed}}
              for c in configs]
    print(f"compare: {len(configs)} runs ({len(methods)} methods x {len(seeds)} seeds) and {len(seeds)} base-model "
          f"evaluations, {jobs} at a time -> {out_dir}", flush=True)

    def describe(task, result):
        method, seed = task["label"]
        text = f"{method} seed {seed}"
        if "evals" in result:
            text += (f": in-dist avg@{k} {number(result['evals']['in-dist']['avg@k'], '.1%')}, "
                     f"ood avg@{k} {number(result['evals']['ood']['avg@k'], '.1%')}")
        if result.get("what"):
            text += f" ({result['what']}, {number(result['seconds'], '.0f')} s)"
        return text

    finished = run_jobs(tasks, jobs, describe)
    results = []
    for task, result in zip(tasks, finished):
        method, seed = task["label"]
        row = {"method": method, "seed": seed, **result["evals"]}
        if task["config"] is not None:
            row.update(run_dir=task["config"]["output_dir"], greedy_after=result.get("greedy_after"),
                       train_seconds=result.get("train_seconds"))
        results.append(row)

    table, diffs = comparison_table(results, k), differences_table(results, k)
    names = _names(results)
    pairs = {split: paired_differences(results, lambda r, s=split: r.get(s, {}).get("avg@k"), names)
             for split in ("in-dist", "ood")}
    sft_batch = budget.get("sft_batch_size") or budget["batch_size"]
    budget_text = (f"{budget['max_steps']} steps; a step with a policy-gradient term takes {budget['batch_size']} "
                   f"prompts x {budget['num_generations']} rollouts at learning_rate {number(budget['learning_rate'], 'g')}, an "
                   f"SFT-only step {sft_batch} demonstrations at sft_learning_rate "
                   f"{number(budget.get('sft_learning_rate') or budget['learning_rate'], 'g')}"
                   f"{', tuned per method on sandbox:val' if tuning else ''}; evaluated on {eval_limit} prompts "
                   f"per split with {k} samples at temperature {temperature}")
    (out_dir / "results.json").write_text(json.dumps(
        {"budget": shared, "k": k, "temperature": temperature, "eval_limit": eval_limit, "seeds": seeds,
         "tuning": tuning, "results": results, "paired_differences": pairs}, indent=2))
    sections = [f"Budget: {budget_text}. Accuracy in percent: mean ± half-width of the 95% confidence interval "
                f"over seeds {', '.join(map(str, seeds))} (Student t). `chain` and `double` are the two problem "
                f"families (see README, The sandbox).", table,
                "Paired differences (same seeds), in points; **bold**: the 95% interval excludes zero.", diffs]
    if tuning:
        sections += [f"Learning rates chosen on sandbox:val (greedy accuracy, seed {TUNE_SEED}):", tuning_table(tuning)]
    (out_dir / "comparison.md").write_text("\n\n".join(sections) + "\n")
    plot_accuracy(results, k, out_dir / "final_accuracy.png")
    runs = [load_run(Path(c.run_dir)) for c in configs]
    if runs:
        write_report(runs, out_dir, title="sftrl compare: sandbox", extra_sections=[("Comparison", table),
                                                                                     ("Paired differences", diffs)],
                     extra_images=[out_dir / "final_accuracy.png"])
    print(table)
    print(f"wrote {out_dir / 'comparison.md'}, {out_dir / 'results.json'}, {out_dir / 'final_accuracy.png'}, "
          f"{out_dir / 'report.html'} ({number(time.perf_counter() - start, '.0f')} s)", flush=True)
    return results

