"""The sandbox: task splits and verifier, char tokenizer, tiny model, base-model caching (no training)."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import json  # noqa: E402
import re  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from sftrl.sandbox import prepare as prepare_module  # noqa: E402
from sftrl.sandbox.model import build_model  # noqa: E402
from sftrl.config import ConfigError  # noqa: E402
from sftrl.data import load_examples  # noqa: E402
from sftrl.sources import load_rows  # noqa: E402
from sftrl.sandbox.task import Problem, Ref, make_split, verify  # noqa: E402
from sftrl.validate import load_config  # noqa: E402
from sftrl.sandbox.tokenizer import build_tokenizer  # noqa: E402


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run these tiny workloads on one thread: with two, a busy machine's OpenMP spin-waits can make
    a millisecond step take seconds, and one thread is as fast for models this small."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer, seed=0)


# --- task ---------------------------------------------------------------------------------------


def families(rows):
    return [row["data_source"].rsplit("-", 1)[1] for row in rows]


def solve(expression):
    """Independent reference: Python's own arithmetic on the prompt's expression."""
    return eval(expression)  # noqa: S307 (digits, +, -, *, brackets only)


def test_default_splits_are_fixed_and_sized():
    assert make_split("test") == make_split("test")
    assert make_split("ood") == make_split("ood")
    assert [len(make_split(s)) for s in ("train", "val", "test", "ood")] == [5000, 200, 200, 200]
    row = make_split("test", 1)[0]
    assert set(row) == {"prompt", "answer", "demonstration", "data_source"}
    assert row["data_source"] in ("sandbox-test-chain", "sandbox-test-double")
    assert row["prompt"].startswith("Compute ") and row["prompt"].endswith(".")


def test_skill_share_sets_the_doubling_problems():
    for split in ("train", "val", "test", "ood"):
        rows = make_split(split)
        assert families(rows).count("double") == round(0.3 * len(rows))
        assert families(rows[:100]).count("double") == 30  # every prefix holds the share
    rows = make_split("train", 1000, skill_share=0.5)
    assert families(rows).count("double") == 500
    assert all(("(" in r["prompt"]) == (f == "double") for r, f in zip(rows, families(rows)))
    assert families(make_split("train", 100, skill_share=0.0)) == ["chain"] * 100
    assert families(make_split("train", 100, skill_share=1.0)) == ["double"] * 100


def test_seed_changes_problems_and_prefixes_are_stable():
    assert make_split("train", 50, seed=1) != make_split("train", 50, seed=2)
    assert make_split("test", 300)[:200] == make_split("test")
    assert make_split("train", 40, skill_share=0.5)[:10] == make_split("train", 10, skill_share=0.5)


def test_splits_are_disjoint_and_prompts_unique():
    prompts = {s: [row["prompt"] for row in make_split(s)] for s in ("train", "val", "test", "ood")}
    for split, rows in prompts.items():
        assert len(set(rows)) == len(rows), split
    sets = {s: set(p) for s, p in prompts.items()}
    for a, b in [("train", "val"), ("train", "test"), ("val", "test"), ("train", "ood"), ("test", "ood")]:
        assert not sets[a] & sets[b], (a, b)
    # Disjointness holds for any seed and share, not just the defaults.
    other = {row["prompt"] for row in make_split("train", 2000, seed=7, skill_share=0.6)}
    assert not other & sets["test"] and not other & sets["val"]


def test_ood_is_harder():
    def mean(values):
        return sum(values) / len(values)

    def terms(prompt):
        return prompt.count("+") + prompt.count("-") + 1

    test, ood = make_split("test"), make_split("ood")
    assert mean([terms(r["prompt"]) for r in ood]) > mean([terms(r["prompt"]) for r in test]) + 0.5
    assert mean([int(r["answer"]) for r in ood]) > mean([int(r["answer"]) for r in test]) + 5
    assert max(len(r["demonstration"]) for r in ood) < 80


def test_correct_demonstrations_verify_and_show_every_step():
    rows = make_split("train", 500) + make_split("ood")
    for row, family in zip(rows, families(rows)):
        expression = row["prompt"][len("Compute "):-1]
        assert int(row["answer"]) == solve(expression) >= 0
        assert verify(row["demonstration"], row["answer"]) == 1.0
        lines = row["demonstration"].split("\n")
        assert lines[-1] == f"\\boxed{{{row['answer']}}}"
        assert len(lines) == expression.count("+") + expression.count("-") + expression.count("*") + 1
        for line in lines[:-1]:
            left, result = line.split("=")
            assert solve(left) == int(result) >= 0
        if family == "double":
            # The bracket's chain, then one line doubling it; the bracket alone is half the answer.
            inner = expression[1:expression.index(")")]
            assert expression.endswith(")*2") and lines[-2] == f"{solve(inner)}*2={row['answer']}"
            assert 10 <= int(row["answer"]) <= 98


def test_demo_error_rate_makes_that_fraction_wrong_with_gold_answers_kept():
    clean = make_split("train", 1000)
    noisy = make_split("train", 1000, demo_error_rate=0.3)
    assert [r["prompt"] for r in noisy] == [r["prompt"] for r in clean]
    assert [r["answer"] for r in noisy] == [r["answer"] for r in clean]
    wrong = [r for r in noisy if verify(r["demonstration"], r["answer"]) == 0.0]
    assert abs(len(wrong) / len(noisy) - 0.3) < 0.02
    assert {"chain", "double"} <= set(families(wrong))
    # A wrong demonstration is a single slip: exactly one line's arithmetic does not hold.
    for row in wrong[:80]:
        bad_lines = 0
        for line in row["demonstration"].split("\n")[:-1]:
            left, result = line.split("=")
            bad_lines += solve(left) != int(result)
            assert int(result) >= 0
        assert bad_lines == 1
    assert all(verify(r["demonstration"], r["answer"]) == 0.0 for r in make_split("test", 20, demo_error_rate=1.0))


# The known problem (17+5-12)*2: its chain, then the doubling line.
KNOWN = Problem("(17+5-12)*2", ((17, "+", 5), (Ref(0), "-", 12), (Ref(1), "*", 2)), "double")


def as_sum(demonstration):
    """The sum form of a times-form demonstration: each doubling line `a*2=v` written `a+a=v`."""
    return re.sub(r"^(\d+)\*2=", r"\1+\1=", demonstration, flags=re.MULTILINE)


def test_sum_form_writes_the_doubling_line_with_familiar_tokens():
    assert KNOWN.prompt == "Compute (17+5-12)*2." and KNOWN.answer == "20"
    assert KNOWN.demonstration().split("\n") == ["17+5=22", "22-12=10", "10*2=20", "\\boxed{20}"]
    assert KNOWN.demonstration(double_form="sum").split("\n") == ["17+5=22", "22-12=10", "10+10=20", "\\boxed{20}"]
    # A slip before the doubling line is doubled: both of the sum's operands are the slipped value.
    assert KNOWN.demonstration(slip_line=1, slip=1, double_form="sum").split("\n") == [
        "17+5=22", "22-12=11", "11+11=22", "\\boxed{22}"]
    assert KNOWN.demonstration(slip_line=0, slip=-10, double_form="sum").split("\n") == [
        "17+5=12", "12-12=0", "0+0=0", "\\boxed{0}"]
    assert KNOWN.demonstration(slip_line=2, slip=-1, double_form="sum").split("\n") == [
        "17+5=22", "22-12=10", "10+10=19", "\\boxed{19}"]


def test_double_form_changes_only_the_doubling_lines_of_demonstrations():
    times, sums = make_split("train", 1000), make_split("train", 1000, double_form="sum")
    assert make_split("train", 1000, double_form="times") == times
    for field in ("prompt", "answer", "data_source"):
        assert [r[field] for r in sums] == [r[field] for r in times]
    assert [r["demonstration"] for r in sums] == [as_sum(r["demonstration"]) for r in times]
    assert sum(r["demonstration"] != t["demonstration"] for r, t in zip(sums, times)) == 300  # every double row
    assert all(verify(r["demonstration"], r["answer"]) == 1.0 for r in sums)
    assert "*" not in "".join(r["demonstration"] for r in sums)


def test_wrong_demonstrations_follow_the_form_and_stay_wrong():
    times = make_split("train", 1000, demo_error_rate=0.3)
    sums = make_split("train", 1000, demo_error_rate=0.3, double_form="sum")
    # The same rows slip the same way; only how the doubling line is written differs.
    assert [r["demonstration"] for r in sums] == [as_sum(r["demonstration"]) for r in times]
    wrong = [r for r in sums if verify(r["demonstration"], r["answer"]) == 0.0]
    assert len(wrong) == 300
    assert [r["prompt"] for r in wrong] == [r["prompt"] for r in times if verify(r["demonstration"], r["answer"]) == 0.0]
    wrong_doubles = [r for r in wrong if families([r]) == ["double"]]
    assert len(wrong_doubles) > 50
    for row in wrong_doubles:
        lines = row["demonstration"].split("\n")
        left, result = lines[-2].split("=")
        # The doubled line adds the previous line's (possibly slipped) result to itself.
        assert left == f"{lines[-3].split('=')[1]}+{lines[-3].split('=')[1]}"
        assert lines[-1] == f"\\boxed{{{result}}}" and result != row["answer"]
    assert all(verify(r["demonstration"], r["answer"]) == 0.0
               for r in make_split("train", 40, demo_error_rate=1.0, skill_share=1.0, double_form="sum"))


def test_double_form_reaches_training_data_only():
    train = load_examples("sandbox", split="train", sandbox_train_size=10, sandbox_double_form="sum")
    assert [e.demonstration for e in train] == [r["demonstration"] for r in make_split("train", 10, double_form="sum")]
    for split in ("val", "test", "ood"):
        assert load_rows(f"sandbox:{split}", sandbox_double_form="sum") == make_split(split)


def test_double_form_is_a_checked_config_field():
    assert load_config().sandbox_double_form == "times"
    assert load_config(overrides=["sandbox_double_form=sum"]).sandbox_double_form == "sum"
    with pytest.raises(ConfigError) as error:
        load_config(overrides=["sandbox_double_form=plus"])
    assert str(error.value) == "sandbox_double_form: 'plus' is not one of times, sum"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"split": "validation"}, "unknown sandbox split"),
        ({"split": "train", "skill_share": 1.2}, "skill_share"),
        ({"split": "train", "demo_error_rate": 1.5}, "demo_error_rate"),
        ({"split": "train", "demo_error_rate": -0.1}, "demo_error_rate"),
        ({"split": "train", "n": -1}, "non-negative"),
        ({"split": "train", "double_form": "plus"}, "double_form must be one of times, sum, got 'plus'"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_split(**kwargs)


@pytest.mark.parametrize(
    ("completion", "answer", "expected"),
    [
        ("3+4=7\n\\boxed{7}", "7", 1.0),
        ("\\boxed{ 7 }", "7", 1.0),
        ("\\boxed{7}", " 7\n", 1.0),
        ("the answer is 7", "7", 0.0),
        ("", "7", 0.0),
        ("\\boxed{7} no wait \\boxed{8}", "8", 1.0),
        ("\\boxed{7} no wait \\boxed{8}", "7", 0.0),
        ("\\boxed{77}", "7", 0.0),
        ("\\boxed{07}", "7", 0.0),
        ("\\boxed{7", "7", 0.0),
    ],
)
def test_verify(completion, answer, expected):
    assert verify(completion, answer) == expected


# --- tokenizer ----------------------------------------------------------------------------------


def test_tokenizer_is_char_level_and_round_trips(tokenizer):
    assert isinstance(tokenizer, PreTrainedTokenizerFast)
    text = "Compute 10+15+3.\n  two  spaces\n\n10+15=25\n\\boxed{28} ~!@#$%^&*()_`'\" "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids
    assert tokenizer("é\t", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id] * 2


def test_special_tokens(tokenizer):
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id}
    assert None not in ids and len(ids) == 3
    eos_ids = tokenizer("12" + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    assert eos_ids[-1] == tokenizer.eos_token_id and len(eos_ids) == 3
    assert tokenizer.decode(eos_ids, skip_special_tokens=True) == "12"


def test_chat_template(tokenizer):
    user = [{"role": "user", "content": "Compute 1+2."}]
    assert tokenizer.apply_chat_template(user, tokenize=False, add_generation_prompt=True) == (
        "<|user|>Compute 1+2.<|assistant|>"
    )
    conversation = [
        {"role": "system", "content": "Be exact."},
        *user,
        {"role": "assistant", "content": "1+2=3\n\\boxed{3}"},
    ]
    text = tokenizer.apply_chat_template(conversation, tokenize=False)
    assert text == "<|system|>Be exact.<|user|>Compute 1+2.<|assistant|>1+2=3\n\\boxed{3}<|endoftext|>"
    encoded = tokenizer.apply_chat_template(conversation, return_dict=True, return_assistant_tokens_mask=True)
    assistant_ids = [i for i, m in zip(encoded["input_ids"], encoded["assistant_masks"]) if m]
    assert tokenizer.decode(assistant_ids) == "1+2=3\n\\boxed{3}<|endoftext|>"
    with pytest.raises(Exception, match="Unknown role"):
        tokenizer.apply_chat_template([{"role": "tool", "content": "x"}], tokenize=False)
    with pytest.raises(Exception, match="system message"):
        tokenizer.apply_chat_template([*user, {"role": "system", "content": "late"}], tokenize=False)


# --- model --------------------------------------------------------------------------------------


def test_model_size_and_config(model, tokenizer):
    num_parameters = sum(p.numel() for p in model.parameters())
    assert 1_000_000 <= num_parameters <= 5_000_000
    assert model.dtype == torch.float32
    assert model.config.model_type == "llama"
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)
    for config in (model.config, model.generation_config):
        assert config.eos_token_id == tokenizer.eos_token_id
        assert config.pad_token_id == tokenizer.pad_token_id


def test_build_model_is_seeded_and_leaves_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_model(tokenizer, seed=3)
    assert torch.equal(torch.rand(1), expected_next)
    second = build_model(tokenizer, seed=3)
    other = build_model(tokenizer, seed=4)
    weights = [m.model.layers[0].mlp.up_proj.weight for m in (first, second, other)]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


def test_save_and_reload_through_auto_classes(model, tokenizer, tmp_path):
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    reloaded_tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    reloaded_model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)

    text = "Compute 10+15+3.\n 10+15=25\n\n\\boxed{28}  "
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert reloaded_tokenizer(text, add_special_tokens=False)["input_ids"] == ids
    assert reloaded_tokenizer.decode(ids) == text
    messages = [{"role": "user", "content": "Compute 1+2."}]
    assert reloaded_tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    ) == tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert reloaded_tokenizer.eos_token_id == tokenizer.eos_token_id
    assert reloaded_tokenizer.pad_token_id == tokenizer.pad_token_id

    input_ids = torch.tensor([ids])
    with torch.no_grad():
        torch.testing.assert_close(reloaded_model(input_ids).logits, model(input_ids).logits)


# --- base-model preparation (a few steps only: the real budget is minutes) ----------------------


def test_completion_batch_masks_the_prompt(tokenizer):
    batch = prepare_module.completion_batch(tokenizer, ["Compute 1+2.", "Compute 10+15+3."], ["3", "28"])
    for row, completion in enumerate(["3", "28"]):
        labels = batch["labels"][row]
        supervised = labels[labels != -100].tolist()
        assert tokenizer.decode(supervised) == completion + tokenizer.eos_token
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # right padding


def test_greedy_accuracy_grades_generations(model, tokenizer):
    rows = make_split("test", 4)
    completions = prepare_module.greedy_completions(model, tokenizer, [r["prompt"] for r in rows], max_new_tokens=8)
    assert len(completions) == 4 and all(len(c) <= 8 for c in completions)
    assert tokenizer.padding_side == "right"  # restored after left-padded generation
    assert prepare_module.greedy_accuracy(model, tokenizer, rows, batch_size=3, max_new_tokens=8) == 0.0
    with pytest.raises(ValueError):
        prepare_module.greedy_accuracy(model, tokenizer, [])


def test_prepare_base_model_caches_atomically(tmp_path, monkeypatch):
    # Two test problems and one ood problem keep the accuracy measurement cheap.
    monkeypatch.setattr(prepare_module, "make_split", lambda split: make_split(split, 2))
    settings = prepare_module.PretrainSettings(steps=2, batch_size=4, warmup_steps=1)
    target = tmp_path / "cache" / "base"

    path = prepare_module.prepare_base_model(target, progress=False, settings=settings)
    assert path == target
    metadata = json.loads((path / "sandbox.json").read_text())
    assert metadata["settings"] == settings.to_json()
    for split in ("test", "ood"):
        for key in ("greedy_accuracy", "sampled_accuracy", "greedy_shortcut", "sampled_shortcut"):
            assert 0.0 <= metadata[split]["all"][key] <= 1.0
    assert sorted(p.name for p in target.parent.iterdir()) == ["base"]  # no staging leftovers
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert tokenizer.decode(tokenizer("a b\nc")["input_ids"]) == "a b\nc"

    # Cached: returned without retraining.
    def fail(*args, **kwargs):
        raise AssertionError("retrained a cached base model")

    monkeypatch.setattr(prepare_module, "pretrain", fail)
    assert prepare_module.prepare_base_model(target, progress=False, settings=settings) == target
    monkeypatch.undo()
    monkeypatch.setattr(prepare_module, "make_split", lambda split: make_split(split, 2))

    # force, or different settings, rebuild it in place.
    mtime = (target / "model.safetensors").stat().st_mtime_ns
    prepare_module.prepare_base_model(target, force=True, progress=False, settings=settings)
    assert (target / "model.safetensors").stat().st_mtime_ns != mtime
    other = prepare_module.PretrainSettings(steps=1, batch_size=4, warmup_steps=1)
    prepare_module.prepare_base_model(target, progress=False, settings=other)
    assert json.loads((target / "sandbox.json").read_text())["settings"]["steps"] == 1
    assert sorted(p.name for p in target.parent.iterdir()) == ["base"]

    # An incomplete directory (a crash before the rename could not leave one, but a user might).
    (target / "model.safetensors").unlink()
    assert prepare_module.read_metadata(target) is None


def test_pretraining_is_deterministic(tokenizer):
    settings = prepare_module.PretrainSettings(steps=3, batch_size=4, warmup_steps=1)
    losses = [
        prepare_module.pretrain(build_model(tokenizer, seed=0), tokenizer, settings, progress=False)
        for _ in range(2)
    ]
    assert losses[0] == losses[1]
    assert len(losses[0]) == 3


def test_shipped_base_model_is_complete_and_made_by_the_recorded_recipe():
    directory = prepare_module.base_model_dir()
    metadata = prepare_module.read_metadata(directory)
    assert metadata["name"] == prepare_module.BASE_MODEL_NAME
    assert metadata["settings"] == prepare_module.PretrainSettings().to_json()  # `--rebuild` remakes this model
    model, tokenizer = prepare_module.load_base_model()
    assert model.dtype == torch.float32 and sum(p.numel() for p in model.parameters()) == metadata["num_parameters"]
    assert tokenizer.decode(tokenizer("Compute 3-(1+1).")["input_ids"]) == "Compute 3-(1+1)."
    # The regime the sandbox is built for (README, The sandbox): greedy decoding takes the shortcut on
    # chains, sampling often solves them step by step, and doubling is (almost) never solved.
    test = metadata["test"]
    assert test["chain"]["greedy_shortcut"] > 0.8 and test["chain"]["greedy_accuracy"] < 0.25
    assert test["chain"]["sampled_accuracy"] > test["chain"]["greedy_accuracy"] + 0.15
    assert test["double"]["greedy_accuracy"] <= 0.02 and test["double"]["sampled_accuracy"] <= 0.03


def test_prepare_command_shows_the_shipped_model_and_rebuilds_from_the_recipe(tmp_path, monkeypatch, capsys):
    from sftrl.cli import main

    assert main(["sandbox", "prepare"]) == 0
    out = capsys.readouterr().out
    assert str(prepare_module.base_model_dir()) in out and "greedy" in out and "double" in out
    tiny = prepare_module.PretrainSettings(steps=2, batch_size=4, warmup_steps=1)
    monkeypatch.setattr(prepare_module, "PretrainSettings", lambda: tiny)
    monkeypatch.setattr(prepare_module, "make_split", lambda split: make_split(split, 4))
    assert main(["sandbox", "prepare", "--rebuild", "--output-dir", str(tmp_path / "rebuilt")]) == 0
    out = capsys.readouterr().out
    assert "rebuilt from the recipe" in out and "shipped" in out
    assert prepare_module.read_metadata(tmp_path / "rebuilt")["settings"]["steps"] == 2
