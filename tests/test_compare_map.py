"""Issue 20's machinery: what a step costs in token passes (against a hand count per step kind), budgets
in tokens and sequences that stop every method at the same count, the random-reward control's coin,
`compare --grid` regimes and their map, sampled accuracy as the headline, and bad values of every new
option (one line)."""

import json
import shutil

import pytest

from sftrl import compare as compare_module
from sftrl.config import ConfigError
from sftrl.rewards.control import coin_reward, coin_value
from sftrl.summary import comparison_table, regime_cells
from sftrl.trainer import Trainer
from sftrl.validate import load_config

from conftest import make_config
from test_bad_input import fails_cleanly


def small_config(tmp_path, model_dir, **overrides):
    """conftest's small run, 1 step, 3 rollouts of at most 10 tokens, 6 demonstrations per SFT step."""
    return make_config(tmp_path, model_dir, **{"max_steps": 1, "sft_batch_size": 6, "num_generations": 3,
                                               "max_completion_length": 10, **overrides})


def recording_trainer(config):
    """A Trainer whose generate / sft_backward / policy_backward calls are recorded, for a hand count."""
    trainer = Trainer(config)
    seen = {"generated": [], "sft": [], "rollouts": []}
    generate, sft_backward, policy_backward = trainer.generate, trainer.sft_backward, trainer.policy_backward

    def recorded_generate(examples, num_generations, **kwargs):
        out = generate(examples, num_generations, **kwargs)
        seen["generated"].extend(out.completion_ids)
        return out

    def recorded_sft(examples, *args, **kwargs):
        seen["sft"].extend(examples)
        return sft_backward(examples, *args, **kwargs)

    def recorded_policy(rollouts, *args, **kwargs):
        seen["rollouts"].append(rollouts)
        return policy_backward(rollouts, *args, **kwargs)

    trainer.generate, trainer.sft_backward, trainer.policy_backward = recorded_generate, recorded_sft, recorded_policy
    return trainer, seen


def hand_count(trainer, seen):
    """(token passes, sequences) of what was recorded: every generated token, and for each sequence
    through a training forward its prompt tokens (rendered as the trainer renders them) + its targets."""
    generated = sum(len(ids) for ids in seen["generated"])
    sft = [(len(trainer.prompt_ids(e)), len(trainer.demonstration_ids(e)[0])) for e in seen["sft"]]
    rows = [(len(p), len(t)) for r in seen["rollouts"] for p, t in zip(r.prompt_ids, r.target_ids)]
    return generated + sum(p + t for p, t in sft + rows), len(sft) + len(rows)


def logged_steps(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()
            if '"step_type"' in line]


@pytest.mark.parametrize("method,expect", [("sft", "sft"), ("grpo", "grpo"), ("luffy", "grpo"),
                                           ("static", "sft+grpo")])
def test_token_passes_of_each_step_kind_match_a_hand_count(tmp_path, tiny_model_dir, method, expect):
    overrides = {"static_mode": "weighted"} if method == "static" else {}
    trainer, seen = recording_trainer(small_config(tmp_path, tiny_model_dir, method=method, **overrides))
    trainer.train()
    step = logged_steps(tmp_path / "run")[0]
    assert step["step_type"] == expect
    tokens, sequences = hand_count(trainer, seen)
    assert step["token_passes"] == tokens and step["train_sequences"] == sequences
    assert step["total_token_passes"] == tokens and step["total_train_sequences"] == sequences
    # What the kind of step is made of: SFT rows only, G rollouts per prompt, or G-1 + the demonstration.
    expected_rows = {"sft": 6, "grpo": 4 * 3, "luffy": 4 * 3, "static": 4 + 4 * 3}[method]
    assert sequences == expected_rows
    assert (len(seen["generated"]) > 0) == (method != "sft")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["total_token_passes"] == tokens and summary["steps"] == 1


@pytest.mark.parametrize("method", ["sft", "grpo", "srft"])
def test_token_budget_stops_every_method_within_one_step_of_the_same_count(tmp_path, tiny_model_dir, method):
    budget = 1500
    config = small_config(tmp_path, tiny_model_dir, method=method, max_steps=200, max_token_passes=budget)
    Trainer(config).train()
    steps = logged_steps(tmp_path / "run")
    total = steps[-1]["total_token_passes"]
    # The first step to reach the budget is the last: at or past it, by less than that step's own cost.
    assert budget <= total < budget + steps[-1]["token_passes"]
    assert steps[-2]["total_token_passes"] < budget
    assert total == sum(s["token_passes"] for s in steps) and len(steps) < 200


def test_sequence_budget_and_resume_keep_counting(tmp_path, tiny_model_dir):
    common = dict(method="sft", max_steps=50, max_train_sequences=20, save_every=2)
    run = tmp_path / "run"
    Trainer(small_config(tmp_path, tiny_model_dir, **common)).train()
    steps = logged_steps(run)
    assert [s["total_train_sequences"] for s in steps] == [6, 12, 18, 24]  # 6 demonstrations a step
    # A run stopped right after its step-2 checkpoint counts on from there when resumed, not from zero.
    part = tmp_path / "part"
    shutil.copytree(run / "checkpoints" / "step-000002", part / "checkpoints" / "step-000002")
    shutil.copy(run / "config.yaml", part / "config.yaml")
    (part / "metrics.jsonl").write_text("".join(json.dumps(s) + "\n" for s in steps[:2]))
    Trainer(small_config(tmp_path, tiny_model_dir, output_dir=str(part), resume=True, **common)).train()
    assert [s["total_train_sequences"] for s in logged_steps(part)] == [6, 12, 18, 24]
    assert json.loads((part / "summary.json").read_text())["total_train_sequences"] == 24


def test_budget_limits_give_every_method_the_same_budget():
    shared = compare_module.budget_overrides(compare_module.DEFAULT_BUDGET)
    assert compare_module.budget_limits("steps", shared, None) == {}
    tokens = compare_module.budget_limits("tokens", shared, None)
    assert tokens == {"max_steps": 200, "max_token_passes": compare_module.TOKENS_PER_SEQUENCE * 50 * 128}
    assert compare_module.budget_limits("sequences", shared, 999) == {"max_steps": 200, "max_train_sequences": 999}
    configs = [compare_module.run_config(m, 0, __import__("pathlib").Path("/tmp/x"), {**shared, **tokens}, 0)
               for m in ("sft", "grpo", "grpo-random", "luffy", "sasr")]
    assert {c.max_token_passes for c in configs} == {tokens["max_token_passes"]}


def test_coin_reward_ignores_the_completion_and_pays_at_its_rate():
    coin = coin_reward(0.3, seed=5)
    prompts = [f"prompt {i}" for i in range(2000)]

    class State:
        global_step = 7

    a = coin(prompts, ["the right answer"] * 2000, trainer_state=State())
    b = coin(prompts, [f"nonsense {i}" for i in range(2000)], trainer_state=State(), answer=["x"] * 2000)
    assert a == b  # the same draws whatever the completions say
    assert set(a) == {0.0, 1.0} and abs(sum(a) / len(a) - 0.3) < 0.04
    State.global_step = 8
    assert coin(prompts, ["the right answer"] * 2000, trainer_state=State()) != a  # a new draw each step
    assert coin_reward(0.3, seed=6)(prompts, ["x"] * 2000, trainer_state=State()) != a
    # Two completions of one prompt get independent coins (position in the call is part of the key).
    assert len({coin_value(0, 1, "same prompt", i) for i in range(8)}) == 8
    assert coin_reward(0.0, 1)(prompts[:50], ["x"] * 50) == [0.0] * 50
    assert coin_reward(1.0, 1)(prompts[:50], ["x"] * 50) == [1.0] * 50
    with pytest.raises(ValueError, match="prob"):
        coin_reward(1.5, 0)


def test_the_control_row_trains_on_the_coin(tmp_path, tiny_model_dir):
    config = compare_module.run_config("grpo-random", 3, tmp_path / "c",
                                       {"model": str(tiny_model_dir), "coin_reward_prob": 0.25}, 0)
    assert config.method == "grpo" and config.reward_funcs == ["coin"] and config.coin_reward_prob == 0.25
    trainer = Trainer(load_config(overrides={**config.to_dict(), "max_steps": 1, "eval_data": None,
                                             "batch_size": 2, "num_generations": 2, "max_completion_length": 4,
                                             "progress": False}))
    name, fn = trainer.scorer.functions[0]
    assert name == "coin"
    assert fn(["p"] * 6, ["a", "b", "c", "d", "e", "f"]) == coin_reward(0.25, 3)(["p"] * 6, ["?"] * 6)


def test_expand_grid_one_knob_at_a_time():
    regimes = compare_module.expand_grid(["sandbox_skill_share=0,0.7", "max_steps=200"])
    assert regimes == [("default", {}), ("sandbox_skill_share=0", {"sandbox_skill_share": 0}),
                       ("sandbox_skill_share=0.7", {"sandbox_skill_share": 0.7}), ("max_steps=200", {"max_steps": 200})]
    for bad, text in (("sandbox_skill_share", "key=value1"), ("=1", "key=value1"), ("max_steps=", "key=value1"),
                      ("max_steps=1,,2", "empty value"), ("max_steps=1,1", "given twice")):
        with pytest.raises(ConfigError, match=text):
            compare_module.expand_grid([bad])


def test_sampled_accuracy_is_the_headline_and_the_control_marks_gains():
    def row(method, seed, value):
        return {"method": method, "seed": seed, "in-dist": {"avg@k": value}, "ood": {"avg@k": value},
                "greedy_after": 1 - value}

    results = [row("base", s, 0.30) for s in range(5)]
    results += [row("grpo-random", s, 0.40 + 0.01 * s) for s in range(5)]
    results += [row("grpo", s, 0.60 + 0.01 * s) for s in range(5)]
    results += [row("sft", s, 0.40 + 0.01 * s + (0.002 if s % 2 else -0.002)) for s in range(5)]
    table = comparison_table(results, 4)
    lines = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "in-dist avg@4" in lines["method"] and "greedy" in lines["method"]
    assert "†" in lines["sft"] and "†" not in lines["grpo"]  # sft's gain is the control's; grpo's is not
    cells = regime_cells([("default", results)])["default"]
    assert cells["grpo"]["best"] and not cells["sft"].get("best")
    assert cells["grpo"]["above_control"] is True and cells["sft"]["above_control"] is False


def test_compare_grid_names_regimes_shares_runs_and_draws_the_map(tmp_path, tiny_model_dir, monkeypatch):
    trained = []
    real_train = compare_module.train_or_reuse

    def counting(config):
        trained.append(str(config.run_dir))
        return real_train(config)

    monkeypatch.setattr(compare_module, "train_or_reuse", counting)
    out = tmp_path / "map"
    everything = compare_module.compare(
        methods=["sft", "grpo", "grpo-random"], seeds=[0, 1], out_dir=out,
        budget={"max_steps": 2, "batch_size": 2, "sft_batch_size": 4, "num_generations": 2}, k=2, eval_limit=3,
        overrides={"model": str(tiny_model_dir), "max_completion_length": 6, "max_train_examples": 16,
                   "eval_data": None, "progress": False},
        grid=["sandbox_demo_error_rate=0.5"], curve_every=1)
    assert list(everything) == ["default", "sandbox_demo_error_rate=0.5"]
    # grpo and the control train on no demonstrations: one run serves both regimes; sft trains twice.
    assert len(trained) == 2 * (1 + 1 + 2) and len(set(trained)) == len(trained)
    for regime in everything:
        assert (out / regime / "comparison.md").exists() and (out / regime / "results.json").exists()
        rows = everything[regime]
        assert sorted({r["method"] for r in rows}) == ["base", "grpo", "grpo-random", "sft"]
        sft = [r for r in rows if r["method"] == "sft"]
        assert all(r["run_dir"].startswith(str(out / regime)) for r in sft)
        assert [p["step"] for p in sft[0]["curve"]] == [0, 1, 2]  # base model, checkpoint, final model
    # the training report draws each run under its row: the control's runs are not GRPO's series
    runs_table = (out / "default" / "report.md").read_text().split("## Runs")[-1]
    labels = [line.split(" | ")[0].lstrip("| ") for line in runs_table.splitlines() if line.startswith("| ")][1:]
    assert sorted(labels) == ["grpo", "grpo", "grpo-random", "grpo-random", "sft", "sft"]  # 2 seeds each
    control = json.loads((out / "default" / "control.json").read_text())
    assert 0.0 <= control["coin_reward_prob"] <= 1.0
    assert (out / "regime_map.png").stat().st_size > 1000
    assert "sandbox_demo_error_rate=0.5" in (out / "regime_map.md").read_text()
    saved = json.loads((out / "regimes.json").read_text())
    assert saved["regimes"] == ["default", "sandbox_demo_error_rate=0.5"]
    assert set(saved["cells"]["default"]) >= {"sft", "grpo", "grpo-random"}


def test_new_options_fail_in_one_line(tmp_path, tiny_model_dir, capsys):
    base = ["compare", "-o", str(tmp_path / "c"), "--methods", "sft", "--seeds", "0", "--max-steps", "1",
            f"model={tiny_model_dir}"]
    fails_cleanly(capsys, tmp_path, base + ["--budget-amount", "0", "--budget", "tokens"], "--budget-amount")
    fails_cleanly(capsys, tmp_path, base + ["--budget-amount", "10"], "--budget-amount", "sequences or tokens")
    fails_cleanly(capsys, tmp_path, base + ["--curve-every", "-1"], "--curve-every")
    fails_cleanly(capsys, tmp_path, base + ["--grid", "sandbox_skill_share"], "--grid", "key=value1")
    fails_cleanly(capsys, tmp_path, base + ["--grid", "sandbox_skil_share=0"], "sandbox_skil_share")
    fails_cleanly(capsys, tmp_path, base + ["--grid", "sandbox_skill_share=2"], "sandbox_skill_share")
    fails_cleanly(capsys, tmp_path, base + ["--methods", "grpo-randm"], "grpo-randm")
    train = ["train", f"model={tiny_model_dir}", "train_data=sandbox", "eval_data=null", "max_steps=1",
             f"output_dir={tmp_path / 'run'}", "method=sft"]
    for override, text in (("max_token_passes=-1", "max_token_passes"), ("max_train_sequences=-5", "max_train_sequences"),
                           ("eval_samples=-1", "eval_samples"), ("eval_temperature=0", "eval_temperature"),
                           ("coin_reward_prob=1.5", "coin_reward_prob"), ("sandbox_double_form=plus", "sandbox_double_form")):
        fails_cleanly(capsys, tmp_path, train + [override], text)
