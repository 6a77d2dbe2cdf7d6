"""Time a fixed small `sftrl compare` on this checkout and on another git ref, side by side.

What it measures
----------------
The wall time of one `sftrl compare` (default: sft, grpo, luffy x seeds 0 1 x 20 steps, each final model
evaluated in and out of distribution, as compare always does) run by this checkout's code and by REF's,
each in a fresh subprocess and a fresh output directory (compare reuses finished runs: a reused
directory would time nothing). REF is checked out into a temporary `git worktree` (removed afterwards)
and run with PYTHONPATH=<worktree>/src, this checkout with PYTHONPATH=<this checkout>/src, both with this
interpreter. Rounds alternate which side goes first (this, REF; REF, this; ...), so a machine whose
speed drifts slows both alike. Before the first round each side resolves its sandbox base model
(trained and cached on first use where a checkout does not ship it), untimed.

It prints, per round, each side's wall seconds and the speed-up (REF's seconds / this checkout's: above 1,
this checkout is faster), the pooled speed-up, each method's mean accuracy over seeds (in-distribution and
out-of-distribution avg@k, from each side's results.json) so a change in results shows beside a change in
speed, and the CPU the numbers come from.

Run
---
::

    python benchmarks/compare_speed.py 527ff28                   # 3 rounds of 3 methods x 2 seeds x 20 steps
    python benchmarks/compare_speed.py main --rounds 1 --max-steps 10 --methods sft grpo --seeds 0
    python benchmarks/compare_speed.py HEAD --smoke               # seconds-to-minutes check that it all runs
    python benchmarks/compare_speed.py 527ff28 --jobs 2 -- mixed_precision=bf16   # key=value overrides for this side

Options: REF, --rounds 3, --methods sft grpo luffy, --seeds 0 1, --max-steps 20, --batch-size, --num-generations,
--k 4, --eval-limit 200, --jobs (compare's default: the cores, at most 8), --smoke, --keep DIR (keep the
output directories there), --json FILE, and after `--` config overrides given to this checkout's compare
only (a lever under test, e.g. mixed_precision=bf16); `--both` gives them to both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SIDES = ("this", "ref")
# --smoke: the smallest compare that still trains, evaluates and writes results.json on each side
SMOKE = {"methods": ["sft", "grpo"], "seeds": [0], "max_steps": 2, "batch_size": 2, "num_generations": 2,
         "k": 1, "eval_limit": 4, "rounds": 1, "jobs": 1, "budget_overrides": ["sft_batch_size=4"]}


# ---------------------------------------------------------------------------------------------- pure parts
def compare_command(python: str, out_dir: str | Path, args: argparse.Namespace, overrides: list[str]) -> list[str]:
    """The `sftrl compare` command line of one side (only options that 527ff28's compare has too)."""
    cmd = [python, "-m", "sftrl.cli", "compare", "--methods", *args.methods, "--seeds", *map(str, args.seeds),
           "--max-steps", str(args.max_steps), "--k", str(args.k), "--eval-limit", str(args.eval_limit),
           "-o", str(out_dir)]
    for option, value in (("--batch-size", args.batch_size), ("--num-generations", args.num_generations),
                          ("--jobs", args.jobs)):
        if value is not None:
            cmd += [option, str(value)]
    return cmd + list(overrides)


def side_order(round_: int) -> tuple[str, str]:
    """Which side goes first: this checkout in even rounds, REF in odd ones."""
    return SIDES if round_ % 2 == 0 else SIDES[::-1]


def accuracies(results: dict) -> dict[str, dict[str, float]]:
    """{method: {"in-dist": mean avg@k over seeds, "ood": ...}} from a compare's results.json (its
    "results" rows: method, seed, and per split {"avg@k", ...}); the base model's row as "base"."""
    sums: dict[str, dict[str, list[float]]] = {}
    for row in results.get("results", []):
        for split in ("in-dist", "ood"):
            value = (row.get(split) or {}).get("avg@k")
            if value is not None:
                sums.setdefault(row["method"], {}).setdefault(split, []).append(float(value))
    return {method: {split: sum(v) / len(v) for split, v in splits.items()} for method, splits in sums.items()}


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.1f}%"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def speedup(rounds: list[dict]) -> tuple[float, list[float]]:
    """(REF's total seconds / this checkout's total seconds, each round's REF/this ratio)."""
    per_round = [r["ref"]["seconds"] / r["this"]["seconds"] for r in rounds]
    return sum(r["ref"]["seconds"] for r in rounds) / sum(r["this"]["seconds"] for r in rounds), per_round


def render(rounds: list[dict], labels: dict[str, str], cpu: str, settings: str) -> str:
    """The timing table, the pooled speed-up, the accuracy table (first round; a later round whose
    accuracies differ from it is flagged) and the CPU."""
    lines = [f"| round | first | this: {labels['this']} (s) | ref: {labels['ref']} (s) | ref/this |",
             "|---:|---|---:|---:|---:|"]
    for i, r in enumerate(rounds):
        lines.append(f"| {i + 1} | {r['first']} | {r['this']['seconds']:.1f} | {r['ref']['seconds']:.1f} "
                     f"| {r['ref']['seconds'] / r['this']['seconds']:.2f}x |")
    pooled, per_round = speedup(rounds)
    lines += ["", f"speed-up (REF seconds / this checkout's, pooled over {len(rounds)} round"
                  f"{'s' if len(rounds) > 1 else ''}): {pooled:.2f}x"
              + (f"; per round {', '.join(f'{q:.2f}' for q in per_round)}" if len(rounds) > 1 else "")]
    first = rounds[0]
    methods = list(dict.fromkeys([*first["this"]["accuracy"], *first["ref"]["accuracy"]]))
    lines += ["", "accuracy, mean avg@k over seeds (round 1):", "",
              "| method | this in-dist | ref in-dist | this ood | ref ood |", "|---|---:|---:|---:|---:|"]
    for method in methods:
        this, ref = first["this"]["accuracy"].get(method, {}), first["ref"]["accuracy"].get(method, {})
        lines.append(f"| {method} | {_pct(this.get('in-dist'))} | {_pct(ref.get('in-dist'))} "
                     f"| {_pct(this.get('ood'))} | {_pct(ref.get('ood'))} |")
    for i, r in enumerate(rounds[1:], start=2):
        for side in SIDES:
            if r[side]["accuracy"] != first[side]["accuracy"]:
                lines.append(f"note: round {i}'s {side} accuracies differ from round 1's (nondeterminism across runs)")
    lines += ["", f"CPU: {cpu}; {os.cpu_count()} logical cores", f"settings: {settings}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- running
def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def cpu_name() -> str:
    sys.path.insert(0, str(ROOT / "src"))
    try:
        from sftrl.hardware import cpu_bf16_supported, cpu_name as name

        return f"{name()} (bfloat16 instructions: {'yes' if cpu_bf16_supported() else 'no'})"
    finally:
        sys.path.pop(0)


def side_env(src: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [os.environ.get("PYTHONPATH")])])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("HF_DATASETS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def run_side(cmd: list[str], env: dict[str, str], log: Path) -> float:
    """Run one side's compare, its output to `log`; its wall seconds (exits with the log's tail if it fails)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        code = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, cwd=str(log.parent)).returncode
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"{' '.join(cmd[:4])} failed (exit {code}); the end of {log}:\n{log.read_text()[-4000:]}")
    return seconds


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("ref", help="the git ref to compare with (e.g. 527ff28, main)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, alternating which side goes first (default 3)")
    p.add_argument("--methods", nargs="+", default=["sft", "grpo", "luffy"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--max-steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=None, help="prompts per policy step (compare's default: 16)")
    p.add_argument("--num-generations", type=int, default=None, help="rollouts per prompt (compare's default: 8)")
    p.add_argument("--k", type=int, default=4, help="evaluation samples per prompt (default 4)")
    p.add_argument("--eval-limit", type=int, default=200, help="prompts per evaluation split (default 200)")
    p.add_argument("--jobs", type=int, default=None, help="compare's --jobs (default: compare's own, the cores up to 8)")
    p.add_argument("--smoke", action="store_true",
                   help="the smallest run: sft and grpo, seed 0, 2 steps of 2 prompts x 2, 4 eval prompts x 1 sample, 1 round")
    p.add_argument("--both", action="store_true", help="give the overrides after -- to REF's compare too")
    p.add_argument("--keep", metavar="DIR", help="keep each round's compare output under DIR (default: a temporary directory)")
    p.add_argument("--json", metavar="FILE", help="write the rounds, seconds and accuracies here")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (after --) for this checkout's compare")
    args = p.parse_intermixed_args(argv)  # overrides may follow the options (after --)
    args.budget_overrides = []
    if args.smoke:
        for key, value in SMOKE.items():
            setattr(args, key, value)
    for name in ("rounds", "max_steps", "k", "eval_limit"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}: must be at least 1")
    if any("=" not in item for item in args.overrides):
        p.error("overrides are key=value")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    sha = _git("rev-parse", "--verify", f"{args.ref}^{{commit}}")  # a bad ref fails here, before anything runs
    labels = {"this": _git("describe", "--always", "--dirty"),
              "ref": args.ref if sha.startswith(args.ref) else f"{args.ref} ({sha[:7]})"}
    cpu = cpu_name()
    print(f"compare_speed: this checkout {labels['this']} against {labels['ref']} on {cpu}", flush=True)
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="compare-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix="compare-speed-ref-")) / "tree"
    _git("worktree", "add", "--detach", str(tree), sha)
    try:
        srcs = {"this": ROOT / "src", "ref": tree / "src"}
        overrides = {"this": args.budget_overrides + args.overrides,
                     "ref": args.budget_overrides + (args.overrides if args.both else [])}
        for side in SIDES:  # untimed: the sandbox base model, trained and cached on first use where not shipped
            subprocess.run([sys.executable, "-c", "from sftrl.models import resolve_model_path; "
                            "resolve_model_path('sandbox')"], env=side_env(srcs[side]), check=False,
                           capture_output=True)
        rounds = []
        for round_ in range(args.rounds):
            record = {"first": side_order(round_)[0]}
            for side in side_order(round_):
                out = work / f"round{round_ + 1}-{side}"
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir(parents=True)
                cmd = compare_command(sys.executable, out / "compare", args, overrides[side])
                print(f"round {round_ + 1}/{args.rounds}: {side} ({labels[side]}) ...", flush=True)
                seconds = run_side(cmd, side_env(srcs[side]), out / "compare.log")
                results = json.loads((out / "compare" / "results.json").read_text())
                record[side] = {"seconds": seconds, "accuracy": accuracies(results)}
                print(f"  {seconds:.1f} s", flush=True)
            rounds.append(record)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tree.parent, ignore_errors=True)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    settings = (f"methods {' '.join(args.methods)}, seeds {' '.join(map(str, args.seeds))}, {args.max_steps} steps, "
                f"k {args.k}, eval-limit {args.eval_limit}, jobs {args.jobs or 'compare default'}"
                + (f", batch-size {args.batch_size}" if args.batch_size else "")
                + (f", num-generations {args.num_generations}" if args.num_generations else "")
                + (f", this: {' '.join(overrides['this'])}" if overrides["this"] else "")
                + (f", ref: {' '.join(overrides['ref'])}" if overrides["ref"] else ""))
    print()
    print(render(rounds, labels, cpu, settings))
    if args.json:
        Path(args.json).write_text(json.dumps({"labels": labels, "cpu": cpu, "settings": settings,
                                               "speedup": speedup(rounds)[0], "rounds": rounds}, indent=2))


if __name__ == "__main__":
    main()
