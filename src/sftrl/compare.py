"""`sftrl compare`: methods x seeds (x regimes) on the sandbox under one budget, each evaluated in and
out of distribution, summarised with 95% confidence intervals, paired (same-seed) differences, and the
gain of every method over the base model and over a negative control.

    sftrl compare                                   # every method + the control, 5 seeds, 2 jobs
    sftrl compare --tune                            # first pick each method's learning rate(s) on sandbox:val
    sftrl compare --methods sft grpo grpo-random --seeds 0 1 --max-steps 20 -o runs/compare-small
    sftrl compare --grid sandbox_skill_share=0,0.7 max_steps=200 --curve-every 50 -o runs/map   # regime map

The headline is sampled accuracy (avg@k at temperature 0.6 on sandbox:test); greedy accuracy sits
beside it (it flips with the base model's near 50/50 first-token choice, see README, Results). The
row `grpo-random` is GRPO rewarded by a seeded coin paying 1 with the base model's measured pass rate
(control.json per regime): how far a run drifts with a reward that says nothing about the answer; a
gain not above the control's is marked †.

Budgets (`--budget`): `steps` (default) gives every run max_steps optimizer steps with the same prompts
per step and rollouts per prompt, phase lengths scaling with it (SFT→GRPO and GRPO→SFT switch at half,
SASR warms up for a fifth, UFT's hints last 60% as its 300 of 500); `sequences` the same count of
trained sequences; `tokens` the same count of token passes (generated + trained tokens, counted by the
loop), so each step kind is charged what it costs. Learning rates: `learning_rate` for steps with a
policy-gradient term and `sft_learning_rate` for SFT-only steps, from the budget, or per method from
`--tune` (seed TUNE_SEED, never a compared seed; scored by avg@k on sandbox:val, never the test split).

Regimes (`--grid key=v1,v2 ...`): each value of each key alone beside the default, in OUT/<key=value>/,
with the regime map (regime_map.png / .md, regimes.json) in OUT, rewritten as each regime finishes; a
run two regimes share (a method without demonstrations under a demonstration-only knob) is trained
once. `--curve-every N` keeps a checkpoint every N steps and evaluates each (learning curves against
steps and token passes). Runs go to OUT[/<regime>]/<method>-seed<seed>/; a finished run with the same
settings is reused, an interrupted one resumes from its newest checkpoint, and evaluations resume from
their samples files. `--jobs N` runs N runs at once in separate processes, each with its share of the
CPU threads, logging to OUT/logs/. Outputs per regime: results.json, comparison.md, final_accuracy.png,
curves.png (with --curve-every) and the training-dynamics report (report.md / report.html and plots).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable

from .compare_eval import SPLITS, control_prob, evaluate_run, learning_curve
from .compare_plan import TOKENS_PER_SEQUENCE  # noqa: F401  (re-exported: test_compare_map reads it here)
from .compare_plan import (DEFAULT_BUDGET, TUNE_SEED, Row, budget_limits, budget_overrides, check_overrides, define_rows,
                           expand_grid, method_of, own_rows, rate_tag, run_config, run_key, tuning_grid)
from .config import Config, ConfigError
from .errors import RunError, SftrlError
from .formatting import number
from .validate import load_config
from .summary import (BASE, CONTROL, METHOD_ORDER, comparison_table, differences_table, headline, paired_differences,
                      plot_accuracy, plot_curves, plot_regime_map, regime_cells, regime_map_table)


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


# ------------------------------------------------------------------------------------ running jobs
def _job(task: dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse) one run and/or evaluate one model; runs in a worker process or inline.

    task: {"config": dict | None, "eval": dict | None, "curve": bool, "threads": int | None, "log": str | None}.
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
            after = summary.get("eval_after", {})
            out.update(greedy_after=after.get("eval/accuracy"), sampled_after=after.get("eval/sampled_accuracy"),
                       train_seconds=summary.get("train_seconds"), steps=summary.get("steps"),
                       total_token_passes=summary.get("total_token_passes"),
                       total_train_sequences=summary.get("total_train_sequences"))
        if task.get("eval") is not None:
            e = task["eval"]
            out["evals"] = evaluate_run(Path(e["model"]), Path(e["dir"]), e["k"], e["temperature"], e["limit"],
                                        e["seed"], e["max_new_tokens"], e["trust_remote_code"], e["chat_template_kwargs"])
            if task.get("curve"):
                out["curve"] = learning_curve(Path(task["config"]["output_dir"]), e) + [
                    {"step": out["steps"], "token_passes": out["total_token_passes"],
                     "avg@k": out["evals"]["in-dist"]["avg@k"]}]
    out["seconds"] = time.perf_counter() - started
    return out


def _die_with_parent(parent: int) -> None:
    """A worker's initializer: the worker is killed when the compare that started it dies (kill -9
    included), so no orphan goes on writing a run directory that a rerun then resumes beside it
    (Linux's PR_SET_PDEATHSIG; elsewhere nothing: the run directory's lock still refuses the rerun)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1: PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the compare died before the line above: this worker is an orphan already
        os._exit(1)


HEARTBEAT_S = 300.0  # with several jobs, a status line of the running runs at least this often (seconds)


def last_step(run_dir: str | Path) -> int | None:
    """The step of the last line of a run's metrics.jsonl (None: none yet), read from the file's tail."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        with path.open("rb") as stream:
            stream.seek(max(0, path.stat().st_size - 8192))
            lines = stream.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        with contextlib.suppress(ValueError, TypeError, AttributeError):
            return int(json.loads(line)["step"])
    return None


def running_status(running: list[dict[str, Any]], done: int, total: int, seconds: float) -> str:
    """One line on a parallel compare's progress: tasks done, time so far, and each running run's step."""
    parts = []
    for task in running:
        label, seed = task.get("label") or (task["config"]["method"], task["config"]["seed"])  # a tuning run: no label
        if task.get("config") is None:
            parts.append(f"{label} seed {seed} evaluating")
            continue
        step, steps = last_step(task["config"]["output_dir"]), task["config"]["max_steps"]
        parts.append(f"{label} seed {seed} " + ("starting" if step is None else f"step {step}/{steps}"
                                                + (" (evaluating)" if step >= steps else "")))
    minutes, sec = divmod(int(seconds), 60)
    return (f"  ... {done}/{total} done, {minutes // 60}:{minutes % 60:02d}:{sec:02d} elapsed"
            + (f"; running: {', '.join(parts)}" if parts else ""))


def run_jobs(tasks: list[dict[str, Any]], jobs: int, describe: Callable[[dict, dict], str]) -> list[dict[str, Any]]:
    """Run tasks (inline with jobs=1, else in `jobs` spawned processes, each with its share of the
    threads); prints one line per finished task, and with several jobs a status line of the running
    ones every HEARTBEAT_S without one; results in task order. A failed task stops the rest."""
    results: list[dict[str, Any] | None] = [None] * len(tasks)
    if jobs <= 1 or len(tasks) <= 1:
        for i, task in enumerate(tasks):
            results[i] = _job({**task, "log": None, "threads": None})
            print(f"  [{i + 1}/{len(tasks)}] {describe(task, results[i])}", flush=True)
        return results  # type: ignore[return-value]
    threads = max(1, (os.cpu_count() or 2) // jobs)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn"), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_job, {**task, "threads": threads}): i for i, task in enumerate(tasks)}
        done, pending, start = 0, set(futures), time.perf_counter()
        while pending:
            finished, pending = wait(pending, timeout=HEARTBEAT_S, return_when=FIRST_COMPLETED)
            if not finished:  # a long run: say where the running ones are
                # `running()` is true of queued tasks too (the pool hands workers tasks ahead); workers take
                # them in order, so the first `jobs` are the ones being run
                running = [tasks[futures[f]] for f in sorted(pending, key=futures.__getitem__) if f.running()][:jobs]
                print(running_status(running, done, len(tasks), time.perf_counter() - start), flush=True)
            for future in sorted(finished, key=futures.__getitem__):
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
def tune(labels: list[str], shared: dict[str, Any], out_dir: Path, grid: dict[str, list[float]], jobs: int,
         k: int, temperature: float) -> dict[str, dict[str, Any]]:
    """Train each method at every grid point (seed TUNE_SEED) and keep the point with the best sampled
    accuracy (avg@k at `temperature`, the table's own metric) on sandbox:val (ties: the earlier, lower
    rates); greedy accuracy is recorded beside it. A control row takes its method's rates.
    Returns {method: {"chosen", "best", "scores"}}."""
    methods = list(dict.fromkeys(method_of(label) for label in labels))
    tasks, points = [], []
    for method in methods:
        for point in tuning_grid(method, shared, grid):
            run_dir = out_dir / "tune" / f"{method}-{rate_tag(point)}"
            values = {"method": method, **shared, **point, "seed": TUNE_SEED, "eval_data": "sandbox:val",
                      "eval_samples": k, "eval_temperature": temperature,
                      "output_dir": str(run_dir), "save_every": 0, "progress": jobs <= 1}
            load_config(None, values)  # a bad value fails before anything runs
            tasks.append({"config": values, "log": str(out_dir / "logs" / f"tune-{run_dir.name}.log"), "point": point})
            points.append((method, point))
    print(f"tuning: {len(tasks)} runs on sandbox:val (seed {TUNE_SEED}), scored by avg@{k} at T {number(temperature, 'g')}",
          flush=True)

    def describe(task, result):
        c = task["config"]
        score = (f": val avg@{k} {number(result['sampled_after'], '.1%')} (greedy {number(result['greedy_after'], '.1%')})"
                 if result.get("sampled_after") is not None else "")
        return f"tune {c['method']} {rate_tag(task['point'])}{score}"

    finished = run_jobs(tasks, jobs, describe)
    tuning: dict[str, dict[str, Any]] = {}
    for (method, point), result in zip(points, finished):
        entry = tuning.setdefault(method, {"scores": [], "chosen": None, "best": -1.0})
        entry["scores"].append({**point, "val_sampled": result["sampled_after"], "val_greedy": result["greedy_after"]})
        if result["sampled_after"] > entry["best"]:
            entry["chosen"], entry["best"] = point, result["sampled_after"]
    return tuning


def tuning_table(tuning: dict[str, dict[str, Any]], k: int) -> str:
    lines = [f"| method | learning_rate | sft_learning_rate | val avg@{k} | tried (val avg@{k} / greedy) |",
             "|---|---:|---:|---:|---|"]
    for method, entry in tuning.items():
        chosen = entry["chosen"]
        tried = ", ".join(
            f"{rate_tag({key: v for key, v in s.items() if not key.startswith('val_')})}: "
            f"{number(s['val_sampled'], '.1%')} / {number(s['val_greedy'], '.1%')}" for s in entry["scores"])
        lines.append(f"| {method} | {chosen.get('learning_rate', '–')} | {chosen.get('sft_learning_rate', '–')} | "
                     f"{number(entry['best'], '.1%')} | {tried} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ compare
def compare(methods: list[str], seeds: list[int], out_dir: str | Path, budget: dict[str, Any] | None = None,
            k: int = 4, temperature: float = 0.6, eval_limit: int = 200, checkpoint_every: int = 0,
            overrides: dict[str, Any] | None = None, jobs: int = 1, tune_grid: dict[str, list[float]] | None = None,
            budget_kind: str = "steps", budget_amount: int | None = None, grid: list[str] | None = None,
            curve_every: int = 0, row_settings: dict[str, dict[str, Any]] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Train (or reuse) every method x seed in every regime, evaluate each, and write the tables, plots
    and reports; returns {regime: result rows}.

    budget: the shared settings (default DEFAULT_BUDGET; keys given replace its values); budget_kind:
    steps, sequences or tokens (budget_limits), budget_amount its size; overrides: further config values
    for every run; grid: `key=v1,v2` items, each value a regime of its own beside the default (OUT/<regime>/,
    and the regime map in OUT); tune_grid: {"learning_rate": [...], "sft_learning_rate": [...]} to tune
    each method's rates on sandbox:val in the default regime first (None: no tuning); curve_every: keep
    a checkpoint every N steps and evaluate each (learning curves); methods: the rows, each a method, a
    control or `NAME=METHOD` (define_rows); row_settings: {row: {key: value}}, config values for that row's
    runs alone (e.g. an `opd` teacher, a `uft` schedule).
    """
    check_overrides(overrides or {}, row_settings)
    defined = define_rows(methods, row_settings)
    labels = list(defined)
    if not seeds:
        raise ConfigError("--seeds: give at least one seed")
    if curve_every < 0:
        raise ConfigError(f"--curve-every: must be 0 (no curves) or positive, got {curve_every}")
    from .models import resolve_model_path

    regimes = expand_grid(grid)
    out_dir = Path(out_dir)
    base_budget = {**DEFAULT_BUDGET, **(budget or {})}
    plans = []
    for name, values in regimes:
        regime_budget = {**base_budget, **{key: v for key, v in values.items() if key in DEFAULT_BUDGET}}
        shared = {**budget_overrides(regime_budget), **(overrides or {}),
                  **{key: v for key, v in values.items() if key not in DEFAULT_BUDGET}}
        shared.update(budget_limits(budget_kind, shared, budget_amount))
        directory = out_dir if len(regimes) == 1 else out_dir / name.replace("/", "-")
        for label, row in defined.items():  # fail early on a bad setting
            run_config(label, seeds[0], directory / "check", shared, checkpoint_every or curve_every, row)
        plans.append((name, directory, regime_budget, shared))
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    tuning = tune([row.method for row in defined.values()], plans[0][3], out_dir, tune_grid, jobs, k, temperature) if tune_grid else {}
    save_every = curve_every or checkpoint_every

    tasks: list[dict[str, Any]] = []
    where: dict[str, int] = {}  # a run's key -> its task, so a run two regimes share is trained once
    rows: dict[str, list[tuple[str, int, int]]] = {}  # regime -> (label, seed, task index)
    for name, directory, regime_budget, shared in plans:
        rows[name] = []
        if CONTROL in labels:
            shared = {**shared, "coin_reward_prob": control_prob(directory, shared)}
        base_dir = out_dir if "model" not in dict(regimes)[name] else directory
        for s in seeds:
            model = resolve_model_path(shared["model"])
            key = f"base:{model}:{s}"
            if key not in where:
                where[key] = len(tasks)
                tasks.append({"config": None, "label": (BASE, s), "log": str(out_dir / "logs" / f"base-seed{s}.log"),
                              "eval": {"model": model, "dir": str(base_dir / f"base-seed{s}"), "seed": s}})
            rows[name].append((BASE, s, where[key]))
        for s in seeds:
            for label, row in defined.items():
                rates = tuning.get(row.method, {}).get("chosen", {})
                config = run_config(label, s, directory / f"{label}-seed{s}",
                                    {**shared, **rates, "progress": jobs <= 1}, save_every, row)
                key = run_key(config)
                if key not in where:
                    where[key] = len(tasks)
                    tasks.append({"config": config.to_dict(), "label": (label, s), "curve": bool(curve_every),
                                  "log": str(directory / "logs" / f"{label}-seed{s}.log"),
                                  "eval": {"model": str(config.run_dir / "model"), "dir": str(config.run_dir / "eval"),
                                           "seed": s}})
                rows[name].append((label, s, where[key]))
    first = load_config(None, {"method": "sft", **plans[0][3]})
    evaluation = {"k": k, "temperature": temperature, "limit": eval_limit, "max_new_tokens": first.max_completion_length,
                  "trust_remote_code": first.trust_remote_code, "chat_template_kwargs": first.chat_template_kwargs}
    for task in tasks:
        task["eval"].update(evaluation)
    trained = sum(task["config"] is not None for task in tasks)
    print(f"compare: {trained} runs ({len(labels)} methods x {len(seeds)} seeds"
          + (f" x {len(regimes)} regimes, runs that regimes share trained once" if len(regimes) > 1 else "")
          + f", budget in {budget_kind}) and {len(tasks) - trained} base-model evaluations, {jobs} at a time "
          f"-> {out_dir}", flush=True)

    def describe(task, result):
        label, seed = task["label"]
        text = f"{label} seed {seed}"
        if "evals" in result:
            text += (f": in-dist avg@{k} {number(result['evals']['in-dist']['avg@k'], '.1%')}, "
                     f"ood avg@{k} {number(result['evals']['ood']['avg@k'], '.1%')}")
        if result.get("what"):
            text += f" ({result['what']}, {number(result['seconds'], '.0f')} s)"
        return text

    # Regime by regime, each written as soon as its runs are done: a long grid leaves every finished
    # regime's tables (and the map so far) behind even if it is stopped.
    finished: list[dict[str, Any] | None] = [None] * len(tasks)
    everything: dict[str, list[dict[str, Any]]] = {}
    for name, directory, regime_budget, shared in plans:
        todo = list(dict.fromkeys(i for _, _, i in rows[name] if finished[i] is None))
        if len(regimes) > 1:
            print(f"regime {name}: {len(todo)} runs and evaluations to do", flush=True)
        for i, result in zip(todo, run_jobs([tasks[i] for i in todo], jobs, describe)):
            finished[i] = result
        results = []
        for label, seed, index in rows[name]:
            task, result = tasks[index], finished[index]
            row = {"method": label, "seed": seed, **result["evals"]}
            if task["config"] is not None:
                row.update(run_dir=task["config"]["output_dir"],
                           **{key: result.get(key) for key in ("greedy_after", "train_seconds", "steps",
                                                               "total_token_passes", "total_train_sequences")})
                if "curve" in result:
                    base = next(finished[i]["evals"] for b, s, i in rows[name] if b == BASE and s == seed)
                    row["curve"] = [{"step": 0, "token_passes": 0, "avg@k": base["in-dist"]["avg@k"]}] + result["curve"]
            results.append(row)
        run_labels: dict[Path, str] = {}  # each run directory under the first row that uses it
        for label, _, index in rows[name]:
            if label != BASE:
                run_labels.setdefault(Path(tasks[index]["config"]["output_dir"]), label)
        write_regime(name, directory, results, regime_budget, shared, budget_kind, seeds, k, temperature, eval_limit,
                     tuning, run_labels,
                     overrides or {}, own_rows(defined))
        everything[name] = results
        if len(regimes) > 1:
            write_map(out_dir, [(n, everything[n]) for n, _ in regimes if n in everything], k, seeds)
    print(f"done in {number(time.perf_counter() - start, '.0f')} s", flush=True)
    return everything


def settings_text(values: dict[str, Any]) -> str:
    """`key=value, ...` as the settings were given; a string with whitespace (a template's newlines) or an
    empty one is double-quoted with its escapes, as it is typed on the command line, so the table's first
    line stays one line and can be copied back."""
    def text(value: Any) -> str:
        return json.dumps(value) if isinstance(value, str) and (not value or any(c.isspace() for c in value)) else str(value)

    return ", ".join(f"{key}={text(value)}" for key, value in values.items())


def write_regime(name: str, directory: Path, results: list[dict[str, Any]], budget: dict[str, Any],
                 shared: dict[str, Any], budget_kind: str, seeds: list[int], k: int, temperature: float,
                 eval_limit: int, tuning: dict[str, Any], run_dirs: dict[Path, str], overrides: dict[str, Any],
                 own: dict[str, Row]) -> None:
    """One regime's comparison.md, results.json, final_accuracy.png, curves.png and training report.
    `overrides`: the settings the user gave every run, named in the table's first line (a regime named
    `default` with `sandbox_double_form=sum` given is not the default sandbox); `own`: the rows with
    settings of their own (`NAME=METHOD`, `LABEL:key=value`), named there too."""
    from .report import load_run, write_report
    from .summary import paired

    directory.mkdir(parents=True, exist_ok=True)
    table, diffs = comparison_table(results, k), differences_table(results, k)
    names = list(dict.fromkeys(r["method"] for r in results))
    pairs = {split: paired_differences(results, lambda r, s=split: r.get(s, {}).get("avg@k"), names)
             for split in ("in-dist", "ood")}
    sft_batch = budget.get("sft_batch_size") or budget["batch_size"]
    limit = {"steps": f"{budget['max_steps']} steps",
             "sequences": f"{shared.get('max_train_sequences')} trained sequences (at most "
                          f"{shared.get('max_steps')} steps)",
             "tokens": f"{shared.get('max_token_passes')} token passes (at most {shared.get('max_steps')} steps)"}
    budget_text = (f"{limit[budget_kind]}; a step with a policy-gradient term takes {budget['batch_size']} "
                   f"prompts x {budget['num_generations']} rollouts at learning_rate {number(budget['learning_rate'], 'g')}, an "
                   f"SFT-only step {sft_batch} demonstrations at sft_learning_rate "
                   f"{number(budget.get('sft_learning_rate') or budget['learning_rate'], 'g')}"
                   f"{', tuned per method on sandbox:val' if tuning else ''}; evaluated on {eval_limit} prompts "
                   f"per split with {k} samples at temperature {temperature}")
    control = shared.get("coin_reward_prob") if any(r["method"] == CONTROL for r in results) else None
    control_text = (f" `{CONTROL}` is the negative control: GRPO whose reward is a seeded coin paying 1 with "
                    f"probability {control} (the base model's measured pass rate), unrelated to the answer; † marks "
                    f"a gain not above the control's (paired 95% interval of the difference not above zero)."
                    if control is not None else "")
    (directory / "results.json").write_text(json.dumps(
        {"regime": name, "overrides": overrides,
         "rows": {label: {"method": row.method, "settings": row.settings} for label, row in own.items()},
         "budget": shared, "budget_kind": budget_kind, "k": k, "temperature": temperature,
         "eval_limit": eval_limit, "seeds": seeds, "tuning": tuning, "results": results, "paired_differences": pairs,
         "gains": {label: {"vs_base": paired(results, headline, label, BASE),
                           "vs_control": paired(results, headline, label, CONTROL)}
                   for label in names if label != BASE}}, indent=2))
    given = f" Given for every run: {settings_text(overrides)}." if overrides else ""
    for label, row in own.items():
        given += f" Row `{label}`: {row.method}{' with ' + settings_text(row.settings) if row.settings else ''}."
    sections = [f"Regime: {name}.{given} Budget: {budget_text}. Accuracy in percent: mean ± half-width of the 95% "
                f"confidence interval over seeds {', '.join(map(str, seeds))} (Student t). The headline is the "
                f"sampled avg@{k}; greedy accuracy is beside it. `chain` and `double` are the two problem families "
                f"(see README, The sandbox).{control_text}", table,
                "Paired differences (same seeds), in points; **bold**: the 95% interval excludes zero.", diffs]
    if tuning:
        sections += [f"Learning rates chosen on sandbox:val (avg@{k}, seed {TUNE_SEED}):", tuning_table(tuning, k)]
    images = [directory / "final_accuracy.png"]
    plot_accuracy(results, k, SPLITS, images[0])
    if plot_curves(results, k, directory / "curves.png"):
        images.append(directory / "curves.png")
        sections += [f"Learning curves: `curves.png` (in-dist avg@{k} against steps and against token passes)."]
    (directory / "comparison.md").write_text("\n\n".join(sections) + "\n")
    # each run under its row's label: the control runs GRPO and a row of its own its method, so the
    # method in config.yaml would draw them as one series with GRPO's (or the method's) runs
    runs = [load_run(path, label) for path, label in run_dirs.items()]
    if runs:
        write_report(runs, directory, title=f"sftrl compare: sandbox, {name}",
                     extra_sections=[("Comparison", table), ("Paired differences", diffs)], extra_images=images)
    print(f"[{name}]\n{table}")
    print(f"wrote {directory / 'comparison.md'}, {directory / 'results.json'}, {directory / 'report.html'}", flush=True)


def write_map(out_dir: Path, regimes: list[tuple[str, list[dict[str, Any]]]], k: int, seeds: list[int]) -> None:
    """The regime map: regime_map.png, regime_map.md and regimes.json in out_dir."""
    plot_regime_map(regimes, k, out_dir / "regime_map.png")
    table = regime_map_table(regimes, k)
    (out_dir / "regime_map.md").write_text(
        f"Which method wins where: in-distribution avg@{k} (%), mean ± 95% CI over seeds "
        f"{', '.join(map(str, seeds))}; each regime changes one setting from the default. **Bold**: the best in its "
        f"regime; *italic*: not separated from the best (paired 95% interval of the difference includes zero); "
        f"†: gain not above the random-reward control's. Full tables: <regime>/comparison.md.\n\n{table}\n")
    (out_dir / "regimes.json").write_text(json.dumps(
        {"k": k, "seeds": seeds, "cells": regime_cells(regimes), "regimes": [name for name, _ in regimes]}, indent=2))
    print(table)
    print(f"wrote {out_dir / 'regime_map.png'}, {out_dir / 'regime_map.md'}, {out_dir / 'regimes.json'}", flush=True)
