"""Draw the regime map from saved comparisons, without their runs.

`sftrl compare --grid` draws the map from the runs it trained. A run directory is large and does not
outlive the machine it was trained on; a comparison's `results.json` (every run's evaluation, per seed)
and the map's `regimes.json` (per regime and method: mean, interval, marks) are small and can be kept
in docs/results/. This script draws the map, with its markdown table, from any mix of them, in the
order given:
  - a `regimes.json` (written by `compare --grid`) contributes all its regimes, marks as computed then;
  - a `results.json` (one regime of `compare`) contributes one regime, its cells computed here from the
    per-seed results (best, not separated from the best, gain not above the control); it is named by its
    regime, or, for a comparison run without --grid, by the settings given to every run
    (`max_steps=200` for `compare ... max_steps=200`: the budget values that differ from compare's
    default budget, then the other settings given).
Every input must use the same k (samples per prompt).

    python benchmarks/regime_map.py docs/results/regimes-50-steps.json docs/results/map-max-steps-200.json \
        --png docs/images/regime-map.png --md docs/results/regime-map.md
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from sftrl.compare_plan import DEFAULT_BUDGET
from sftrl.summary import draw_map, map_table, regime_cells


def regime_name(saved: dict[str, Any]) -> str:
    """A results.json's column name: its regime, or, when that is `default`, the settings given to every
    run: the budget values that differ from compare's default budget (`--max-steps 200` or `max_steps=200`
    goes into the budget) and the other settings given."""
    name, overrides = saved.get("regime", "default"), dict(saved.get("overrides") or {})
    if name != "default":
        return name
    budget = saved.get("budget") or {}
    given = {key: budget[key] for key, value in DEFAULT_BUDGET.items() if key in budget and budget[key] != value}
    given.update(overrides)
    return " ".join(f"{key}={value}" for key, value in given.items()) or name


def load(paths: list[Path]) -> tuple[dict[str, dict[str, dict[str, Any]]], int, list[list[int]]]:
    """All inputs' cells by regime name (in order), their common k, and each input's seeds."""
    cells: dict[str, dict[str, dict[str, Any]]] = {}
    ks, seeds = set(), []
    for path in paths:
        try:
            saved = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"regime_map: {path}: cannot read it as JSON ({e})")
        if "cells" in saved:
            found = dict(saved["cells"])
        elif "results" in saved:
            found = {regime_name(saved): regime_cells([("one", saved["results"])])["one"]}
        else:
            raise SystemExit(f"regime_map: {path}: neither a regimes.json (cells) nor a results.json (results)")
        for name in found:
            if name in cells:
                raise SystemExit(f"regime_map: {path}: regime {name!r} was already given by an earlier file")
        cells.update(found)
        ks.add(saved.get("k"))
        seeds.append(saved.get("seeds", []))
    if len(ks) != 1:
        raise SystemExit(f"regime_map: the inputs use different samples per prompt (k = {sorted(map(str, ks))})")
    return cells, ks.pop(), seeds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="regimes.json and results.json files, in column order")
    parser.add_argument("--png", type=Path, help="write the heatmap here")
    parser.add_argument("--md", type=Path, help="write the markdown table here")
    parser.add_argument("--json", type=Path, help="write the combined cells here, as compare's regimes.json")
    args = parser.parse_args(argv)
    cells, k, seeds = load(args.inputs)
    table = map_table(cells)
    common = seeds[0] if all(s == seeds[0] for s in seeds) else None  # the seeds, where every input has the same
    seed_text = ", ".join(map(str, common)) if common is not None else "as each input gives"
    if args.md:
        args.md.write_text(
            f"Which method wins where: in-distribution avg@{k} (%), mean ± 95% CI over seeds {seed_text}; each "
            f"regime changes one setting from the default. **Bold**: the best in its regime; *italic*: not separated "
            f"from the best (paired 95% interval of the difference includes zero); †: gain not above the "
            f"random-reward control's. Drawn by benchmarks/regime_map.py from "
            f"{', '.join(str(p) for p in args.inputs)}.\n\n{table}\n")
    if args.png:
        draw_map(cells, k, args.png)
    if args.json:
        args.json.write_text(json.dumps({"k": k, "seeds": common, "cells": cells, "regimes": list(cells)}, indent=2))
    print(table)
    for path in (args.md, args.png, args.json):
        if path:
            print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
