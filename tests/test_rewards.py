"""Reward functions: math-verify grading (with its time limit), multiple choice, the sandbox verifier,
loading reward functions by spec, and TRL-style combination of several reward functions."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import math
import random
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sftrl import rewards
from sftrl.rewards import (
    RewardError,
    choice_reward,
    grade_math,
    grade_math_batch,
    load_reward,
    load_rewards,
    math_reward,
    score_completions,
)
from sftrl.rewards import graders, pool as grading_pool
from sftrl.sandbox.plugin import sandbox_reward

BENCHMARKS = Path(__file__).resolve().parents[2] / "shared" / "benchmarks"

# An answer that math-verify/sympy cannot finish with its own timeouts off: verify() evaluates
# 9^(9^9), an integer of ~370 million digits, in one C call (measured: still running after 300 s).
HANGING_ANSWER = r"\boxed{9^{9^{9}}}"


def grades(pairs: list[tuple[str, str]]) -> list[float]:
    """Grade (completion, gold) pairs in one batch (one trip to the worker pool for the whole test)."""
    return grade_math_batch([completion for completion, _ in pairs], [gold for _, gold in pairs])


# ---------------------------------------------------------------------------------------------------
# math


def test_math_equivalent_forms_are_correct():
    pairs = [
        (r"So the answer is $\boxed{\frac{1}{2}}$.", r"\frac{1}{2}"),
        (r"\boxed{\frac{1}{2}}", "0.5"),
        (r"\boxed{\dfrac12}", r"\frac{1}{2}"),
        (r"\boxed{0.5}", r"\frac12"),
        (r"\boxed{(-\infty,3]}", r"(-\infty, 3]"),
        (r"\boxed{1,000}", "1000"),
        (r"\boxed{1000}", r"1,\!000"),
        (r"\boxed{1\,000}", "1000"),  # thin-space digit groups (math-verify alone reads 1*000 = 0)
        (r"\boxed{1 000 000}", "1000000"),
        (r"\boxed{1.04 \times 10^{-3}}", "1.04e-3"),  # Minerva's Python-style golds
        (r"\boxed{70.}", "70"),  # the sentence's period inside the box
        (r"\boxed{x+1}", "1+x"),
        (r"\boxed{\text{(C)}}", r"\text{(C)}"),
        (r"\boxed{(3,2)}", "$(3,2)$"),  # OlympiadBench golds carry $...$
    ]
    assert grades(pairs) == [1.0] * len(pairs)


def test_math_wrong_or_missing_answers_score_zero():
    pairs = [
        (r"\boxed{(-\infty,3)}", r"(-\infty, 3]"),  # open where the gold is closed
        (r"\boxed{71}", "70"),
        (r"\boxed{\frac{1}{3}}", "0.5"),
        ("The answer is 70.", "70"),  # no \boxed{}: no answer
        (r"\boxed{}", "70"),
        (r"\boxed{70", "70"),  # cut off mid-answer
        (r"\boxed{3.89 \times 10^{-10}}", "5e-10"),
    ]
    assert grades(pairs) == [0.0] * len(pairs)


def test_math_grades_the_last_boxed_and_only_after_thinking():
    pairs = [
        (r"first \boxed{70}, on reflection \boxed{3}", "3"),
        (r"first \boxed{70}, on reflection \boxed{3}", "70"),
        (r"<think>maybe \boxed{1}</think> so \boxed{2}", "2"),
        (r"<think>maybe \boxed{1}</think> so \boxed{2}", "1"),
        (r"<think>\boxed{1}</think> no boxed answer after thinking", "1"),
        (r"<think>still thinking... \boxed{2}", "2"),  # unclosed think: never answered
        (r"prompt opened the think tag ... </think> \boxed{2}", "2"),
    ]
    assert grades(pairs) == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]


def test_exact_match_needs_no_worker_pool():
    rewards.shutdown_grading_pool()
    assert grade_math(r"\boxed{ \frac{3}{4} }", r"\frac{3}{4}") == 1.0
    assert grade_math("no answer", "5") == 0.0
    assert grading_pool._pool is None


def test_hanging_answer_times_out_kills_its_worker_and_grading_goes_on():
    assert grade_math(r"\boxed{\frac{2}{4}}", "0.5") == 1.0  # the pool is started and warm
    workers_before = list(grading_pool._pool.executor._processes.values())
    timeout = 1.5
    started = time.monotonic()
    assert grade_math(HANGING_ANSWER, "1", timeout=timeout) == 0.0
    elapsed = time.monotonic() - started
    assert elapsed < timeout + 2.0, f"grading took {elapsed:.1f}s with a {timeout}s limit"
    # Killed: a hung worker would never exit. is_alive() may still say True for a moment after the kill,
    # while the executor's own thread reaps the same process (seen once in CI), so allow it a few seconds.
    deadline = time.monotonic() + 5.0
    while any(process.is_alive() for process in workers_before) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workers_before and not any(process.is_alive() for process in workers_before)
    # Gradings in the same batch as the hanging one are unaffected, and a fresh pool takes over.
    assert grade_math_batch([r"\boxed{2/4}", HANGING_ANSWER, r"\boxed{0.25}"], ["0.5", "1", "0.5"], timeout) == [
        1.0,
        0.0,
        0.0,
    ]
    assert grade_math(r"\boxed{\sqrt{4}}", "2") == 1.0


def test_math_reward_takes_trl_arguments():
    completions = [
        [{"role": "assistant", "content": r"\boxed{\frac{1}{2}}"}],
        [{"role": "assistant", "content": r"\boxed{7}"}],
        [{"role": "assistant", "content": [{"type": "text", "text": r"\boxed{7}"}]}],
    ]
    prompts = [[{"role": "user", "content": "q"}]] * 3
    scores = math_reward(prompts=prompts, completions=completions, answer=["0.5", "8", "7"], level=[1, 2, 3])
    assert scores == [1.0, 0.0, 1.0]
    with pytest.raises(RewardError, match="'answer' column"):
        math_reward(prompts=["q"], completions=["a"])
    with pytest.raises(RewardError, match="1 entries"):
        math_reward(prompts=["q", "q"], completions=["a", "b"], answer=["1"])


# ---------------------------------------------------------------------------------------------------
# multiple choice


def test_choice_reward_reads_the_letter_in_many_forms():
    cases = [
        ("The answer is (C).", "C", 1.0),
        (r"so \boxed{\text{(B)}}", "B", 1.0),
        (r"\boxed{B. Paris}", "(B)", 1.0),
        (r"\boxed{B)}", r"\text{B}", 1.0),
        (r"\boxed{b}", "B", 1.0),
        ("the answer is (d)", "D", 1.0),
        ("ANSWER: A", "A", 1.0),
        ("**Answer:** B", "B", 1.0),
        ("The correct answer is option C, because", "C", 1.0),
        ("B", "B", 1.0),
        (r"\boxed{A} hmm, no: \boxed{D}", "D", 1.0),
        (r"\boxed{A} hmm, no: \boxed{D}", "A", 0.0),
        ("<think>the answer is A</think> Answer: D", "D", 1.0),
        ("<think>the answer is A", "A", 0.0),  # never finished thinking
        ("the answer is a planet", "A", 0.0),  # the article "a" is not an option
        ("I have no idea.", "C", 0.0),
        (r"\boxed{Paris}", "B", 0.0),
        (r"\boxed{3}", "3", 1.0),  # ARC rows with numbered options
        (r"\boxed{3.5}", "3", 0.0),
    ]
    completions = [completion for completion, _, _ in cases]
    golds = [gold for _, gold, _ in cases]
    scores = choice_reward(prompts=[""] * len(cases), completions=completions, answer=golds, extra=[0] * len(cases))
    assert scores == [expected for _, _, expected in cases]


def test_choice_reward_rejects_a_gold_that_is_not_a_letter():
    with pytest.raises(RewardError, match=r"row 0.*'Paris' is not an option label"):
        choice_reward(prompts=["q"], completions=[r"\boxed{B}"], answer=["Paris"])


# ---------------------------------------------------------------------------------------------------
# sandbox


def test_sandbox_reward_is_exact_match_of_the_last_boxed():
    completions = ["37+45=82\n82-12=70\n\\boxed{70}", "\\boxed{70.0}", [{"role": "assistant", "content": "\\boxed{5}"}]]
    assert sandbox_reward(prompts=[""] * 3, completions=completions, answer=["70", "70", "5"]) == [1.0, 0.0, 1.0]


# ---------------------------------------------------------------------------------------------------
# loading reward functions


def test_load_builtin_rewards_by_name():
    assert load_reward("math") is math_reward
    assert load_reward(" choice ") is choice_reward
    assert load_rewards(["math", "sandbox"]) == [("math", math_reward), ("sandbox", sandbox_reward)]
    assert [name for name, _ in load_rewards(["math", "math"])] == ["math", "math_2"]  # metrics stay apart


def test_load_reward_from_module_and_from_file(tmp_path, monkeypatch):
    source = textwrap.dedent(
        """
        def length_reward(prompts, completions, **kwargs):
            return [float(len(c)) for c in completions]
        """
    )
    (tmp_path / "my_rewards_mod.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    from_module = load_reward("my_rewards_mod:length_reward")
    assert from_module(prompts=["p"], completions=["abc"]) == [3.0]

    file = tmp_path / "sub dir" / "file_rewards.py"
    file.parent.mkdir()
    file.write_text(source)
    from_file = load_reward(f"{file}:length_reward")
    assert from_file(prompts=["p"], completions=["ab"]) == [2.0]
    assert from_file.__module__ != from_module.__module__
    assert [name for name, _ in load_rewards(["math", f"{file}:length_reward"])] == ["math", "length_reward"]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("maths", r"unknown reward function 'maths'.*math, choice, coin, sandbox"),
        ("my_pkg.rewards", r"'my_pkg.rewards': missing the ':function' part"),
        ("rewards.py:", r"'rewards.py:': missing the function part"),
        ("no/such/file.py:fn", r"'no/such/file.py:fn': file 'no/such/file.py' not found"),
        ("no_such_module_xyz:fn", r"'no_such_module_xyz:fn': importing module 'no_such_module_xyz' failed"),
        ("sftrl.rewards:no_such_function", r"'sftrl.rewards:no_such_function': .* no attribute 'no_such_function'"),
        ("sftrl.rewards:MATH_GRADING_TIMEOUT", r"'MATH_GRADING_TIMEOUT' is a float, not callable"),
    ],
)
def test_load_reward_errors_name_the_spec(spec, message):
    with pytest.raises(RewardError, match=message) as caught:
        load_reward(spec)
    assert isinstance(caught.value, ValueError)


def test_load_reward_from_a_file_that_fails_to_import(tmp_path):
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(RewardError, match=r"broken.py:fn'.*importing .* failed.*boom at import") as caught:
        load_reward(f"{broken}:fn")
    assert isinstance(caught.value.__cause__, RuntimeError)


# ---------------------------------------------------------------------------------------------------
# score_completions


def constant_reward(value):
    def reward(prompts, completions, **kwargs):
        return [value] * len(completions)

    return reward


def test_score_completions_weights_and_metrics():
    def first_letter_reward(prompts, completions, answer, **kwargs):
        return [1.0 if c.startswith(a) else 0.0 for c, a in zip(completions, answer)]

    fns = [("letter", first_letter_reward), ("half", constant_reward(0.5))]
    total, metrics = score_completions(
        fns, ["p"] * 4, ["ab", "b", "a", "c"], {"answer": ["a", "a", "a", "a"], "unused": [1, 2, 3, 4]}, [2.0, -1.0]
    )
    assert total.dtype == torch.float32 and total.shape == (4,)
    assert total.tolist() == [1.5, -0.5, 1.5, -0.5]
    assert metrics["rewards/letter/mean"] == 0.5
    assert metrics["rewards/letter/std"] == pytest.approx(torch.tensor([1.0, 0, 1, 0]).std().item())
    assert metrics["rewards/half/mean"] == 0.5 and metrics["rewards/half/std"] == 0.0


def test_score_completions_treats_none_like_trl():
    def only_even_rows(prompts, completions, **kwargs):
        return [1.0 if i % 2 == 0 else None for i in range(len(completions))]

    def only_row_zero(prompts, completions, **kwargs):
        return [3.0] + [None] * (len(completions) - 1)

    total, metrics = score_completions(
        [("even", only_even_rows), ("zero", only_row_zero)], ["p"] * 4, ["c"] * 4, {}, [1.0, 1.0]
    )
    # nansum over functions; a row no function scored is NaN (TRL marks it unscorable).
    assert total[0] == 4.0 and total[2] == 1.0
    assert math.isnan(total[1]) and math.isnan(total[3])
    assert metrics["rewards/even/mean"] == 1.0 and metrics["rewards/even/std"] == 0.0
    assert metrics["rewards/zero/mean"] == 3.0 and math.isnan(metrics["rewards/zero/std"])  # one value: no std


def test_score_completions_rejects_bad_returns():
    with pytest.raises(RewardError, match=r"'short' returned 1 rewards, but 2 were expected"):
        score_completions([("short", lambda prompts, completions, **kw: [1.0])], ["p", "p"], ["a", "b"], {})
    with pytest.raises(RewardError, match=r"'scalar' returned float, expected a list"):
        score_completions([("scalar", lambda prompts, completions, **kw: 1.0)], ["p"], ["a"], {})
    with pytest.raises(RewardError, match=r"2 weights for 1 reward functions"):
        score_completions([("one", constant_reward(1.0))], ["p"], ["a"], {}, [1.0, 2.0])
    with pytest.raises(RewardError, match=r"column 'answer' has 1 values for 2 completions"):
        score_completions([("one", constant_reward(1.0))], ["p", "p"], ["a", "b"], {"answer": ["x"]})


def test_score_completions_with_conversational_completions_and_builtins():
    prompts = [[{"role": "user", "content": "What is 1/2 + 1/4?"}]] * 2
    completions = [
        [{"role": "assistant", "content": r"<think>1/2+1/4</think> \boxed{\frac{3}{4}}"}],
        [{"role": "assistant", "content": r"\boxed{\frac{2}{6}}"}],
    ]
    total, metrics = score_completions(load_rewards(["math"]), prompts, completions, {"answer": ["0.75", "0.75"]})
    assert total.tolist() == [1.0, 0.0]
    assert metrics["rewards/math/mean"] == 0.5


# ---------------------------------------------------------------------------------------------------
# the real benchmark gold answers (beside the repository on the team's machines only)


def read_benchmark(name: str):
    path = BENCHMARKS / name
    if not path.exists():
        pytest.skip(f"{path} is not here (benchmarks exist only on the team's machines)")
    pandas = pytest.importorskip("pandas")
    return pandas.read_parquet(path)


def derangement(count: int, rng: random.Random) -> list[int]:
    """A permutation with no fixed point: every row gets some other row's gold."""
    order = list(range(count))
    while any(i == j for i, j in enumerate(order)):
        rng.shuffle(order)
    return order


def test_benchmark_math_golds_grade_against_themselves_not_each_other():
    frame = read_benchmark("math_reasoning.parquet")
    rng = random.Random(0)
    rows = []
    for _, group in sorted(frame.groupby("data_source")):  # ~60 rows, 10 from every source
        rows += rng.sample(list(group.index), 10)
    golds = [frame.loc[row, "reward_model"]["ground_truth"] for row in rows]

    assert sum(grade_math_batch([f"\\boxed{{{gold}}}" for gold in golds], golds)) / len(golds) >= 0.97
    # The public path above matches exact strings without math-verify; grade through it as well.
    through_math_verify = graders.verify_in_pool([(gold, gold) for gold in golds], timeout=5.0)
    assert sum(through_math_verify) / len(golds) >= 0.97
    shuffled = [f"\\boxed{{{golds[j]}}}" for j in derangement(len(golds), rng)]
    assert sum(grade_math_batch(shuffled, golds)) / len(golds) <= 0.1


@pytest.mark.parametrize("name", ["arc_c.parquet", "gpqa_diamond.parquet"])
def test_benchmark_choice_golds(name):
    frame = read_benchmark(name)
    golds = [reward_model["ground_truth"] for reward_model in frame["reward_model"]]
    count = len(golds)

    def mean_choice_reward(completions):
        return sum(choice_reward(prompts=[""] * count, completions=completions, answer=golds)) / count

    assert mean_choice_reward([f"Thus \\boxed{{{gold}}}" for gold in golds]) == 1.0
    assert mean_choice_reward([f"<think>hmm</think>The answer is ({gold})." for gold in golds]) == 1.0
    shuffled = [f"\\boxed{{{golds[j]}}}" for j in derangement(count, random.Random(0))]
    assert mean_choice_reward(shuffled) <= 0.3
