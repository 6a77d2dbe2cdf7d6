"""Rows of their own in `sftrl compare`: `NAME=METHOD` (two rows of one method, e.g. QuestA and Prefix-RFT
as `uft` schedules) and `LABEL:key=value` (settings for one row's runs, e.g. an `opd` teacher): the configs
they give, that the other rows' runs (and so their reuse) do not change, and their errors in one line."""

import json

import pytest

from sftrl import compare as compare_module
from sftrl.cli import main
from sftrl.compare_plan import Row, define_rows, own_rows, run_config
from sftrl.config import ConfigError

from test_bad_input import fails_cleanly


def test_a_row_of_its_own_runs_its_method_with_its_settings_and_leaves_the_others_alone(tmp_path):
    shared = {"model": "sandbox", "train_data": "sandbox", "max_steps": 50, "learning_rate": 1e-4}
    rows = define_rows(["uft", "questa=uft", "grpo-random", "opd"],
                       {"questa": {"uft_schedule": "questa", "uft_hint_steps": 25},
                        "opd": {"opd_teacher": "runs/sft/model"}, "grpo-random": {"learning_rate": 3e-5}})
    assert list(rows) == ["uft", "questa", "grpo-random", "opd"]  # the order given
    assert rows["questa"] == Row("uft", {"uft_schedule": "questa", "uft_hint_steps": 25})
    assert rows["grpo-random"] == Row("grpo", {"reward_funcs": ["coin"], "learning_rate": 3e-5})  # the control's own kept
    questa = run_config("questa", 0, tmp_path / "q", shared, 0, rows["questa"])
    uft = run_config("uft", 0, tmp_path / "u", shared, 0, rows["uft"])
    assert (questa.method, questa.uft_schedule, questa.uft_hint_steps) == ("uft", "questa", 25)
    assert uft.uft_schedule != "questa" and uft.uft_hint_steps == 30  # uft's own 60% of the steps
    # a row with no settings of its own gets exactly the config it got before rows existed (finished runs are reused)
    assert uft.to_dict() == run_config("uft", 0, tmp_path / "u", shared, 0).to_dict()
    assert run_config("opd", 0, tmp_path / "o", shared, 0, rows["opd"]).opd_teacher == "runs/sft/model"
    assert run_config("grpo-random", 0, tmp_path / "c", shared, 0, rows["grpo-random"]).learning_rate == 3e-5
    # the tables name the rows that are not a method under its own name with its defaults
    assert set(own_rows(rows)) == {"questa", "opd", "grpo-random"}
    assert own_rows(define_rows(["sft", "grpo-random"])) == {}


@pytest.mark.parametrize("entries,settings,text", [
    (["sft", "dtf"], None, "unknown method 'dtf'"),
    (["sft=uft"], None, "must be a new row name"),
    (["base=sft"], None, "must be a new row name"),
    (["a/b=sft"], None, "must be a new row name"),
    (["mine=sfft"], None, "unknown method 'sfft'"),
    (["mine=sft", "mine=grpo"], None, "'mine' is given twice"),
    (["sft", "sft"], None, "'sft' is given twice"),
    (["sft"], {"grpo": {"learning_rate": 1e-5}}, "'grpo' is not a row of --methods"),
])
def test_bad_rows_are_refused(entries, settings, text):
    with pytest.raises(ConfigError, match=text):
        define_rows(entries, settings)


def test_compare_command_line_rows_and_their_errors(tmp_path, tiny_model_dir, capsys):
    out = tmp_path / "c"
    base = ["compare", "-o", str(out), "--seeds", "0", "--max-steps", "1", "--batch-size", "2",
            "--num-generations", "2", "--k", "1", "--eval-limit", "2", "--jobs", "1", f"model={tiny_model_dir}",
            "max_completion_length=4", "max_train_examples=8", "sft_batch_size=4", "eval_data=null", "progress=false"]
    fails_cleanly(capsys, tmp_path, base + ["--methods", "sft", "grpo:learning_rate=1e-5"], "'grpo' is not a row")
    # what compare sets per run is refused, not silently ignored (seed) or applied to every row (method)
    fails_cleanly(capsys, tmp_path, base + ["--methods", "sft", "grpo", "method=luffy"], "method=...", "--methods")
    fails_cleanly(capsys, tmp_path, base + ["--methods", "sft", "seed=3"], "seed=...", "--seeds")
    fails_cleanly(capsys, tmp_path, base + ["--methods", "sft", "sft:output_dir=x"], "sft:output_dir=...", "--output-dir")
    fails_cleanly(capsys, tmp_path, base + ["--methods", "sft", "slow=sft", "slow:sft_learnin_rate=1e-5"],
                  "sft_learnin_rate")
    assert main(base + ["--methods", "sft", "slow=sft", "slow:sft_learning_rate=1e-6"]) == 0
    capsys.readouterr()
    slow = json.loads((out / "slow-seed0" / "summary.json").read_text())
    assert slow["method"] == "sft"
    assert "sft_learning_rate: 1.0e-06" in (out / "slow-seed0" / "config.yaml").read_text()
    assert "sft_learning_rate: 0.001" in (out / "sft-seed0" / "config.yaml").read_text()  # the shared budget's
    table = (out / "comparison.md").read_text()
    assert "Row `slow`: sft with sft_learning_rate=1e-6." in table and "| slow | 1 |" in table  # as typed
    saved = json.loads((out / "results.json").read_text())
    assert list(saved["rows"]) == ["slow"] and saved["rows"]["slow"]["method"] == "sft"
    assert float(saved["rows"]["slow"]["settings"]["sft_learning_rate"]) == 1e-6
    assert {r["method"] for r in saved["results"]} == {"base", "sft", "slow"}
    with pytest.raises(ConfigError, match="unknown method"):
        compare_module.compare(["nope"], [0], tmp_path / "d")


def test_the_controls_coin_rate_does_not_tell_runs_without_a_coin_apart(tmp_path):
    """compare writes the control's measured rate into every run's config; a run that uses no coin reward is
    the same run at any rate (reused by a compare with or without the control), a coin run is not."""
    from sftrl.checkpoint import config_differences
    from sftrl.compare_plan import run_key
    from sftrl.validate import load_config

    shared = {"model": "sandbox", "train_data": "sandbox", "max_steps": 50}
    at = {p: run_config("sft", 0, tmp_path / "s", {**shared, "coin_reward_prob": p}, 0) for p in (0.301, 0.5)}
    assert run_key(at[0.301]) == run_key(at[0.5])
    assert config_differences(at[0.301].to_dict(), at[0.5]) == []
    coin = {p: run_config("grpo-random", 0, tmp_path / "c", {**shared, "coin_reward_prob": p}, 0) for p in (0.301, 0.5)}
    assert run_key(coin[0.301]) != run_key(coin[0.5])
    assert config_differences(coin[0.301].to_dict(), coin[0.5]) == ["coin_reward_prob 0.301 -> 0.5"]
    # a run that switches to the coin is told apart by its reward (and the rate then counts)
    grpo = load_config(None, {**shared, "method": "grpo", "coin_reward_prob": 0.301})
    assert config_differences(grpo.to_dict(), coin[0.5]) == ["reward_funcs ['auto'] -> ['coin']",
                                                              "coin_reward_prob 0.301 -> 0.5"]


def test_settings_are_named_on_one_line_as_they_are_typed():
    """A template's newlines would break the table's first line; quoted with its escapes it stays one line
    and reads back as the same value."""
    from sftrl.compare import settings_text
    from sftrl.config import parse_overrides

    values = {"opsd_teacher_template": "{prompt}\n{demonstration}\n{prompt}", "sft_learning_rate": "1e-6",
              "uft_schedule": "questa", "beta": 0, "system_prompt": ""}
    text = settings_text(values)
    assert "\n" not in text
    assert text == ('opsd_teacher_template="{prompt}\\n{demonstration}\\n{prompt}", sft_learning_rate=1e-6, '
                    'uft_schedule=questa, beta=0, system_prompt=""')
    back = parse_overrides([text.split(", ")[0], text.split(", ")[-1]])
    assert back == {"opsd_teacher_template": values["opsd_teacher_template"], "system_prompt": ""}
