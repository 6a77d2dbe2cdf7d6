"""`sftrl compare`, `sftrl report` and `sftrl analyze` on tiny runs: the files they write, the numbers
in them, reuse of finished runs, and the geometry of the model map."""

import json
import math
import random

import pytest

from sftrl import analyze, compare as compare_module, summary
from sftrl.cli import main
from sftrl.report import load_run, run_table, smooth, write_report


@pytest.fixture(scope="module")
def compared(tmp_path_factory, tiny_model_dir):
    out = tmp_path_factory.mktemp("compare")
    kwargs = dict(methods=["sft", "static"], seeds=[0, 1], out_dir=out,
                  budget={"max_steps": 4, "batch_size": 4, "num_generations": 2}, k=2, eval_limit=3, checkpoint_every=2,
                  overrides={"model": str(tiny_model_dir), "max_completion_length": 8, "max_train_examples": 32,
                             "max_eval_examples": 4, "progress": False})
    results = compare_module.compare(**kwargs)["default"]  # one regime: the default
    return out, results, kwargs


def test_compare_trains_every_method_and_seed_and_writes_table_and_plots(compared):
    out, results, _ = compared
    assert [(r["method"], r["seed"]) for r in results] == [("base", 0), ("base", 1), ("sft", 0), ("static", 0),
                                                           ("sft", 1), ("static", 1)]
    for r in results:
        for split in ("in-dist", "ood"):
            assert r[split]["questions"] == 3 and r[split]["k"] == 2 and 0.0 <= r[split]["avg@k"] <= 1.0
    saved = json.loads((out / "results.json").read_text())
    assert saved["budget"]["max_steps"] == 4 and saved["budget"]["sft_steps"] == 2 and len(saved["results"]) == 6
    table = (out / "comparison.md").read_text()
    assert "| base | 2 |" in table and "| sft | 2 |" in table and "| static | 2 |" in table and " ± " in table
    assert "| sft − static |" in table and "95% confidence interval" in table
    # the settings given to every run are named in the first line, so `default` is not read as the sandbox's default
    assert table.startswith("Regime: default. Given for every run: model=") and " max_train_examples=32," in table
    assert saved["overrides"]["max_train_examples"] == 32
    assert {d["a"] + "/" + d["b"] for d in saved["paired_differences"]["in-dist"]} == {
        "base/sft", "base/static", "sft/static"}
    for name in ("final_accuracy.png", "accuracy.png", "report.md", "report.html", "step_types.png", "grad_norm.png"):
        assert (out / name).stat().st_size > 1000, name
    # Checkpoints every 2 steps are kept (the last step is the final model): the map's trajectory.
    assert [p.name for p in sorted((out / "sft-seed0" / "checkpoints").glob("step-*"))] == ["step-000002"]
    static = json.loads((out / "static-seed1" / "metrics.jsonl").read_text().splitlines()[1])
    assert static["step_type"] == "sft"


def test_compare_reuses_finished_runs_and_refuses_other_settings(compared, monkeypatch):
    out, results, kwargs = compared

    def no_training(config):
        raise AssertionError(f"{config.run_dir} was trained again")

    monkeypatch.setattr("sftrl.trainer.train", no_training)
    again = compare_module.compare(**kwargs)["default"]
    assert [r["in-dist"] for r in again] == [r["in-dist"] for r in results]  # samples files reused too
    with pytest.raises(FileExistsError, match="other settings"):
        compare_module.compare(**{**kwargs, "overrides": {**kwargs["overrides"], "learning_rate": 5e-4}})
    with pytest.raises(ValueError, match="unknown method"):
        compare_module.compare(**{**kwargs, "methods": ["sfft"]})


def test_mean_std_and_smooth():
    assert summary.mean_std([0.1, 0.3]) == pytest.approx((0.2, math.sqrt(0.02)))
    assert summary.mean_std([0.5]) == (0.5, 0.0)
    assert smooth([1.0, 3.0, 5.0, 7.0], window=2) == [1.0, 2.0, 4.0, 6.0]


def test_confidence_intervals_and_paired_differences():
    # n = 5: t(0.975, 4) = 2.776; values 1..5 have sd sqrt(2.5).
    mean, half = summary.mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0 and half == pytest.approx(2.776 * math.sqrt(2.5) / math.sqrt(5))
    assert summary.mean_ci([0.4]) == (0.4, 0.0)
    assert summary.mean_ci([0.1] * 40)[1] == pytest.approx(0.0)
    # Paired: b is a plus a seed-independent 0.1 with a little noise; unpaired spreads overlap, pairs do not.
    a = [0.10, 0.50, 0.30, 0.70, 0.20]
    b = [x + 0.1 + e for x, e in zip(a, [0.01, -0.01, 0.0, 0.02, -0.02])]
    results = [{"method": "a", "seed": s, "x": v} for s, v in enumerate(a)]
    results += [{"method": "b", "seed": s, "x": v} for s, v in enumerate(b)]
    results.append({"method": "c", "seed": 0, "x": 0.9})  # one shared seed: no interval, no row
    rows = summary.paired_differences(results, lambda r: r["x"], ["a", "b", "c"])
    assert [(r["a"], r["b"], r["seeds"]) for r in rows] == [("a", "b", 5)]
    assert rows[0]["mean"] == pytest.approx(-0.1) and rows[0]["separated"]
    assert rows[0]["ci95"] == pytest.approx(summary.mean_ci([-0.11, -0.09, -0.1, -0.12, -0.08])[1])
    assert summary.mean_ci(b)[1] > 0.1  # the unpaired interval alone would not separate them


def test_tuning_grid_covers_the_rates_each_method_uses():
    shared = compare_module.budget_overrides(compare_module.DEFAULT_BUDGET)
    grid = {"learning_rate": [1e-5, 1e-4], "sft_learning_rate": [1e-3]}
    assert compare_module.tuning_grid("sft", shared, grid) == [{"sft_learning_rate": 1e-3}]
    assert compare_module.tuning_grid("grpo", shared, grid) == [{"learning_rate": 1e-5}, {"learning_rate": 1e-4}]
    assert compare_module.tuning_grid("sasr", shared, grid) == [
        {"learning_rate": 1e-5, "sft_learning_rate": 1e-3}, {"learning_rate": 1e-4, "sft_learning_rate": 1e-3}]


def test_report_table_and_files_from_runs(compared, tmp_path):
    out, _, _ = compared
    runs = [load_run(out / "sft-seed0"), load_run(out / "static-seed0"), load_run(out / "static-seed1")]
    rows = run_table(runs)
    assert [(r["label"], r["steps"], r["sft_steps"], r["grpo_steps"]) for r in rows] == [
        ("sft", 4, 4, 0), ("static", 4, 2, 2), ("static", 4, 2, 2)]
    assert rows[0]["reward_last"] is None and rows[1]["reward_last"] is not None
    images = write_report(runs, tmp_path / "rep")
    names = {p.name for p in images}
    assert {"grad_norm.png", "reward.png", "entropy.png", "step_types.png"} <= names
    assert "sasr_p_sft.png" not in names  # no SASR run: no empty panel
    page = (tmp_path / "rep" / "report.html").read_text()
    assert page.count("data:image/png;base64,") == len(images) and "<td>static</td>" in page
    md = (tmp_path / "rep" / "report.md").read_text()
    assert all(f"({p.name})" in md for p in images)

    assert main(["report", str(out / "sft-seed0"), "--label", "a", "--label", "b"]) == 2  # one label per run
    assert main(["report", str(tmp_path)]) == 2  # not a run directory


def test_fifteen_series_are_each_distinguishable_and_the_legend_covers_no_data(tmp_path):
    """A full comparison draws 13 methods (and up to 15 series): tab10 alone repeated its colours
    (GRPO and SASR both orange)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import to_hex

    from sftrl.report import Run, group_runs, panel_figure

    runs = [Run(tmp_path / f"m{i}", {"method": f"method-{i}", "seed": 0},
                [{"step": s, "entropy": 0.1 + 0.01 * i + 0.001 * s} for s in range(1, 21)], label=f"method-{i}")
            for i in range(15)]
    fig, ax = panel_figure(group_runs(runs), ["entropy"], "Policy entropy", "nats", window=1)
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert len(lines) == 15
    colours = [to_hex(line.get_color()) for line in lines]
    assert len(set(colours)) == 15  # every series its own colour
    assert len({(c, line.get_linestyle()) for c, line in zip(colours, lines)}) == 15
    assert len({line.get_linestyle() for line in lines}) >= 3  # and the dashes vary, for look-alike colours
    fig.canvas.draw()
    legend, axes = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes.x1 - 1e-6  # beside the axes, over none of the curves
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [f"method-{i}" for i in range(15)]
    plt.close(fig)


def test_probability_shift_stats_on_hand_made_probabilities():
    before = [[("a", 0.5), ("b", 0.9)], [("a", 0.5)]]
    after = [[("a", 0.8), ("b", 0.9)], [("a", 0.1)]]
    stats = analyze.probability_shift_stats(before, after)
    assert stats["tokens"] == 3
    assert stats["mean_abs_shift"] == pytest.approx((0.3 + 0.0 + 0.4) / 3)
    assert stats["share_up"] == pytest.approx(1 / 3) and stats["share_down"] == pytest.approx(1 / 3)
    assert stats["share_moved_0.2"] == pytest.approx(2 / 3)
    assert stats["rose_most"][0]["token"] == "b" and stats["fell_most"][0]["token"] == "a"
    assert stats["fell_most"][0]["mean_shift"] == pytest.approx(-0.05)


def test_map_geometry_places_points_at_their_distances():
    vertices = analyze.reference_triangle(3.0, 4.0, 5.0)  # a right angle at the first reference
    assert vertices == [(0.0, 0.0), (3.0, 0.0), (pytest.approx(0.0), pytest.approx(4.0))]
    rng = random.Random(0)
    for _ in range(5):
        x, y = rng.uniform(-2, 4), rng.uniform(-2, 5)
        distances = [math.dist((x, y), v) for v in vertices]
        assert analyze.place(vertices, distances) == (pytest.approx(x), pytest.approx(y))
    assert analyze.place(vertices, [0.0, 3.0, 4.0]) == (pytest.approx(0.0), pytest.approx(0.0))  # = reference 1
    with pytest.raises(ValueError, match="on a line"):
        analyze.reference_triangle(1.0, 2.0, 1.0)
    with pytest.raises(ValueError, match="identically"):
        analyze.reference_triangle(0.0, 1.0, 1.0)


@pytest.mark.float_sensitive
def test_analyze_commands_write_their_files(compared, tiny_model_dir, tmp_path, capsys):
    out, _, _ = compared
    assert main(["analyze", "tokens", "--before", str(tiny_model_dir), "--after", str(out / "sft-seed0" / "model"),
                 str(out / "static-seed0" / "model"), "--limit", "6", "-o", str(tmp_path)]) == 0
    tokens = json.loads((tmp_path / "tokens.json").read_text())
    assert set(tokens["models"]) == {"sft-seed0", "static-seed0"}
    assert tokens["models"]["sft-seed0"]["tokens"] > 6 * 10 and tokens["models"]["sft-seed0"]["mean_abs_shift"] > 0
    # The shifts split by the base model's entropy at each token: every token in exactly one bin, and the
    # bins' weighted mean |Δp| is the overall mean.
    sft = tokens["models"]["sft-seed0"]
    bins = sft["by_base_entropy"]
    assert [b["entropy"] for b in bins] == ["0-0.1", "0.1-1", ">=1"]
    assert sum(b["tokens"] for b in bins) == sft["tokens"] and sum(b["share"] for b in bins) == pytest.approx(1.0)
    assert sum(b["tokens"] * b["mean_abs_shift"] for b in bins) / sft["tokens"] == pytest.approx(sft["mean_abs_shift"])
    assert (tmp_path / "tokens.png").stat().st_size > 1000 and "<span" in (tmp_path / "tokens.html").read_text()
    capsys.readouterr()  # the tokens command's lines start with the same labels as the map's

    refs = [str(tiny_model_dir), str(out / "sft-seed0" / "model"), str(out / "static-seed1" / "model")]
    assert main(["analyze", "map", "--references", *refs, "--runs", str(out / "static-seed0"), "--limit", "6",
                 "-o", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "map.json").read_text())
    points = result["runs"][0]["points"]
    assert [p["step"] for p in points] == [0, 2, 4]  # start model, checkpoint, final model
    assert points[0]["distances"][0] == 0.0 and points[0]["xy"] == pytest.approx([0.0, 0.0], abs=1e-9)
    assert (tmp_path / "map.png").stat().st_size > 1000
    # The printed trajectory is map.json's, to its 3 printed decimals (parsed, not matched as text: the
    # start model sits at 0 up to rounding of either sign, which other CPUs print differently).
    [line] = [l for l in capsys.readouterr().out.splitlines() if l.startswith("static-seed0: ")]
    printed = [step_xy.split(":") for step_xy in line.removeprefix("static-seed0: ").split(" -> ")]
    assert [int(step) for step, _ in printed] == [p["step"] for p in points]
    for (_, xy), point in zip(printed, points):
        assert [float(v) for v in xy.strip("()").split(",")] == pytest.approx(point["xy"], abs=5e-4 + 1e-9)
    assert "-0.000" not in line


def test_analyze_map_reports_bad_references_and_runs_as_errors(compared, tiny_model_dir, tmp_path, capsys):
    out, _, _ = compared
    tiny, sft = str(tiny_model_dir), str(out / "sft-seed0" / "model")
    assert main(["analyze", "map", "--references", tiny, tiny, sft, "--runs", str(out / "static-seed0"),
                 "--limit", "4", "-o", str(tmp_path)]) == 2
    assert "score the probes identically" in capsys.readouterr().err
    assert main(["analyze", "map", "--references", tiny, sft, str(out / "static-seed1" / "model"),
                 "--runs", str(tmp_path / "no-run"), "--limit", "4", "-o", str(tmp_path)]) == 2
    assert "no checkpoints or final model" in capsys.readouterr().err
    assert not (tmp_path / "map.png").exists()


def test_running_status_names_each_running_runs_step(tmp_path):
    run = tmp_path / "sft-seed0"
    run.mkdir()
    task = {"label": ("sft", 0), "config": {"output_dir": str(run), "max_steps": 200}}
    base = {"label": ("base", 1), "config": None}
    tuning = {"config": {"method": "grpo", "seed": 1000, "output_dir": str(tmp_path / "t"), "max_steps": 50}}
    assert compare_module.last_step(run) is None
    line = compare_module.running_status([task, base, tuning], 3, 45, 3725.2)
    assert line == "  ... 3/45 done, 1:02:05 elapsed; running: sft seed 0 starting, base seed 1 evaluating, grpo seed 1000 starting"
    (run / "metrics.jsonl").write_text('{"step": 0, "eval/accuracy": 0.1}\n' + '{"step": 119, "loss": 1.0}\n' * 400
                                       + '{"step": 120, "loss": 0.5}\n{"step": 121, "lo')  # a line being written
    assert compare_module.last_step(run) == 120
    assert "sft seed 0 step 120/200" in compare_module.running_status([task], 0, 1, 1)
    (run / "metrics.jsonl").write_text('{"step": 200, "eval/accuracy": 0.6}\n')
    assert "sft seed 0 step 200/200 (evaluating)" in compare_module.running_status([task], 0, 1, 1)


def test_compare_tunes_on_the_validation_split_in_parallel_processes(tmp_path, tiny_model_dir, monkeypatch, capsys):
    import yaml

    monkeypatch.setattr(compare_module, "HEARTBEAT_S", 0.2)  # the status line of running runs, at once
    grid = {"learning_rate": [1e-5, 1e-3], "sft_learning_rate": [1e-4]}
    results = compare_module.compare(
        methods=["grpo"], seeds=[0, 1], out_dir=tmp_path, budget={"max_steps": 2, "batch_size": 2, "num_generations": 2},
        k=1, eval_limit=2, jobs=2, tune_grid=grid,
        overrides={"model": str(tiny_model_dir), "max_completion_length": 6, "max_train_examples": 8,
                   "max_eval_examples": 3})["default"]
    saved = json.loads((tmp_path / "results.json").read_text())
    scores = saved["tuning"]["grpo"]["scores"]
    assert [s["learning_rate"] for s in scores] == [1e-5, 1e-3]
    # Scored by the table's own metric (sampled avg@k at the eval temperature), greedy kept beside it.
    assert all(0 <= s["val_sampled"] <= 1 and 0 <= s["val_greedy"] <= 1 for s in scores)
    best = max(s["val_sampled"] for s in scores)
    first_best = next(s["learning_rate"] for s in scores if s["val_sampled"] == best)  # ties: the lower rate
    assert saved["tuning"]["grpo"]["chosen"] == {"learning_rate": first_best}
    for point in ("lr1e-05", "lr0.001"):
        tuned = yaml.safe_load((tmp_path / "tune" / f"grpo-{point}" / "config.yaml").read_text())
        assert tuned["eval_data"] == "sandbox:val" and tuned["seed"] == compare_module.TUNE_SEED
        assert tuned["eval_samples"] == 1 and tuned["eval_temperature"] == 0.6
        assert "accuracy after training" in (tmp_path / "logs" / f"tune-grpo-{point}.log").read_text()  # its own log
    for seed in (0, 1):
        run = yaml.safe_load((tmp_path / f"grpo-seed{seed}" / "config.yaml").read_text())
        assert run["learning_rate"] == first_best and run["seed"] == seed
    assert [(r["method"], r["seed"]) for r in results] == [("base", 0), ("base", 1), ("grpo", 0), ("grpo", 1)]
    assert "Learning rates chosen on sandbox:val" in (tmp_path / "comparison.md").read_text()
    status = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ... ")]
    assert status and all(" done, 0:00:" in line for line in status)
    assert all(line.count(" seed ") <= 2 for line in status)  # two jobs: never a queued run listed as running
    assert any("grpo seed 1000 " in line for line in status) and any("grpo seed 0 " in line for line in status)


def test_a_phase_only_one_method_reads_is_set_for_that_method_alone(tmp_path):
    """Adding UFT to a comparison must not change the configs of the other methods' finished runs."""
    from sftrl.config import Config

    shared = compare_module.budget_overrides(compare_module.DEFAULT_BUDGET)
    uft = compare_module.run_config("uft", 0, tmp_path / "u", shared, 10)
    sft = compare_module.run_config("sft", 0, tmp_path / "s", shared, 10)
    assert uft.uft_hint_steps == round(0.6 * compare_module.DEFAULT_BUDGET["max_steps"])
    assert sft.uft_hint_steps == Config().uft_hint_steps
    assert compare_module.run_config("uft", 0, tmp_path / "u", {**shared, "uft_hint_steps": 7}, 10).uft_hint_steps == 7


def test_compare_help_names_every_compared_method():
    from sftrl.cli import build_parser

    compare_parser = build_parser()._subparsers._group_actions[0].choices["compare"]
    help_text = next(a.help for a in compare_parser._actions if "--methods" in a.option_strings)
    assert help_text.split("(")[-1].rstrip(")").split() == compare_module.METHOD_ORDER


def test_shift_by_entropy_bins_tokens_by_the_base_models_entropy():
    before = [[("a", 0.9), ("b", 0.5), ("c", 0.2)], [("d", 0.1)]]
    after = [[("a", 0.95), ("b", 0.1), ("c", 0.9)], [("d", 0.1)]]
    entropy = [[0.05, 0.5, 2.0], [0.1]]  # 0.1 sits in the middle bin: bins are [lo, hi)
    bins = analyze.shift_by_entropy(before, after, entropy)
    assert [b["tokens"] for b in bins] == [1, 2, 1]
    assert [b["mean_abs_shift"] for b in bins] == pytest.approx([0.05, 0.2, 0.7])
    assert [b["share_moved_0.2"] for b in bins] == [0.0, 0.5, 1.0]
