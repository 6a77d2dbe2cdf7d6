"""The SRFT paper's token-probability analysis over seeds: how far each method's final model moved the
probability of every demonstration token from the base model, overall and by the base model's
entropy at the token, as mean ± 95% CI over seeds.

The SRFT paper (arXiv 2506.19767, Sec. 3) says SFT makes coarse, global changes to the token
distribution while RL makes fine, selective ones, mainly at high-entropy (uncertain) positions. This
scores the probe set (default: the sandbox test prompts with their worked solutions) under the base
model and under each compared run's final model (`sftrl analyze tokens` per seed), then aggregates:

    python benchmarks/token_shifts.py runs/map/default                       # sft grpo srft luffy grpo-random, seeds 0-4
    python benchmarks/token_shifts.py runs/map/default --methods sft grpo --seeds 0 1 --json shifts.json

RUNS_DIR holds `<method>-seed<seed>/model` (the layout `sftrl compare` writes); each seed's files
(tokens.json / .png / .html) go to RUNS_DIR/token-shifts/seed<seed>/. Prints one table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sftrl.analyze import analyze_tokens, probe_pairs
from sftrl.formatting import number
from sftrl.summary import mean_ci

COLUMNS = [("mean_abs_shift", "mean |Δp|", 1.0), ("share_moved_0.2", "% moved > 0.2", 100.0)]


def cell(values: list[float], scale: float, spec: str) -> str:
    mean, half = mean_ci([v * scale for v in values])
    return f"{number(mean, spec)} ± {number(half, spec)}" if len(values) > 1 else number(mean, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs_dir", type=Path)
    parser.add_argument("--methods", nargs="+", default=["sft", "grpo", "srft", "luffy", "grpo-random"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--before", default="sandbox", help="the base model (default: the sandbox's)")
    parser.add_argument("--probe", default="sandbox", help="dataset with demonstrations to score (default: sandbox)")
    parser.add_argument("--limit", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None, help="also write every number here")
    args = parser.parse_args()

    pairs = probe_pairs(args.probe, args.limit)
    per_seed: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        models = [args.runs_dir / f"{m}-seed{seed}" / "model" for m in args.methods]
        missing = [str(p) for p in models if not (p / "config.json").exists()]
        if missing:
            raise SystemExit(f"token_shifts: no model at {', '.join(missing)}; run `sftrl compare` first")
        results = analyze_tokens(args.before, [str(p) for p in models], args.methods, pairs,
                                 args.runs_dir / "token-shifts" / f"seed{seed}")
        for method in args.methods:
            per_seed[method].append(results[method])
        print(f"seed {seed} done", flush=True)

    bins = [b["entropy"] for b in per_seed[args.methods[0]][0]["by_base_entropy"]]
    shares = [b["share"] for b in per_seed[args.methods[0]][0]["by_base_entropy"]]
    header = ["method"] + [title for _, title, _ in COLUMNS] + [
        f"mean |Δp| at base H {b} nats ({number(100 * s, '.0f')}% of tokens)" for b, s in zip(bins, shares)]
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for method in args.methods:
        rows = per_seed[method]
        cells = [cell([r[key] for r in rows], scale, ".3f" if scale == 1.0 else ".1f") for key, _, scale in COLUMNS]
        cells += [cell([r["by_base_entropy"][i]["mean_abs_shift"] for r in rows], 1.0, ".3f")
                  for i in range(len(bins))]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    print(f"Token probability shifts from {args.before} on {len(pairs)} probe demonstrations "
          f"({per_seed[args.methods[0]][0]['tokens']} tokens), mean ± 95% CI over seeds "
          f"{' '.join(map(str, args.seeds))}:\n")
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps({"seeds": args.seeds, "per_seed": per_seed}, indent=2))


if __name__ == "__main__":
    main()
