"""avg@k and pass@k on hand-made grades."""

import itertools
import math

import pytest

from sftrl.eval_metrics import avg_at_k, pass_at_k


def brute_force_pass_at_k(grades, k):
    subsets = list(itertools.combinations(grades, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("grades", [[1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 0], [1, 1, 1], [0, 1, 0, 1, 0, 0]])
def test_pass_at_k_is_the_chance_that_k_of_the_samples_contain_a_correct_one(grades):
    for k in range(1, len(grades) + 1):
        assert pass_at_k(len(grades), sum(grades), k) == pytest.approx(brute_force_pass_at_k(grades, k))


def test_pass_at_k_known_values_and_errors():
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 4) == 1.0
    assert pass_at_k(10, 0, 5) == 0.0
    assert pass_at_k(32, 2, 8) == pytest.approx(1 - math.comb(30, 8) / math.comb(32, 8))
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_avg_at_k():
    assert avg_at_k([1, 0, 0, 1]) == 0.5
    assert avg_at_k([0.0] * 32) == 0.0
    with pytest.raises(ValueError):
        avg_at_k([])


# ---------------------------------------------------------------------------------------------------
# the benchmark harness

import json
import random
from pathlib import Path

from sftrl.data import Example, load_examples
from sftrl.eval_metrics import summarize
from sftrl.evaluate import run_benchmark
from sftrl.grading import build_questions, grader_for, shuffle_options

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"
SETTINGS = {"model": "fake", "k": 2, "shuffle_choices": False}


def record(source, grades, lengths=None):
    return {"data_source": source, "grades": grades, "lengths": lengths or [10] * len(grades),
            "truncated": [False] * len(grades)}


def test_summarize_hand_made_grades_per_source_and_overall():
    records = [record("aime", [1, 0, 0, 0]), record("aime", [1, 1, 0, 0]),  # k = 4
               record("math", [1]), record("math", [0]), record("math", [0], lengths=[40])]  # k = 1
    summary = summarize(records)
    aime, math_ = summary["by_source"]["aime"], summary["by_source"]["math"]
    assert aime["avg@k"] == pytest.approx(3 / 8)
    assert aime["pass@1"] == pytest.approx(3 / 8)
    assert aime["pass@2"] == pytest.approx((0.5 + (1 - 1 / 6)) / 2)  # 1 - C(3,2)/C(4,2), 1 - C(2,2)/C(4,2)
    assert aime["pass@4"] == 1.0
    assert math_["avg@k"] == pytest.approx(1 / 3) and math_["k"] == 1 and "pass@2" not in math_
    assert math_["mean_length"] == pytest.approx(20.0)
    overall = summary["overall"]
    assert overall["questions"] == 5 and overall["k"] == 1
    assert overall["avg@k"] == pytest.approx((0.25 + 0.5 + 1 + 0 + 0) / 5)  # every question weighs the same
    assert summary["source_mean"] == pytest.approx((3 / 8 + 1 / 3) / 2)
    with pytest.raises(ValueError):
        summarize([])


def test_grader_is_chosen_by_data_and_gold():
    assert grader_for(Example("q", "12", source="sandbox:test")) == "sandbox"
    assert grader_for(Example("q", "B", source="arc.parquet")) == "choice"
    assert grader_for(Example("q", "(C)", source="x")) == "choice"
    assert grader_for(Example("q", "\\frac{1}{2}", source="x")) == "math"
    assert grader_for(Example("q", "7", source="x")) == "math"
    assert grader_for(Example("q", "B", source="x"), reward="math") == "math"


QUESTION = "Which is a fruit?\n\nA) carrot\nB) apple\nC) potato\nD) onion\n"


def test_shuffle_options_moves_the_gold_with_its_text():
    seen = set()
    for seed in range(20):
        text, gold = shuffle_options(QUESTION, "B", random.Random(seed))
        lines = text.split("\n")
        assert lines[0] == "Which is a fruit?" and [line[:3] for line in lines[2:6]] == ["A) ", "B) ", "C) ", "D) "]
        assert sorted(line[3:] for line in lines[2:6]) == ["apple", "carrot", "onion", "potato"]
        assert lines[2 + "ABCD".index(gold)] == f"{gold}) apple"
        seen.add(gold)
    assert len(seen) >= 3  # the gold really moves
    assert shuffle_options("What is 2+2?", "B", random.Random(0)) is None  # no options: left alone
    assert shuffle_options("A) x\nC) y", "A", random.Random(0)) is None  # labels not A, B, ...
    assert shuffle_options(QUESTION, "F", random.Random(0)) is None  # gold not among the options


def test_build_questions_shuffles_choice_rows_in_the_last_user_message_only():
    examples = [Example([{"role": "system", "content": "A) keep\nB) me"}, {"role": "user", "content": QUESTION}],
                "B", columns={"data_source": "arc_c"}, source="arc.parquet", index=i) for i in range(8)]
    questions = build_questions(examples, "arc", k=1, shuffle_choices=True, seed=3)
    assert {q.example.answer for q in questions} != {"B"}
    for q in questions:
        assert q.example.prompt[0]["content"] == "A) keep\nB) me" and q.grader == "choice" and q.data_source == "arc_c"
        user = q.example.prompt[1]["content"].split("\n")
        assert user[2 + "ABCD".index(q.example.answer)].endswith("apple")
    assert examples[0].prompt[1]["content"] == QUESTION  # the originals are not modified
    again = build_questions(examples, "arc", k=1, shuffle_choices=True, seed=3)
    assert [q.example.answer for q in again] == [q.example.answer for q in questions]  # seeded


def fake_sampler(calls, correct_every=2, fail_after=None):
    """Boxes the gold answer in every `correct_every`-th sample, a wrong number otherwise."""
    def sample(model, tokenizer, questions, temperature, top_p, max_new_tokens, batch_size):
        if fail_after is not None and len(calls) >= fail_after:
            raise KeyboardInterrupt
        calls.append([q.id for q in questions])
        out = []
        for q in questions:
            texts = [f"\\boxed{{{q.example.answer}}}" if j % correct_every == 0 else "\\boxed{-1}" for j in range(q.k)]
            out.append((texts, [5] * q.k, [False] * q.k))
        return out
    return sample


def sandbox_questions(k=2, limit=10):
    return build_questions(load_examples("sandbox:test", limit=limit), "sandbox:test", k=k)


def test_run_benchmark_writes_every_question_and_resumes_after_a_stop(tmp_path):
    path, questions = tmp_path / "samples.jsonl", sandbox_questions()
    calls = []
    with pytest.raises(KeyboardInterrupt):  # chunks of 4 questions (batch 2 / k 2, times 4); stop in the 2nd
        run_benchmark(None, None, questions, path, SETTINGS, batch_size=2, sampler=fake_sampler(calls, fail_after=1))
    written = [json.loads(line) for line in path.read_text().splitlines()[1:]]
    assert [r["id"] for r in written] == [q.id for q in questions[:4]]  # nothing graded was lost
    assert all(r["grades"] == [1.0, 0.0] for r in written)

    calls.clear()
    records = run_benchmark(None, None, questions, path, SETTINGS, batch_size=2, sampler=fake_sampler(calls))
    assert [i for call in calls for i in call] == [q.id for q in questions[4:]]  # only the rest was sampled
    assert [r["id"] for r in records] == [q.id for q in questions]
    assert summarize(records)["overall"]["avg@k"] == 0.5
    assert summarize(records)["overall"]["pass@2"] == 1.0

    calls.clear()
    run_benchmark(None, None, questions, path, SETTINGS, batch_size=2, sampler=fake_sampler(calls))
    assert calls == []  # all done: nothing sampled again
    with pytest.raises(FileExistsError, match="other settings"):
        run_benchmark(None, None, questions, path, SETTINGS, temperature=1.0, sampler=fake_sampler(calls))
    with pytest.raises(FileExistsError, match="other settings"):
        run_benchmark(None, None, questions, path, {**SETTINGS, "k_by_source": {"sandbox-test": 4}},
                      sampler=fake_sampler(calls))


@pytest.mark.parametrize("name,sources", [
    ("math_reasoning.parquet", {"aime24", "aime25", "amc", "math500", "minerva", "olympiad_bench"}),
    ("arc_c.parquet", {"arc_c"}),
    ("gpqa_diamond.parquet", {"gpqa"}),
])
def test_real_benchmark_golds_score_one_and_shuffled_golds_near_zero(name, sources):
    path = BENCHMARKS / name
    if not path.exists():
        pytest.skip(f"{path} is not here (benchmarks exist only on the team's machines)")
    examples = load_examples(str(path))
    questions = build_questions(examples, path.stem, k=1, shuffle_choices=True, seed=0)
    assert {q.data_source for q in questions} == sources

    def answering(golds):
        def sample(model, tokenizer, part, *args):
            return [([f"<think>\\boxed{{wrong}}</think>The answer is \\boxed{{{golds[q.id]}}}."], [1], [False])
                    for q in part]
        return sample

    right = run_benchmark(None, None, questions, None, SETTINGS, batch_size=512,
                          sampler=answering({q.id: q.example.answer for q in questions}))
    assert summarize(right)["overall"]["avg@k"] == 1.0
    order = list(range(len(questions)))
    random.Random(0).shuffle(order)
    shuffled = {q.id: questions[j].example.answer for q, j in zip(questions, order)}
    wrong = summarize(run_benchmark(None, None, questions, None, SETTINGS, batch_size=512, sampler=answering(shuffled)))
    # Math golds rarely coincide; a shuffled letter still matches by chance (1 in 4 or 5).
    assert wrong["overall"]["avg@k"] <= (0.05 if name.startswith("math") else 0.35)


def test_eval_command_writes_a_summary_and_resumes(tiny_model_dir, tmp_path, capsys):
    from sftrl.cli import main

    args = ["eval", "--model", str(tiny_model_dir), "--data", "sandbox:test", "sandbox:ood", "--limit", "4",
            "--k", "2", "--max-new-tokens", "8", "-o", str(tmp_path)]
    assert main(args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["by_source"]) == {f"sandbox-{split}-{family}" for split in ("test", "ood")
                                         for family in ("chain", "double")}
    assert summary["overall"]["questions"] == 8 and summary["overall"]["k"] == 2
    assert 0 < summary["overall"]["mean_length"] <= 8
    lines = (tmp_path / "samples.jsonl").read_text().splitlines()
    assert len(lines) == 9 and all(len(json.loads(line)["completions"]) == 2 for line in lines[1:])
    assert "overall" in capsys.readouterr().out

    assert main(args) == 0  # everything is graded already: same file, same numbers
    assert (tmp_path / "samples.jsonl").read_text().splitlines() == lines
    assert json.loads((tmp_path / "summary.json").read_text())["overall"] == summary["overall"]
    assert main(args[:-2] + ["--temperature", "0", "-o", str(tmp_path)]) == 2  # greedy with k = 2
    assert main(args + ["--temperature", "1.0"]) == 2  # other settings than the samples file holds
    assert "other settings" in capsys.readouterr().err


def test_eval_with_vllm_missing_says_how_to_install_it(tiny_model_dir, tmp_path, capsys):
    import importlib.util

    from sftrl.cli import main

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    assert main(["eval", "--model", str(tiny_model_dir), "--limit", "2", "--backend", "vllm", "-o", str(tmp_path)]) == 2
    assert "pip install 'sftrl[vllm]'" in capsys.readouterr().err


def retrain_in_place(model_dir, seed):
    """Replace the weights in `model_dir` with another model's, as retraining into the same directory does."""
    from sftrl.sandbox.model import build_model
    from sftrl.sandbox.tokenizer import build_tokenizer

    build_model(build_tokenizer(), seed=seed).save_pretrained(model_dir)


def test_eval_samples_are_keyed_by_the_model_files_so_a_retrained_model_is_evaluated_again(tiny_model_dir, tmp_path):
    import shutil

    from sftrl.cli import main
    from sftrl.models import model_fingerprint

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    args = ["eval", "--model", str(model), "--data", "sandbox:test", "--limit", "3", "--k", "2",
            "--max-new-tokens", "8"]
    assert main(args + ["-o", str(tmp_path / "cached")]) == 0
    first = (tmp_path / "cached" / "samples.jsonl").read_text()
    retrain_in_place(model, seed=1)
    assert main(args + ["-o", str(tmp_path / "cached")]) == 0
    again = (tmp_path / "cached" / "samples.jsonl").read_text()
    assert main(args + ["-o", str(tmp_path / "fresh")]) == 0  # what an evaluation of the new model gives
    assert again != first and again == (tmp_path / "fresh" / "samples.jsonl").read_text()
    assert json.loads(again.splitlines()[0])["settings"]["model_sha256"] == model_fingerprint(str(model))


def test_the_same_model_files_at_another_path_reuse_their_samples(tiny_model_dir, tmp_path):
    """A moved run directory or another checkout of the shipped model: the files decide, not the path;
    another model at that path is still evaluated anew."""
    import shutil

    from sftrl.data import load_examples
    from sftrl.evaluate import read_samples, run_benchmark
    from sftrl.grading import build_questions
    from sftrl.models import load_model, load_tokenizer, model_fingerprint

    first, moved = tmp_path / "a" / "model", tmp_path / "b" / "model"
    shutil.copytree(tiny_model_dir, first)
    shutil.copytree(tiny_model_dir, moved)
    samples = tmp_path / "samples.jsonl"
    questions = build_questions(load_examples("sandbox:test", limit=3), "sandbox:test", k=1)
    model, tokenizer = load_model(str(first)), load_tokenizer(str(first))
    settings = {"model": str(first), "k": 1, "shuffle_choices": False, "model_sha256": model_fingerprint(str(first))}
    run_benchmark(model, tokenizer, questions, samples, settings, max_new_tokens=8)
    written = samples.read_text()
    same = {**settings, "model": str(moved), "model_sha256": model_fingerprint(str(moved))}
    assert len(read_samples(samples, {**same, "temperature": 0.6, "top_p": 1.0, "max_new_tokens": 8, "seed": 0})) == 3
    run_benchmark(model, tokenizer, questions, samples, same, max_new_tokens=8)
    assert samples.read_text() == written  # nothing evaluated again
    with pytest.raises(FileExistsError, match="model"):
        read_samples(samples, {**same, "model_sha256": "another", "temperature": 0.6, "top_p": 1.0,
                               "max_new_tokens": 8, "seed": 0})


def test_compare_evaluations_follow_the_model_files(tiny_model_dir, tmp_path):
    import shutil

    from sftrl.compare_eval import evaluate_run

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    kwargs = dict(k=1, temperature=0.6, limit=3, seed=0, max_new_tokens=8)
    evaluate_run(model, tmp_path / "eval", **kwargs)
    old = (tmp_path / "eval" / "in-dist.jsonl").read_text()
    retrain_in_place(model, seed=2)
    reused = evaluate_run(model, tmp_path / "eval", **kwargs)
    fresh = evaluate_run(model, tmp_path / "fresh", **kwargs)
    assert reused == fresh
    assert (tmp_path / "eval" / "in-dist.jsonl").read_text() != old
    assert (tmp_path / "eval" / "in-dist.jsonl").read_text() == (tmp_path / "fresh" / "in-dist.jsonl").read_text()
