"""Does the sandbox separate the paradigms? Greedy accuracy before and after the sandbox recipes, over seeds.

For each seed, from the shipped base model:
- ``grpo``: recipes/sandbox-grpo.yaml (RL with the sandbox verifier as reward);
- ``grpo-random``: the same run with a random reward (each completion 1 with probability 1/2): a
  control that must not gain, or the "RL gain" would be an artefact of the update itself;
- ``sft``: recipes/sandbox-sft.yaml (SFT on the demonstrations).

Prints one table: greedy accuracy on sandbox:test (200 prompts) before and after, overall and per
family (``chain``: the latent step-by-step strategy RL can amplify; ``double``: the doubling skill only
demonstrations carry), mean and 95% confidence interval over the seeds, plus the smallest gain seen.
Evaluation always grades with the sandbox's verifier, whatever the training reward.

    python benchmarks/sandbox_gains.py                       # 5 seeds, 2 runs at a time (about 15 minutes)
    python benchmarks/sandbox_gains.py --seeds 0 1 --runs sft --jobs 1 --out runs/bench-gains
    python benchmarks/sandbox_gains.py --json gains.json     # also write every number

Runs live in OUT/<run>-seed<seed>/ and are reused when finished with the same settings.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from sftrl.compare import run_jobs
from sftrl.summary import mean_ci
from sftrl.validate import load_config

ROOT = Path(__file__).resolve().parent.parent
RANDOM_REWARD = Path(__file__).resolve().parent / "random_reward.py"
RUNS = {
    "grpo": ("sandbox-grpo.yaml", {}),
    "grpo-random": ("sandbox-grpo.yaml", {"reward_funcs": [f"{RANDOM_REWARD}:random_reward"]}),
    "sft": ("sandbox-sft.yaml", {}),
}
COLUMNS = ("eval/accuracy", "eval/accuracy/sandbox-test-chain", "eval/accuracy/sandbox-test-double")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--out", default="runs/bench-gains")
    parser.add_argument("--json", default=None, help="write every number to this file")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides for every run")
    args = parser.parse_args()

    tasks = []
    for seed in args.seeds:
        for name in args.runs:
            recipe, extra = RUNS[name]
            config = load_config(ROOT / "recipes" / recipe, [*args.overrides])
            values = {**config.to_dict(), **extra, "seed": seed, "progress": args.jobs <= 1, "save_every": 0,
                      "output_dir": str(Path(args.out) / f"{name}-seed{seed}")}
            load_config(None, values)  # validate before anything runs
            tasks.append({"config": values, "log": str(Path(args.out) / "logs" / f"{name}-seed{seed}.log"), "name": name})

    def describe(task, result):
        summary = _summary(task)
        after = summary.get("eval_after", {}).get("eval/accuracy") if summary else None
        return f"{task['name']} seed {task['config']['seed']}" + (f": after {after:.1%}" if after is not None else "")

    run_jobs(tasks, args.jobs, describe)
    rows = []
    for name in args.runs:
        summaries = [_summary(t) for t in tasks if t["name"] == name]
        row = {"run": name, "seeds": len(summaries)}
        for column in COLUMNS:
            before = [s["eval_before"][column] for s in summaries]
            after = [s["eval_after"][column] for s in summaries]
            row[column] = {"before": before, "after": after, "gain": [a - b for a, b in zip(after, before)]}
        row["train_seconds"] = [s["train_seconds"] for s in summaries]
        rows.append(row)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


def _summary(task: dict) -> dict | None:
    path = Path(task["config"]["output_dir"]) / "summary.json"
    return json.loads(path.read_text()) if path.exists() else None


def _ci(values: list[float], scale: float = 100.0) -> str:
    mean, half = mean_ci([v * scale for v in values])
    return f"{mean:.1f} ± {half:.1f}"


def table(rows: list[dict]) -> str:
    lines = ["| run | seeds | before | after | gain (min) | chain before → after | double before → after | train s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        overall, chain, double = (row[c] for c in COLUMNS)
        lines.append(f"| {row['run']} | {row['seeds']} | {_ci(overall['before'])} | {_ci(overall['after'])} | "
                     f"{_ci(overall['gain'])} ({100 * min(overall['gain']):.1f}) | "
                     f"{_ci(chain['before'])} → {_ci(chain['after'])} | {_ci(double['before'])} → {_ci(double['after'])} | "
                     f"{_ci(row['train_seconds'], 1.0)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
