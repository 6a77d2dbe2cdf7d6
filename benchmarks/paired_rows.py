"""One table from the rows of several `sftrl compare` outputs, with paired differences by seed.

`sftrl compare` pairs methods within one output directory (a method that needs its own settings joins it
as a row of its own: `LABEL:key=value`). Runs that live in different output directories (compares run
apart, or a regime of the map beside another compare) are put side by side here, pairing runs by seed,
exactly as compare's own tables do (in-distribution avg@k, mean ± 95% interval over seeds, Student t).

Run:

    python benchmarks/paired_rows.py sft=runs/i25:sft grpo=runs/i25:grpo questa=runs/i25-questa:uft \\
        --against sft grpo

Each row is LABEL=DIR:METHOD, DIR a compare output (its results.json, or DIR/default/results.json for a
grid), or LABEL=DIR:METHOD@STEP: the same runs' checkpoint at STEP as their learning curve evaluated it
(`compare --curve-every`; in-distribution only), so a run's accuracy at two horizons pairs by seed:

    python benchmarks/paired_rows.py sft@50=runs/map200:sft@50 sft@200=runs/map200:sft --against sft@50

Prints a markdown table: each row's in-dist and ood avg@k and its `chain` / `double` families,
then each row minus each --against row over the seeds both have, on the split `--split` names (default
in-dist; e.g. `--split in-dist/double`); **bold** where the interval excludes zero.
"""
import argparse
import json
import sys
from pathlib import Path

from sftrl.formatting import number
from sftrl.summary import mean_ci

SPLITS = ("in-dist", "in-dist/chain", "in-dist/double", "ood")


def load(spec: str) -> tuple[str, dict[int, dict]]:
    """LABEL=DIR:METHOD[@STEP] -> (label, {seed: that run's result row, or its curve point at STEP})."""
    if "=" not in spec or ":" not in spec.split("=", 1)[1]:
        raise SystemExit(f"paired_rows: {spec!r} is not LABEL=DIR:METHOD")
    label, rest = spec.split("=", 1)
    directory, method = rest.rsplit(":", 1)
    method, _, step = method.partition("@")
    if step and not step.isdigit():
        raise SystemExit(f"paired_rows: {spec!r}: the step after @ is not a whole number")
    for path in (Path(directory) / "results.json", Path(directory) / "default" / "results.json"):
        if path.is_file():
            rows = {r["seed"]: r for r in json.loads(path.read_text())["results"] if r["method"] == method}
            if not rows:
                raise SystemExit(f"paired_rows: {path} has no runs of {method!r}")
            return label, (at_step(rows, int(step), path) if step else rows)
    raise SystemExit(f"paired_rows: no results.json in {directory} or {directory}/default")


def at_step(rows: dict[int, dict], step: int, path: Path) -> dict[int, dict]:
    """Each run's learning-curve point at `step`, as a result row with the in-dist split only."""
    points = {seed: next((p for p in r.get("curve") or [] if p["step"] == step), None) for seed, r in rows.items()}
    missing = sorted(seed for seed, p in points.items() if p is None)
    if missing:
        kept = sorted({p["step"] for r in rows.values() for p in r.get("curve") or []})
        raise SystemExit(f"paired_rows: {path}: seed {missing[0]} has no curve point at step {step} "
                         f"(steps evaluated: {', '.join(map(str, kept)) or 'none; run compare with --curve-every'})")
    return {seed: {"in-dist": {"avg@k": p["avg@k"]}} for seed, p in points.items() if p is not None}


def cell(values: list[float], sign: str = "") -> str:
    mean, half = mean_ci([100 * v for v in values])
    text = f"{number(mean, sign + '.1f')} ± {number(half, '.1f')}"
    return f"**{text}**" if sign and abs(mean) > half else text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", help="LABEL=DIR:METHOD")
    parser.add_argument("--against", nargs="*", default=[], help="labels every row is paired against")
    parser.add_argument("--split", default="in-dist", choices=SPLITS, help="the split the paired differences are on")
    args = parser.parse_args(argv)
    rows = dict(load(spec) for spec in args.rows)
    missing = [a for a in args.against if a not in rows]
    if missing:
        raise SystemExit(f"paired_rows: --against {' '.join(missing)}: not among the row labels")
    head = ["row", "seeds", *SPLITS] + [f"− {a} ({args.split})" for a in args.against]
    print("| " + " | ".join(head) + " |\n|---|" + "---:|" * (len(head) - 1))
    for label, runs in rows.items():
        line = [label, str(len(runs))] + [cell([r[s]["avg@k"] for r in runs.values()])
                                           if all(s in r for r in runs.values()) else "–" for s in SPLITS]
        for other in args.against:
            seeds = sorted(set(runs) & set(rows[other]))
            if any(args.split not in r for r in (*runs.values(), *rows[other].values())):
                raise SystemExit(f"paired_rows: --split {args.split}: a curve point (@STEP) has in-dist only")
            line.append("–" if other == label or len(seeds) < 2 else cell(
                [runs[s][args.split]["avg@k"] - rows[other][s][args.split]["avg@k"] for s in seeds], "+"))
        print("| " + " | ".join(line) + " |")


if __name__ == "__main__":
    sys.exit(main())
