"""Bad input at every entry point (train, eval, compare, report, analyze, sandbox prepare), through the
command line: exit status 2, one line `sftrl: error: ...` naming the field, option, file or row, no
traceback, and no file that existed before is changed or lost."""

import json
import shutil

import pytest

from sftrl.cli import main


def snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def fails_cleanly(capsys, root, args, *expected):
    """Run the CLI; it must exit 2 with exactly one error line holding every `expected` text, and leave
    every file that was under `root` as it was."""
    before = snapshot(root)
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("sftrl: error: ")]
    assert code == 2, err
    assert len(errors) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in errors[0], errors[0]
    after = snapshot(root)
    assert {p: after.get(p) for p in before} == before  # nothing there before was changed or lost
    return errors[0]


def train_args(tmp_path, model_dir, *overrides):
    return ["train", f"model={model_dir}", "train_data=sandbox", "max_train_examples=16", "eval_data=null",
            "max_steps=1", "batch_size=4", "num_generations=2", "max_completion_length=8", "progress=false",
            f"output_dir={tmp_path / 'run'}", "method=sft", *overrides]


@pytest.fixture()
def not_a_model(tmp_path):
    path = tmp_path / "notes"
    path.mkdir()
    (path / "README.md").write_text("my notes, not a model\n")
    return path


# ---------------------------------------------------------------------------------------------- train
def test_train_config_values(tmp_path, tiny_model_dir, capsys):
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "adam_beta2=1.5"), "adam_beta2", "[0, 1)")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "beta=.inf"), "beta: must be a finite number, got inf")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "max_stepz=3"), "unknown config field 'max_stepz'")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "demo_truncation=trim"), "demo_truncation")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "plugins=[no_such_plugin_xyz]"),
                  "plugins", "no_such_plugin_xyz")


def test_yaml_booleans_in_string_fields(tmp_path, tiny_model_dir, capsys):
    """YAML 1.1 reads `no` as false: on the command line a string field keeps the text as typed (so
    `mixed_precision=no` works, in `sftrl compare --grid` too); in a recipe the error says to quote it."""
    from sftrl.config import parse_overrides
    assert parse_overrides(["mixed_precision=no", "mixed_precision_2=no"]) == \
        {"mixed_precision": "no", "mixed_precision_2": False}
    assert parse_overrides(["mixed_precision='no'", "eval_data=null", "eval_data=off", "max_steps=3"]) == \
        {"mixed_precision": "no", "eval_data": "off", "max_steps": 3}
    assert parse_overrides(["eval_data=null"]) == {"eval_data": None}
    assert parse_overrides(['opsd_teacher_template="{prompt}\\n{demonstration}"', "reward_funcs=[a, b]"]) == \
        {"opsd_teacher_template": "{prompt}\n{demonstration}", "reward_funcs": ["a", "b"]}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: sft\nmixed_precision: no\n")
    fails_cleanly(capsys, tmp_path, ["train", "--config", recipe], "mixed_precision: expected a string, got False",
                  "mixed_precision: 'no'")


def test_train_model_that_is_not_a_model(tmp_path, tiny_model_dir, not_a_model, capsys):
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, not_a_model), "model:", str(not_a_model),
                  "not a model directory", "config.json")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, not_a_model / "README.md"), "model:", "is a file")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, f"tokenizer={not_a_model}"),
                  "tokenizer:", "not a tokenizer directory")


def test_train_recipe_with_a_yaml_error_names_the_file_and_line(tmp_path, tiny_model_dir, capsys):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("method: sft\nmax_steps: [1, 2\nlearning_rate: 1e-3\n")
    line = fails_cleanly(capsys, tmp_path, ["train", "--config", recipe], f"{recipe}: not valid YAML at line")
    assert "<unicode string>" not in line


def test_train_run_directories(tmp_path, tiny_model_dir, capsys):
    missing = tmp_path / "missing"
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "resume=true", f"output_dir={missing}"),
                  "resume=true", "does not exist")
    assert not missing.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me\n")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, f"output_dir={a_file}"), "is a file")
    assert main(train_args(tmp_path, tiny_model_dir, "save_every=1", "max_steps=2")) == 0
    capsys.readouterr()
    for extra in ([], ["resume=true"]):
        fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "save_every=1", "max_steps=2", *extra),
                      "holds a finished run")
    (tmp_path / "run" / "summary.json").unlink()
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "save_every=1", "max_steps=2", "resume=true",
                                               "learning_rate=0.5"), "other settings", "learning_rate")
    for checkpoint in (tmp_path / "run" / "checkpoints").iterdir():
        (checkpoint / "trainer_state.pt").write_bytes(b"damaged")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "save_every=1", "max_steps=2", "resume=true"),
                  "no checkpoint in", "can be loaded", "step-000001")


def test_train_batch_that_does_not_split_over_the_processes(tmp_path, tiny_model_dir, capsys, monkeypatch):
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "num_processes", property(lambda self: 3))
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir), "batch_size: 4 prompts do not split evenly "
                                                                          "over 3 processes")


def test_train_bad_data_row_and_a_reward_that_raises(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 1+2.", "demonstration": "3"}) + "\n")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, f"train_data={data}"),
                  f"{data}: row 0: field 'answer'")
    rows = [{"prompt": f"Compute {i}+1.", "answer": answer} for i, answer in enumerate(["1", "2", "3", "BAD"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    picky = tmp_path / "picky.py"
    picky.write_text("def picky(prompts, completions, answer, **kwargs):\n"
                     "    if 'BAD' in answer:\n        raise ValueError('cannot read this gold answer')\n"
                     "    return [0.0] * len(completions)\n")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "method=grpo", f"train_data={data}",
                                               f"reward_funcs=[{picky}:picky]"),
                  "reward function 'picky' raised ValueError: cannot read this gold answer", f"{data} row 3")


def test_train_a_reward_that_returns_nan(tmp_path, tiny_model_dir, capsys):
    data = tmp_path / "data.jsonl"
    rows = [{"prompt": f"Compute {i}+1.", "answer": answer} for i, answer in enumerate(["1", "2", "3", "BAD"])]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    nan = tmp_path / "nan_reward.py"
    nan.write_text("def ratio(prompts, completions, answer, **kwargs):\n"
                   "    return [float('nan') if a == 'BAD' else 1.0 for a in answer]  # a grader's 0/0\n")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "method=grpo", f"train_data={data}",
                                               f"reward_funcs=[{nan}:ratio]"),
                  "reward function 'ratio' returned nan for", f"{data} row 3", "TRL would treat NaN as None")


# ---------------------------------------------------------------------------------------------- eval
def test_eval_options_and_models(tmp_path, tiny_model_dir, not_a_model, capsys):
    out = tmp_path / "eval"
    base = ["eval", "--model", tiny_model_dir, "--data", "sandbox:test", "--limit", "2", "--max-new-tokens", "4",
            "-o", out]
    assert main([str(a) for a in base]) == 0
    capsys.readouterr()
    fails_cleanly(capsys, tmp_path, base + ["--k", "0"], "--k: must be in [1, inf], got 0")
    fails_cleanly(capsys, tmp_path, base + ["--top-p", "1.5"], "--top-p")
    fails_cleanly(capsys, tmp_path, base + ["--limit", "0"], "--limit")
    fails_cleanly(capsys, tmp_path, ["eval", "--model", not_a_model, "-o", out, "--overwrite"], "--model:",
                  "not a model directory")
    fails_cleanly(capsys, tmp_path, base + ["--data", "sandbox:nope", "--overwrite"], "sandbox:nope")
    fails_cleanly(capsys, tmp_path, base[:-1] + [out / "samples.jsonl"], "--output-dir", "is a file")


def test_a_hub_id_that_cannot_be_fetched_offline_is_one_line(tmp_path, capsys):
    """The tests run offline (conftest): an id not in the cache is named, with why, and nothing is written."""
    fails_cleanly(capsys, tmp_path, ["eval", "--model", "no-such-org/no-such-model", "--data", "sandbox:test",
                                     "--limit", "2", "-o", tmp_path / "eval"],
                  "no-such-org/no-such-model: cannot be loaded from the Hugging Face Hub: offline (HF_HUB_OFFLINE=1)")
    fails_cleanly(capsys, tmp_path, ["train", "model=no-such-org/no-such-model", "train_data=sandbox",
                                     "max_train_examples=4", "eval_data=null", "max_steps=1", "progress=false",
                                     f"output_dir={tmp_path / 'run'}", "method=sft"],
                  "no-such-org/no-such-model: cannot be loaded from the Hugging Face Hub: offline")
    assert not (tmp_path / "eval").exists() and not (tmp_path / "run").exists()


def hub_error(kind, message):
    """A huggingface_hub error as it raises one (its constructor wants an HTTP response; the type is what counts)."""
    error = kind.__new__(kind)
    Exception.__init__(error, message)
    return error


def test_hub_errors_become_one_line_naming_the_id_and_why(monkeypatch):
    from huggingface_hub import errors as hub_errors
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftrl import models
    from sftrl.errors import ConfigError

    def wrapped(error, text):  # transformers re-raises the hub's error as OSError, the original its cause
        try:
            raise error
        except Exception as cause:
            raise OSError(text) from cause

    cases = [
        (hub_error(hub_errors.RepositoryNotFoundError, "404 Client Error. Repository Not Found"), "not found"),
        (hub_error(hub_errors.GatedRepoError, "403 Client Error. Cannot access gated repo"), "no access"),
        (hub_error(hub_errors.LocalEntryNotFoundError, "no connection"), "the Hub cannot be reached"),
        (ConnectionError("Name or service not known"), "the Hub cannot be reached"),
    ]
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for error, why in cases:
        for raised in (error, "wrapped"):
            def load(*args, error=error, raised=raised, **kwargs):
                if raised == "wrapped":
                    wrapped(error, "org/model is not a local folder ... (transformers' words)")
                raise error

            for loader, what in ((models.load_model, AutoModelForCausalLM), (models.load_tokenizer, AutoTokenizer)):
                monkeypatch.setattr(what, "from_pretrained", load)
                with pytest.raises(ConfigError) as caught:
                    loader("org/model")
                message = str(caught.value)
                assert message.startswith("org/model: cannot be loaded from the Hugging Face Hub: " + why), message
                assert "\n" not in message and caught.value.__cause__ is None
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(AutoTokenizer, "from_pretrained",
                        lambda *a, **k: wrapped(hub_errors.LocalEntryNotFoundError("not cached"), "couldn't connect"))
    with pytest.raises(ConfigError, match=r"^org/model: cannot be loaded from the Hugging Face Hub: offline"):
        models.load_tokenizer("org/model")
    # Anything else is not the hub's doing and keeps its traceback.
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(KeyError("vocab")))
    with pytest.raises(KeyError):
        models.load_tokenizer("org/model")


# ---------------------------------------------------------------------------------------------- compare
def test_compare_options(tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "comparison.md").write_text("an earlier comparison\n")
    base = ["compare", "--methods", "sft", "--seeds", "0", "-o", out]
    fails_cleanly(capsys, tmp_path, base + ["--k", "0"], "--k")
    fails_cleanly(capsys, tmp_path, base + ["--jobs", "0"], "--jobs")
    fails_cleanly(capsys, tmp_path, base + ["--eval-limit", "0"], "--eval-limit")
    fails_cleanly(capsys, tmp_path, ["compare", "--methods", "sfft", "--seeds", "0", "-o", out], "unknown method")
    fails_cleanly(capsys, tmp_path, base + ["learning_rat=1e-3"], "unknown config field 'learning_rat'")
    fails_cleanly(capsys, tmp_path, base[:-1] + [out / "comparison.md"], "--output-dir", "is a file")


# ---------------------------------------------------------------------------------------------- report
def test_report_inputs(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    fails_cleanly(capsys, tmp_path, ["report", run, "-o", tmp_path / "rep"], "not a run directory", "metrics.jsonl")
    (run / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "rew\n{"step": 3, "reward": 0.7}\n')
    fails_cleanly(capsys, tmp_path, ["report", run, "-o", tmp_path / "rep"], "metrics.jsonl: line 2 is not valid JSON")
    fails_cleanly(capsys, tmp_path, ["report", run, "--smooth", "0"], "--smooth")
    fails_cleanly(capsys, tmp_path, ["report", run, run, "--label", "a"], "--label was given 1 times for 2")


# ---------------------------------------------------------------------------------------------- analyze
def test_analyze_models_and_options(tmp_path, tiny_model_dir, not_a_model, capsys):
    out = tmp_path / "analysis"
    fails_cleanly(capsys, tmp_path, ["analyze", "tokens", "--before", not_a_model, "--after", tiny_model_dir,
                                     "-o", out], "--before:", "not a model directory")
    fails_cleanly(capsys, tmp_path, ["analyze", "tokens", "--before", tiny_model_dir, "--after", tmp_path / "gone",
                                     "-o", out], "--after:", "not found")
    fails_cleanly(capsys, tmp_path, ["analyze", "tokens", "--before", tiny_model_dir, "--after", tiny_model_dir,
                                     "--limit", "0"], "--limit")
    assert not out.exists()
    run = tmp_path / "run"
    run.mkdir()
    fails_cleanly(capsys, tmp_path, ["analyze", "map", "--references", tiny_model_dir, not_a_model, tiny_model_dir,
                                     "--runs", run, "-o", out], "--references:", "not a model directory")
    fails_cleanly(capsys, tmp_path, ["analyze", "map", "--references", tiny_model_dir, tiny_model_dir, tiny_model_dir,
                                     "--runs", run, "-o", out], "no checkpoints or final model")


# ---------------------------------------------------------------------------------------------- sandbox prepare
def test_sandbox_prepare_never_replaces_what_is_not_a_sandbox_model(tmp_path, not_a_model, capsys, monkeypatch):
    fails_cleanly(capsys, tmp_path, ["sandbox", "prepare", "--force"], "--force only applies with --rebuild")
    a_file = tmp_path / "model.bin"
    a_file.write_bytes(b"weights of something else")
    fails_cleanly(capsys, tmp_path, ["sandbox", "prepare", "--rebuild", "-o", a_file], "--output-dir", "is a file")
    fails_cleanly(capsys, tmp_path, ["sandbox", "prepare", "--rebuild", "-o", not_a_model], "--output-dir",
                  "not a sandbox base model")
    from sftrl.sandbox import prepare

    monkeypatch.setattr(prepare, "SHIPPED_DIR", tmp_path / "not-shipped")
    fails_cleanly(capsys, tmp_path, ["sandbox", "prepare"], "the sandbox base model is missing")
    shutil.rmtree(not_a_model)


def test_train_fsdp_asked_for_on_cpu(tmp_path, tiny_model_dir, capsys, monkeypatch):
    """accelerate shards only on accelerators: on CPU it would silently run plain data parallelism."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir), "ACCELERATE_USE_FSDP: FSDP was asked for")


def test_chunked_logprobs_are_refused_under_fsdp():
    """FSDP2 gathers shards in the root module's forward; the chunked path runs outside it (it raised
    "FSDP requires a single root module" on 2 CPU processes through tests/fsdp_on_cpu.py)."""
    from sftrl.errors import ConfigError
    from sftrl.validate import check_processes, load_config

    check_processes(load_config(overrides={"batch_size": 4, "logprob_chunk_size": 0}), 2, "fsdp", {})
    check_processes(load_config(overrides={"batch_size": 4, "logprob_chunk_size": 64}), 2, "ddp", {})
    with pytest.raises(ConfigError) as error:
        check_processes(load_config(overrides={"batch_size": 4, "logprob_chunk_size": 64}), 2, "fsdp", {})
    assert str(error.value).startswith("logprob_chunk_size: 64 is not supported under FSDP") and "\n" not in str(error.value)


@pytest.mark.parametrize("deepspeed, overrides, expected", [
    ({"gradient_accumulation_steps": 4}, {}, "deepspeed gradient_accumulation_steps: sftrl accumulates"),
    ({"gradient_clipping": 0.5}, {"max_grad_norm": 1.0}, "max_grad_norm: 1.0, but the DeepSpeed config's gradient_clipping"),
    ({"optimizer": {"type": "AdamW"}}, {}, "deepspeed optimizer: remove it"),
    ({}, {"skip_update_grad_norm": 80.0}, "skip_update_grad_norm: 80.0 cannot apply under DeepSpeed"),
    ({}, {"method": "relift"}, "method: relift steps a second optimizer"),
    ({}, {"save_every": 5}, "save_every: 5, but resumable checkpoints are not written under DeepSpeed"),
])
def test_deepspeed_settings_sftrl_cannot_honour(deepspeed, overrides, expected):
    from sftrl.errors import ConfigError
    from sftrl.validate import check_processes, load_config

    config = load_config(overrides={"save_every": 0, "batch_size": 4, **overrides})
    accepted = {"gradient_accumulation_steps": "auto", "gradient_clipping": "auto", "zero_optimization": {"stage": 2}}
    check_processes(load_config(overrides={"save_every": 0, "batch_size": 4}), 2, "deepspeed", {}, accepted)
    with pytest.raises(ConfigError) as error:
        check_processes(config, 2, "deepspeed", {}, {**accepted, **deepspeed})
    assert expected in str(error.value) and "\n" not in str(error.value)
