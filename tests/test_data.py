"""Tests for sftrl.data: loading every supported source, validation errors, prompts, sampling."""

from __future__ import annotations

import json
import os

# No test may reach the network; set before datasets / huggingface_hub are first imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftrl.data import Example, load_examples, render_prompt, to_examples
from sftrl.errors import DataError
from sftrl.prompt_sampler import PromptSampler
from sftrl.sources import load_rows

BENCHMARKS_DIR = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

SIMPLE_ROWS = [
    {"prompt": "Compute 1+2.", "answer": "3", "demonstration": "1+2=3\n\\boxed{3}", "data_source": "toy"},
    {"prompt": "Compute 2+2.", "answer": 4, "demonstration": "2+2=4\n\\boxed{4}", "data_source": "toy"},
]

# The same rows with uniform column types, as Arrow-backed datasets need.
UNIFORM_ROWS = [{**row, "answer": str(row["answer"])} for row in SIMPLE_ROWS]

SYSTEM_TEXT = "Think step by step, then put the answer in \\boxed{}."


def verl_rows() -> list[dict]:
    """Rows shaped like verl's RL parquet files (and the shared benchmark files)."""
    return [
        {
            "data_source": source,
            "prompt": [
                {"role": "system", "content": SYSTEM_TEXT},
                {"role": "user", "content": question},
            ],
            "ability": "math",
            "reward_model": {"ground_truth": gold, "style": "rule"},
            "extra_info": {"index": index, "split": "default"},
        }
        for index, (source, question, gold) in enumerate(
            [("math500", "What is 6*7?", "42"), ("aime24", "What is 2^10?", "1024")]
        )
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def write_verl_parquet(path: Path) -> Path:
    """A parquet with the same nested schema as verl's: list<struct> prompt, struct reward_model."""
    message = pa.struct([("content", pa.string()), ("role", pa.string())])
    schema = pa.schema(
        [
            ("data_source", pa.string()),
            ("prompt", pa.list_(message)),
            ("ability", pa.string()),
            ("reward_model", pa.struct([("ground_truth", pa.string()), ("style", pa.string())])),
            ("extra_info", pa.struct([("index", pa.int64()), ("split", pa.string())])),
        ]
    )
    pq.write_table(pa.Table.from_pylist(verl_rows(), schema=schema), path)
    return path


# ------------------------------------------------------------------------------------------------
# Loading each kind of source
# ------------------------------------------------------------------------------------------------


def test_jsonl_loads_and_skips_blank_lines(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(SIMPLE_ROWS[0]) + "\n\n   \n" + json.dumps(SIMPLE_ROWS[1]) + "\n")

    examples = load_examples(str(path))

    assert [e.prompt for e in examples] == ["Compute 1+2.", "Compute 2+2."]
    assert [e.answer for e in examples] == ["3", "4"]  # numbers become strings
    assert examples[1].demonstration == "2+2=4\n\\boxed{4}"
    assert examples[1].columns == {"data_source": "toy"}
    assert (examples[1].source, examples[1].index) == (str(path), 1)


def test_json_list_and_data_wrapper(tmp_path):
    as_list = tmp_path / "list.json"
    as_list.write_text(json.dumps(SIMPLE_ROWS))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"data": SIMPLE_ROWS, "version": 1}))

    assert load_rows(str(as_list)) == SIMPLE_ROWS
    assert load_rows(str(wrapped)) == SIMPLE_ROWS


def test_json_with_wrong_top_level_shape(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"rows": SIMPLE_ROWS}))
    with pytest.raises(DataError, match="expected a list of objects") as error:
        load_rows(str(path))
    assert str(path) in str(error.value) and "'rows'" in str(error.value)


def test_plain_parquet(tmp_path):
    path = tmp_path / "train.parquet"
    pq.write_table(pa.Table.from_pylist(SIMPLE_ROWS[:1]), path)
    (example,) = load_examples(str(path), require_demo=True)
    assert example == Example(
        prompt="Compute 1+2.",
        answer="3",
        demonstration="1+2=3\n\\boxed{3}",
        columns={"data_source": "toy"},
        source=str(path),
        index=0,
    )


def test_verl_parquet_round_trip(tmp_path):
    path = write_verl_parquet(tmp_path / "valid.parquet")

    rows = load_rows(str(path))
    assert rows == verl_rows()  # nested cells come back as plain lists and dicts
    assert type(rows[0]["prompt"]) is list and type(rows[0]["prompt"][0]) is dict

    examples = load_examples(str(path))  # no options: answer found at reward_model.ground_truth
    assert [e.answer for e in examples] == ["42", "1024"]
    assert examples[0].prompt == verl_rows()[0]["prompt"]
    assert examples[0].demonstration is None
    assert examples[1].columns["data_source"] == "aime24"
    # The parent of the dotted answer field is kept for reward functions; prompt is not repeated.
    assert examples[1].columns["reward_model"] == {"ground_truth": "1024", "style": "rule"}
    assert set(examples[1].columns) == {"data_source", "ability", "reward_model", "extra_info"}


def test_pandas_records_with_numpy_arrays_validate():
    pandas = pytest.importorskip("pandas")
    frame = pandas.DataFrame(verl_rows())
    frame["prompt"] = [pandas.Series(messages).to_numpy() for messages in frame["prompt"]]
    records = frame.to_dict("records")
    assert type(records[0]["prompt"]).__module__ == "numpy"

    examples = to_examples(records, source="frame")
    assert examples[0].prompt == verl_rows()[0]["prompt"]
    assert type(examples[0].prompt) is list


@pytest.mark.skipif(not (BENCHMARKS_DIR / "math_reasoning.parquet").exists(),
                    reason="shared benchmark files exist only on the team's machines")
def test_real_verl_benchmark_file():
    path = BENCHMARKS_DIR / "math_reasoning.parquet"
    examples = load_examples(str(path), split="test")
    assert len(examples) == 1590
    first = examples[0]
    assert first.answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert first.columns["data_source"] == "math500"
    for example in examples:
        assert isinstance(example.prompt, list)
        assert [m["role"] for m in example.prompt] == ["system", "user"]
        assert all(isinstance(m["content"], str) and m["content"] for m in example.prompt)
    assert {e.columns["data_source"] for e in examples} == {
        "aime24", "aime25", "amc", "math500", "minerva", "olympiad_bench"
    }


def test_save_to_disk_dataset_and_dataset_dict(tmp_path):
    single = tmp_path / "single"
    datasets.Dataset.from_list(UNIFORM_ROWS).save_to_disk(str(single))
    splits = tmp_path / "splits"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(UNIFORM_ROWS),
         "test": datasets.Dataset.from_list(UNIFORM_ROWS[:1])}
    ).save_to_disk(str(splits))

    assert [e.answer for e in load_examples(str(single))] == ["3", "4"]
    assert len(load_examples(str(splits), split="train")) == 2
    assert len(load_examples(str(splits), split="test")) == 1


def test_save_to_disk_wrong_split_lists_available(tmp_path):
    splits = tmp_path / "splits"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(UNIFORM_ROWS)}).save_to_disk(str(splits))
    with pytest.raises(DataError) as error:
        load_rows(str(splits), split="validation")
    message = str(error.value)
    assert str(splits) in message and "'validation'" in message and "available splits: train" in message


def test_directory_not_written_by_save_to_disk(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        load_rows(str(tmp_path))


def test_hub_id_goes_to_load_dataset_with_config(monkeypatch):
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(UNIFORM_ROWS)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    assert load_rows("someone/some-data@main", split="test") == UNIFORM_ROWS
    assert load_rows("some-data") == UNIFORM_ROWS
    assert calls == [("someone/some-data", "main", "test"), ("some-data", None, "train")]


def test_hub_unreachable_is_a_data_error(monkeypatch):
    # Offline mode makes the real load_dataset fail fast, as it would on a machine without network.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    dataset_id = "sftrl-tests-no-such-owner/no-such-dataset"
    with pytest.raises(DataError) as error:
        load_rows(dataset_id)
    message = str(error.value)
    assert dataset_id in message
    assert "hub could not be reached" in message and "not found" in message
    assert error.value.__cause__ is not None


# ------------------------------------------------------------------------------------------------
# Sandbox
# ------------------------------------------------------------------------------------------------


def test_sandbox_sources():
    task = pytest.importorskip("sftrl.sandbox.task", reason="sftrl.sandbox.task is not written yet")

    test_examples = load_examples("sandbox:test", require_demo=True)
    assert len(test_examples) == len(task.make_split("test"))
    assert [e.columns["data_source"] for e in test_examples[:4]] == ["sandbox-test-chain"] * 3 + ["sandbox-test-double"]
    assert test_examples[0].demonstration and test_examples[0].answer
    assert test_examples[0].source == "sandbox:test"

    # "sandbox" takes the split argument; the train size applies to train only.
    train = load_examples("sandbox", split="train", sandbox_train_size=12)
    assert len(train) == 12
    same_test = load_examples("sandbox", split="test", sandbox_train_size=12)
    assert [e.prompt for e in same_test] == [e.prompt for e in test_examples]

    wrong = load_rows("sandbox:train", sandbox_train_size=20, sandbox_demo_error_rate=0.5)
    assert sum(task.verify(row["demonstration"], row["answer"]) == 0.0 for row in wrong) == 10

    # The skill share applies to train only: evaluation splits keep theirs.
    doubling = load_rows("sandbox:train", sandbox_train_size=20, sandbox_skill_share=0.5)
    assert sum(row["prompt"].endswith(")*2.") for row in doubling) == 10
    assert load_rows("sandbox:test", sandbox_skill_share=1.0) == task.make_split("test")
    assert len(load_examples("sandbox:val")) == 200

    assert len(load_examples("sandbox:ood", limit=5)) == 5

    with pytest.raises(DataError, match="sandbox:nope"):
        load_rows("sandbox:nope")


# ------------------------------------------------------------------------------------------------
# Field names
# ------------------------------------------------------------------------------------------------


def test_dotted_and_custom_field_names():
    rows = [
        {"question": {"text": "What is 6*7?"}, "label": {"value": 42}, "solution": "6*7=42",
         "meta": "kept"},
        {"question": {"text": "What is 1+1?"}, "label": {"value": "2"}, "solution": "1+1=2",
         "meta": "kept"},
    ]
    examples = to_examples(rows, "custom", prompt_field="question.text", answer_field="label.value",
                           demo_field="solution", require_demo=True)
    assert [e.prompt for e in examples] == ["What is 6*7?", "What is 1+1?"]
    assert [e.answer for e in examples] == ["42", "2"]
    assert examples[0].demonstration == "6*7=42"
    # Top-level columns read directly are consumed; parents of dotted fields are kept.
    assert examples[0].columns == {"question": {"text": "What is 6*7?"}, "label": {"value": 42},
                                   "meta": "kept"}


def test_literal_key_with_a_dot_is_found():
    (example,) = to_examples([{"q.text": "hi", "answer": "x"}], "dots", prompt_field="q.text")
    assert example.prompt == "hi"


def test_system_prompt_wraps_plain_text_and_fills_missing_system_message():
    rows = [
        {"prompt": "What is 6*7?", "answer": "42"},
        {"prompt": [{"role": "user", "content": "What is 1+1?"}], "answer": "2"},
        {"prompt": [{"role": "system", "content": "Own system."},
                    {"role": "user", "content": "What is 2+2?"}], "answer": "4"},
    ]
    examples = to_examples(rows, "mixed", system_prompt=SYSTEM_TEXT)
    assert examples[0].prompt == [{"role": "system", "content": SYSTEM_TEXT},
                                  {"role": "user", "content": "What is 6*7?"}]
    assert examples[1].prompt[0] == {"role": "system", "content": SYSTEM_TEXT}
    assert examples[2].prompt == rows[2]["prompt"]  # an existing system message is left alone


def test_empty_demonstration_is_none_when_not_required():
    rows = [{"prompt": "p", "answer": "a", "demonstration": "  "}, {"prompt": "p", "answer": "a"}]
    assert [e.demonstration for e in to_examples(rows, "src")] == [None, None]


def test_limit_truncates_before_validation(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [*SIMPLE_ROWS, {"prompt": "no answer"}])
    assert len(load_examples(str(path), limit=2)) == 2
    with pytest.raises(DataError, match="row 2"):
        load_examples(str(path))


# ------------------------------------------------------------------------------------------------
# Errors name the source, the row (or line) and the field
# ------------------------------------------------------------------------------------------------


def assert_names(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_bad_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(SIMPLE_ROWS[0]) + "\n\n" + '{"prompt": "x", "answer": \n')
    with pytest.raises(DataError) as error:
        load_rows(str(path))
    assert_names(error, str(path), "line 3", "invalid JSON")
    assert error.value.line == 3


def test_non_object_jsonl_line(tmp_path):
    path = tmp_path / "list_line.jsonl"
    path.write_text(json.dumps(SIMPLE_ROWS[0]) + "\n[1, 2]\n")
    with pytest.raises(DataError) as error:
        load_rows(str(path))
    assert_names(error, str(path), "line 2", "expected a JSON object, got a list")


def test_missing_answer_names_file_row_field_and_present_fields(tmp_path):
    rows = [*SIMPLE_ROWS, {"prompt": "Compute 3+3.", "solution": "6"}]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    with pytest.raises(DataError) as error:
        load_examples(str(path))
    assert_names(error, str(path), "row 2", "'answer'", "reward_model.ground_truth",
                 "fields: prompt, solution")
    assert (error.value.row, error.value.field) == (2, "answer")


def test_missing_nested_answer_describes_the_parent():
    rows = [{"prompt": "p", "reward_model": {"style": "rule"}}]
    with pytest.raises(DataError) as error:
        to_examples(rows, "verl.parquet", answer_field="reward_model.ground_truth")
    assert_names(error, "verl.parquet", "row 0", "'reward_model.ground_truth'",
                 "'reward_model' has: style")


@pytest.mark.parametrize(
    ("answer", "expected"),
    [(None, "is empty"), ("  ", "is empty"), (float("nan"), "NaN"), (["42"], "got list"),
     (True, "got bool")],
)
def test_bad_answers(answer, expected):
    rows = [SIMPLE_ROWS[0], {"prompt": "p", "answer": answer}]
    with pytest.raises(DataError) as error:
        to_examples(rows, "answers.jsonl")
    assert_names(error, "answers.jsonl", "row 1", "'answer'", expected)


@pytest.mark.parametrize(
    ("prompt", "field", "expected"),
    [
        (42, "'prompt'", "got int"),
        (None, "'prompt'", "got null"),
        ("   ", "'prompt'", "is empty"),
        ([], "'prompt'", "empty list"),
        (["hello"], "'prompt[0]'", "got str"),
        ([{"role": "user"}], "'prompt[0]'", "no 'content'"),
        ([{"role": "system", "content": "s"}, {"role": "robot", "content": "c"}], "'prompt[1]'",
         "'robot' is not one of system, user, assistant"),
        ([{"role": "user", "content": 7}], "'prompt[0]'", "content must be a string"),
    ],
)
def test_bad_prompts(tmp_path, prompt, field, expected):
    path = write_jsonl(tmp_path / "prompts.jsonl", [SIMPLE_ROWS[0], SIMPLE_ROWS[1],
                                                   {"prompt": prompt, "answer": "1"}])
    with pytest.raises(DataError) as error:
        load_examples(str(path))
    assert_names(error, str(path), "row 2", field, expected)


def test_missing_prompt_field():
    with pytest.raises(DataError) as error:
        to_examples([{"question": "q", "answer": "a"}], "qa.json")
    assert_names(error, "qa.json", "row 0", "'prompt'", "missing", "fields: question, answer")


def test_require_demo_with_missing_demonstration(tmp_path):
    rows = [SIMPLE_ROWS[0], {"prompt": "Compute 5+5.", "answer": "10"}]
    path = write_jsonl(tmp_path / "no_demo.jsonl", rows)
    assert load_examples(str(path))[1].demonstration is None  # fine when not required
    with pytest.raises(DataError) as error:
        load_examples(str(path), require_demo=True)
    assert_names(error, str(path), "row 1", "'demonstration'", "missing",
                 "method trains on demonstrations")


def test_require_demo_with_empty_custom_field():
    rows = [{"prompt": "p", "answer": "a", "solution": ""}]
    with pytest.raises(DataError) as error:
        to_examples(rows, "demos.json", demo_field="solution", require_demo=True)
    assert_names(error, "demos.json", "row 0", "'solution'", "is empty", "looked up field 'solution'")


def test_non_string_demonstration():
    rows = [{"prompt": "p", "answer": "a", "demonstration": ["step"]}]
    with pytest.raises(DataError) as error:
        to_examples(rows, "demos.json")
    assert_names(error, "demos.json", "row 0", "'demonstration'", "got list")


def test_row_that_is_not_a_mapping():
    with pytest.raises(DataError) as error:
        to_examples([SIMPLE_ROWS[0], "just text"], "rows")
    assert_names(error, "rows", "row 1", "got str")


def test_empty_dataset(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    with pytest.raises(DataError) as error:
        load_examples(str(path))
    assert_names(error, str(path), "empty")


@pytest.mark.parametrize("name", ["missing.jsonl", "nested/dir/data", "gone.csv"])
def test_missing_local_path_is_not_found_and_never_hits_the_hub(tmp_path, monkeypatch, name):
    def refuse(*args, **kwargs):
        raise AssertionError("a local path must not be looked up on the hub")

    monkeypatch.setattr(datasets, "load_dataset", refuse)
    path = str(tmp_path / name)
    with pytest.raises(DataError) as error:
        load_rows(path)
    assert_names(error, path, "not found")
    with pytest.raises(DataError, match="not found"):
        load_rows("./relative/train.jsonl")


def test_unsupported_extension(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("prompt,answer\nq,a\n")
    with pytest.raises(DataError) as error:
        load_rows(str(path))
    assert_names(error, str(path), "'.csv'", ".jsonl", ".json", ".parquet")


def test_corrupt_parquet(tmp_path):
    path = tmp_path / "corrupt.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(DataError) as error:
        load_rows(str(path))
    assert_names(error, str(path), "cannot read parquet")


# ------------------------------------------------------------------------------------------------
# Prompts as model input
# ------------------------------------------------------------------------------------------------

CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(chat_template: str | None):
    """A tiny local fast tokenizer (no download), with or without a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocabulary = {"[UNK]": 0, "What": 1, "is": 2, "?": 3}
    backend = Tokenizer(models.WordLevel(vocabulary, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    tokenizer.chat_template = chat_template
    return tokenizer


def test_render_prompt_with_chat_template():
    tokenizer = make_tokenizer(CHAT_TEMPLATE)
    assert render_prompt(tokenizer, "What is 6*7?") == "<|user|>What is 6*7?\n<|assistant|>"
    messages = verl_rows()[0]["prompt"]
    assert render_prompt(tokenizer, messages) == (
        f"<|system|>{SYSTEM_TEXT}\n<|user|>What is 6*7?\n<|assistant|>"
    )


def test_render_prompt_without_chat_template():
    tokenizer = make_tokenizer(None)
    assert render_prompt(tokenizer, "Compute 1+2.") == "Compute 1+2."
    assert render_prompt(tokenizer, verl_rows()[0]["prompt"]) == f"{SYSTEM_TEXT}\nWhat is 6*7?"


# ------------------------------------------------------------------------------------------------
# Prompt sampling
# ------------------------------------------------------------------------------------------------


def draw(sampler: PromptSampler, n_batches: int) -> list[list[int]]:
    return [sampler.next_batch() for _ in range(n_batches)]


def test_sampler_is_deterministic_per_seed():
    assert draw(PromptSampler(10, 3, seed=7), 6) == draw(PromptSampler(10, 3, seed=7), 6)
    assert draw(PromptSampler(10, 3, seed=7), 6) != draw(PromptSampler(10, 3, seed=8), 6)


def test_sampler_covers_each_epoch_and_reshuffles():
    sampler = PromptSampler(12, 4, seed=0)
    epochs = [sum(draw(sampler, 3), []) for _ in range(3)]  # 3 batches of 4 = one epoch of 12
    for order in epochs:
        assert sorted(order) == list(range(12))
    assert epochs[0] != epochs[1] != epochs[2]
    assert sampler.epoch == 3 and sampler.position == 0


def test_sampler_batch_crosses_epoch_boundary():
    # One batch of the whole dataset is exactly one epoch's permutation.
    whole_epochs = PromptSampler(10, 10, seed=3)
    first_epoch, second_epoch = whole_epochs.next_batch(), whole_epochs.next_batch()
    assert first_epoch != second_epoch

    sampler = PromptSampler(10, 4, seed=3)
    batches = draw(sampler, 5)  # 20 indices: exactly two epochs; the third batch straddles them
    assert all(len(batch) == 4 for batch in batches)
    assert batches[2] == first_epoch[8:] + second_epoch[:2]
    assert sum(batches, []) == first_epoch + second_epoch
    assert (sampler.epoch, sampler.position) == (2, 0)


def test_sampler_batch_larger_than_dataset_spans_epochs():
    sampler = PromptSampler(3, 7, seed=1)
    batch = sampler.next_batch()
    assert len(batch) == 7
    assert sorted(batch[:3]) == sorted(batch[3:6]) == [0, 1, 2]
    assert (sampler.epoch, sampler.position) == (2, 1)


def test_sampler_resume_draws_the_same_batches():
    uninterrupted = draw(PromptSampler(10, 3, seed=5), 5)

    first_run = PromptSampler(10, 3, seed=5)
    before = draw(first_run, 2)
    state = json.loads(json.dumps(first_run.state_dict()))  # as it would be saved in a checkpoint
    resumed = PromptSampler(10, 3, seed=5)
    resumed.load_state_dict(state)
    assert before + draw(resumed, 3) == uninterrupted

    # Also across an epoch boundary (batch 4 of size 3 starts at position 9 of 10).
    first_run = PromptSampler(10, 3, seed=5)
    draw(first_run, 3)
    resumed = PromptSampler(10, 3, seed=5)
    resumed.load_state_dict(first_run.state_dict())
    assert draw(resumed, 2) == uninterrupted[3:5]


def test_sampler_rejects_bad_settings_and_mismatched_state():
    with pytest.raises(ValueError, match="batch_size"):
        PromptSampler(10, 0, seed=0)
    with pytest.raises(ValueError, match="empty"):
        PromptSampler(0, 4, seed=0)
    with pytest.raises(ValueError, match="seed"):
        PromptSampler(10, 3, seed=1).load_state_dict(PromptSampler(10, 3, seed=2).state_dict())
    with pytest.raises(ValueError, match="n_examples"):
        PromptSampler(11, 3, seed=1).load_state_dict(PromptSampler(10, 3, seed=1).state_dict())


def test_demonstration_as_chat_messages_takes_the_last_assistant_turn():
    # LUFFY's released data keeps the demonstration as messages in a `target` column
    rows = [{"prompt": "p", "answer": "a",
             "target": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "so \\boxed{a}"}]}]
    (example,) = to_examples(rows, "luffy.parquet", demo_field="target", require_demo=True)
    assert example.demonstration == "so \\boxed{a}"
