"""The benchmark scripts that cannot run in full here: benchmarks/gpu_check.sh (syntax, and its dry run:
each check's CPU equivalent, tiny), and the pure parts of compare_speed.py and grpo_step.py (commands,
ratios, tables). Nothing here is timed."""

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU_CHECK = ROOT / "benchmarks" / "gpu_check.sh"


def bench_module(name):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------- gpu_check.sh
def test_gpu_check_is_valid_bash():
    done = subprocess.run(["bash", "-n", str(GPU_CHECK)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_check_refuses_an_unknown_argument():
    done = subprocess.run(["bash", str(GPU_CHECK), "--gpus", "2"], capture_output=True, text=True)
    assert done.returncode == 2 and "unknown argument --gpus" in done.stderr


def test_gpu_check_dry_run_passes_every_check_on_cpu(tmp_path):
    env = {**os.environ, "DRY_RUN": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(GPU_CHECK), "--out", str(tmp_path), "--python", sys.executable],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    lines = done.stdout.splitlines()
    assert done.returncode == 0, done.stdout + done.stderr
    status = {m.group(2): m.group(1) for m in (re.match(r"(PASS|FAIL|SKIP)\s+(\S+)\s", line) for line in lines) if m}
    assert status == {name: "PASS" for name in ("env", "decode", "train", "bf16", "fsdp", "vllm", "bench", "bench-vllm")}
    assert re.search(r"gpu_check: 8 PASS, 0 FAIL, 0 SKIP in \d+ s \(dry run", lines[-1]), lines[-1]
    fsdp = next(line for line in lines if line.startswith("PASS  fsdp"))
    assert "parameters DTensor" in fsdp  # FSDP2 really sharded, through tests/fsdp_on_cpu.py
    assert (tmp_path / "logs" / "decode.log").exists()


# ---------------------------------------------------------------------------------------------- compare_speed.py
def rows(*entries):
    return {"results": [{"method": m, "seed": s, "in-dist": {"avg@k": a}, "ood": {"avg@k": o}} for m, s, a, o in entries]}


def test_compare_speed_builds_the_same_compare_for_both_sides():
    speed = bench_module("compare_speed")
    args = speed.parse_args(["527ff28", "--rounds", "2", "--jobs", "2", "--", "mixed_precision=bf16"])
    assert (args.methods, args.seeds, args.max_steps, args.k, args.eval_limit) == (["sft", "grpo", "luffy"], [0, 1], 20, 4, 200)
    assert args.overrides == ["mixed_precision=bf16"] and not args.both
    cmd = speed.compare_command("py", "/out", args, args.overrides)
    assert cmd[:4] == ["py", "-m", "sftrl.cli", "compare"]
    assert cmd[cmd.index("--methods") + 1:cmd.index("--seeds")] == ["sft", "grpo", "luffy"]
    assert cmd[cmd.index("--max-steps") + 1] == "20" and cmd[cmd.index("--jobs") + 1] == "2"
    assert cmd[-1] == "mixed_precision=bf16" and "--batch-size" not in cmd
    smoke = speed.parse_args(["HEAD", "--smoke"])
    assert (smoke.rounds, smoke.methods, smoke.seeds, smoke.max_steps) == (1, ["sft", "grpo"], [0], 2)
    assert speed.compare_command("py", "/out", smoke, smoke.budget_overrides)[-1] == "sft_batch_size=4"
    assert [speed.side_order(i)[0] for i in range(4)] == ["this", "ref", "this", "ref"]
    with pytest.raises(SystemExit):
        speed.parse_args(["HEAD", "--rounds", "0"])


def test_compare_speed_accuracies_ratio_and_table():
    speed = bench_module("compare_speed")
    this = speed.accuracies(rows(("base", 0, 0.3, 0.1), ("sft", 0, 0.8, 0.2), ("sft", 1, 0.6, 0.4)))
    assert this["sft"] == pytest.approx({"in-dist": 0.7, "ood": 0.3}) and this["base"]["in-dist"] == pytest.approx(0.3)
    ref = speed.accuracies(rows(("base", 0, 0.3, 0.1), ("sft", 0, 0.8, 0.2), ("sft", 1, 0.6, 0.5)))
    rounds = [{"first": "this", "this": {"seconds": 100.0, "accuracy": this}, "ref": {"seconds": 250.0, "accuracy": ref}},
              {"first": "ref", "this": {"seconds": 150.0, "accuracy": this}, "ref": {"seconds": 250.0, "accuracy": ref}}]
    pooled, per_round = speed.speedup(rounds)
    assert pooled == pytest.approx(2.0) and per_round == pytest.approx([2.5, 5 / 3])
    table = speed.render(rounds, {"this": "abc1234", "ref": "527ff28"}, "Test CPU 9000", "3 methods")
    assert "| 1 | this | 100.0 | 250.0 | 2.50x |" in table and "| 2 | ref | 150.0 | 250.0 | 1.67x |" in table
    assert "speed-up (REF seconds / this checkout's, pooled over 2 rounds): 2.00x; per round 2.50, 1.67" in table
    assert "| sft | 70.0% | 70.0% | 30.0% | 35.0% |" in table and "CPU: Test CPU 9000" in table
    rounds[1]["this"]["accuracy"] = {"sft": {"in-dist": 0.5, "ood": 0.3}}
    assert "round 2's this accuracies differ from round 1's" in speed.render(rounds, {"this": "a", "ref": "b"}, "x", "y")


# ---------------------------------------------------------------------------------------------- grpo_step.py
def test_grpo_step_plans_both_ratios_and_says_why_one_is_skipped():
    step = bench_module("grpo_step")
    assert step.parse_args([]).settings == "both"
    assert step.passes("both", "cpu", True, False, "X") == [("identical", False, None), ("best", True, None)]
    assert step.passes("both", "cpu", False, False, "AMD EPYC") == [("identical", False, None),
                                                                  ("best", True, "bf16 unsupported on AMD EPYC")]
    assert step.passes("best", "cpu", False, True, "X") == [("best", True, None)]  # --force-bf16
    assert step.passes("identical", "cpu", True, False, "X") == [("identical", False, None)]
    gpu = step.passes("both", "cuda", False, False, "X")
    assert gpu[0] == ("identical", False, None) and gpu[1][0] == "best" and "already runs" in gpu[1][2]
    assert step.pass_label("identical", "no", True) == "identical work (float32, fixed length)"
    assert step.pass_label("best", "bf16", True).startswith("best settings (each engine in bf16")
    assert step.ratio_line("best settings", None, "bf16 unsupported on AMD EPYC") == \
        "best settings: skipped, bf16 unsupported on AMD EPYC"

    def engine(times):
        return {"timed": [{"step_time": t} for t in times], "summary": {"step": sum(times) / len(times)}}

    rounds = [{"sftrl": engine([1.0, 1.0]), "trl": engine([2.0, 2.0])}, {"sftrl": engine([1.0, 3.0]), "trl": engine([3.0, 3.0])}]
    assert step.ratio_line("identical work", rounds) == "identical work: sftrl/TRL = 1.67x (per round 2.00, 1.50)"


def test_paired_rows_pairs_runs_of_two_compares_by_seed(tmp_path, capsys):
    """Rows from two compare outputs, paired by seed: a seed only one side has is left out of the pair."""
    paired_rows = bench_module("paired_rows")

    def write(directory, method, values):
        rows = [{"method": method, "seed": seed, **{s: {"avg@k": v + d} for s, d in
                 (("in-dist", 0), ("in-dist/chain", 0.1), ("in-dist/double", -0.1), ("ood", -0.2))}}
                for seed, v in values.items()]
        (tmp_path / directory).mkdir()
        (tmp_path / directory / "results.json").write_text(json.dumps({"results": rows}))

    write("a", "sft", {0: 0.50, 1: 0.60, 2: 0.70})
    write("b", "uft", {0: 0.40, 1: 0.51, 2: 0.59, 3: 0.90})
    paired_rows.main([f"sft={tmp_path / 'a'}:sft", f"questa={tmp_path / 'b'}:uft", "--against", "sft"])
    lines = capsys.readouterr().out.splitlines()
    questa = next(line for line in lines if line.startswith("| questa |")).split(" | ")
    assert questa[1] == "4" and questa[2].startswith("60.0 ± ")  # all four of its own seeds
    assert questa[-1].rstrip(" |") == "**-10.0 ± 2.5**"  # seeds 0-2 only: -10, -9, -11 points
    # the differences on another split: questa's `double` is 0.1 below its in-dist, sft's too, so the same -10.0;
    # with a run whose `double` alone moves, only the --split in-dist/double column sees it
    rows = json.loads((tmp_path / "b" / "results.json").read_text())
    for row in rows["results"]:
        row["in-dist/double"]["avg@k"] += 0.05
    (tmp_path / "b" / "results.json").write_text(json.dumps(rows))
    paired_rows.main([f"sft={tmp_path / 'a'}:sft", f"questa={tmp_path / 'b'}:uft", "--against", "sft"])
    assert capsys.readouterr().out.splitlines()[-1].split(" | ")[-1].rstrip(" |") == "**-10.0 ± 2.5**"
    paired_rows.main([f"sft={tmp_path / 'a'}:sft", f"questa={tmp_path / 'b'}:uft", "--against", "sft",
                      "--split", "in-dist/double"])
    lines = capsys.readouterr().out.splitlines()
    assert "− sft (in-dist/double)" in lines[0]
    assert lines[-1].split(" | ")[-1].rstrip(" |") == "**-5.0 ± 2.5**"
    # a run's learning-curve point (@STEP) against its final result, paired by seed
    rows = json.loads((tmp_path / "a" / "results.json").read_text())
    for row, early in zip(rows["results"], (0.30, 0.42, 0.47)):
        row["curve"] = [{"step": 0, "avg@k": 0.1}, {"step": 50, "avg@k": early}]
    (tmp_path / "a" / "results.json").write_text(json.dumps(rows))
    paired_rows.main([f"sft@50={tmp_path / 'a'}:sft@50", f"sft={tmp_path / 'a'}:sft", "--against", "sft@50"])
    lines = capsys.readouterr().out.splitlines()
    early = lines[2].split(" | ")
    assert early[2].startswith("39.7 ± ") and early[3:6] == ["–", "–", "–"]  # in-dist only
    assert lines[3].split(" | ")[-1].rstrip(" |") == "**+20.3 ± 6.3**"  # +20, +18, +23 points
    with pytest.raises(SystemExit, match="no curve point at step 60 .steps evaluated: 0, 50."):
        paired_rows.main([f"sft@60={tmp_path / 'a'}:sft@60"])
    with pytest.raises(SystemExit, match="has in-dist only"):
        paired_rows.main([f"sft@50={tmp_path / 'a'}:sft@50", f"sft={tmp_path / 'a'}:sft", "--against", "sft@50",
                          "--split", "ood"])
    with pytest.raises(SystemExit, match="not a whole number"):
        paired_rows.main([f"sft={tmp_path / 'a'}:sft@last"])
    with pytest.raises(SystemExit, match="no runs of 'grpo'"):
        paired_rows.main([f"grpo={tmp_path / 'a'}:grpo"])
    with pytest.raises(SystemExit, match="not LABEL=DIR:METHOD"):
        paired_rows.main(["sft"])


def test_regime_map_redraws_saved_regimes_and_adds_a_results_json(tmp_path, capsys):
    """A map from compare's saved files alone: a regimes.json's cells as saved, a results.json's regime
    computed from its per-seed rows and named by the settings given to every run; bad inputs refused."""
    from sftrl.summary import map_table, regime_cells

    regime_map = bench_module("regime_map")

    def rows(values):
        return [{"method": m, "seed": s, "in-dist": {"avg@k": v + 0.01 * s}} for m, v in values.items() for s in range(5)]

    old = rows({"base": 0.30, "grpo-random": 0.20, "sft": 0.70, "grpo": 0.60})
    cells = regime_cells([("default", old)])
    (tmp_path / "regimes.json").write_text(json.dumps({"k": 4, "seeds": [0, 1, 2, 3, 4], "cells": cells}))
    # 200 steps: grpo best; sft 0.9 below it with seed-to-seed noise, so not separated from it
    new = rows({"base": 0.30, "grpo-random": 0.10, "grpo": 0.80})
    new += [{"method": "sft", "seed": s, "in-dist": {"avg@k": 0.795 + 0.01 * s + (0.02 if s % 2 else -0.02)}}
            for s in range(5)]
    (tmp_path / "results.json").write_text(json.dumps(
        {"regime": "default", "overrides": {}, "budget": {"max_steps": 200, "batch_size": 16, "sft_steps": 100},
         "k": 4, "seeds": [0, 1, 2, 3, 4], "results": new}))
    regime_map.main([str(tmp_path / "regimes.json"), str(tmp_path / "results.json"),
                     "--md", str(tmp_path / "map.md"), "--png", str(tmp_path / "map.png")])
    lines = {line.split(" | ")[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines["| method"] == "| method | default | max_steps=200 |"
    assert lines["| sft"] == "| sft | **72.0 ± 2.0** | *81.1 ± 3.4* |"
    assert lines["| grpo"] == "| grpo | 62.0 ± 2.0 | **82.0 ± 2.0** |"
    assert "| grpo-random | 22.0 ± 2.0 | 12.0 ± 2.0 |" in (tmp_path / "map.md").read_text()
    assert map_table(cells).splitlines()[3] == "| sft | **72.0 ± 2.0** |"  # the saved regime as saved
    assert (tmp_path / "map.png").stat().st_size > 1000
    (tmp_path / "other.json").write_text(json.dumps({"regime": "other", "k": 8, "results": new}))
    with pytest.raises(SystemExit, match="different samples per prompt"):
        regime_map.main([str(tmp_path / "regimes.json"), str(tmp_path / "other.json")])
    with pytest.raises(SystemExit, match="already given by an earlier file"):
        regime_map.main([str(tmp_path / "regimes.json"), str(tmp_path / "regimes.json")])
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit, match="neither a regimes.json"):
        regime_map.main([str(tmp_path / "bad.json")])
