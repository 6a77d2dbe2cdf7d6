"""The sandbox task: additions and subtractions solved one step per line, in two families.

``chain`` problems (``Compute 17+5-12.``) are worked out left to right, one partial result per line::

    17+5=22
    22-12=10
    \\boxed{10}

``double`` problems (``Compute (17+5-12)*2.``) put a chain in brackets and double it; the
demonstration works out the chain, then doubles its value on one more line::

    17+5=22
    22-12=10
    10*2=20
    \\boxed{20}

The two families give post-training methods different jobs (see ``sftrl.sandbox.prepare``): the
base model has seen chains, and solves them step by step when it chooses to (reinforcement learning
can amplify that), but it has never seen a bracket or a ``*``, so only demonstrations can teach the
``double`` procedure. Working out the bracket alone gives half the answer, so a model that ignores
``*2`` is never rewarded by chance.

The doubling line is new in two ways at once: a new procedure (double the bracket) written with a
new token (``*``, which the base model gives a probability near zero). ``double_form`` (the config's
``sandbox_double_form``) separates them: ``"times"`` (the default) writes ``10*2=20``, ``"sum"``
writes ``10+10=20``, tokens the base model already produces. Only the training demonstrations
change: prompts, answers, the problems drawn and every evaluation split are the same in both forms,
so runs with either form are evaluated on the same test set.

Splits: ``train``, ``val`` and ``test`` share one difficulty (in-distribution: operands 1-19, 3-5
terms) and are disjoint by construction: every problem is assigned to one side by a hash of its
prompt, so no seed or size can make a test or validation problem appear in training. ``ood`` is
harder: operands up to 29 and 4-6 terms. Every split mixes the families: a fixed share of
``double`` problems (``DEFAULT_SKILL_SHARE``) in the evaluation splits, and ``skill_share`` of the
training rows. A row's ``data_source`` names its split and family (``sandbox-test-double``), so
evaluation reports each family on its own.

Every partial result is a non-negative integer, so answers are written in plain decimal.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass

from sftrl.config import SANDBOX_DOUBLE_FORMS as DOUBLE_FORMS
from sftrl.rewards import last_boxed

SPLITS = ("train", "val", "test", "ood")
FAMILIES = ("chain", "double")
DEFAULT_SIZES = {"train": 5000, "val": 200, "test": 200, "ood": 200}
# Fixed per-split seeds: the default evaluation sets are the same on every machine and run.
DEFAULT_SEEDS = {"train": 0, "val": 3, "test": 1, "ood": 2}
# Share of problems that need the doubling skill, in the evaluation splits (always) and in training
# (unless the run sets another `skill_share`).
DEFAULT_SKILL_SHARE = 0.3
# In-distribution prompts are assigned by hash: bucket 0 -> test, bucket 1 -> val, the rest -> train.
HELD_OUT_BUCKETS = 10
DOUBLE_MIN_INNER = 5
SPLIT_BUCKETS = {"test": {0}, "val": {1}, "train": set(range(2, HELD_OUT_BUCKETS))}


@dataclass(frozen=True)
class Difficulty:
    """How hard a problem is: its number of terms and the range of its operands (inclusive)."""

    min_terms: int
    max_terms: int
    min_operand: int
    max_operand: int

    def __post_init__(self) -> None:
        if not 2 <= self.min_terms <= self.max_terms:
            raise ValueError(f"need 2 <= min_terms <= max_terms, got {self.min_terms}, {self.max_terms}")
        if not 0 <= self.min_operand <= self.max_operand:
            raise ValueError(
                f"need 0 <= min_operand <= max_operand, got {self.min_operand}, {self.max_operand}"
            )


IN_DISTRIBUTION = Difficulty(min_terms=3, max_terms=5, min_operand=1, max_operand=19)
OUT_OF_DISTRIBUTION = Difficulty(min_terms=4, max_terms=6, min_operand=1, max_operand=29)
SPLIT_DIFFICULTY = {"train": IN_DISTRIBUTION, "val": IN_DISTRIBUTION, "test": IN_DISTRIBUTION,
                    "ood": OUT_OF_DISTRIBUTION}


@dataclass(frozen=True)
class Ref:
    """An operand that is the result of an earlier line of the solution."""

    line: int


@dataclass(frozen=True)
class Problem:
    """A problem and its solution program: one ``(left, op, right)`` per demonstration line.

    An operand is an int or a :class:`Ref` to an earlier line's result; the last line's result is
    the answer. ``expression`` is what the prompt shows.
    """

    expression: str
    lines: tuple[tuple[int | Ref, str, int | Ref], ...]
    family: str

    @property
    def prompt(self) -> str:
        return f"Compute {self.expression}."

    @property
    def answer(self) -> str:
        return str(self.results()[-1])

    def results(self, slip_line: int | None = None, slip: int = 0) -> list[int]:
        """Each line's result; ``slip`` is added to line ``slip_line`` and carried into later lines."""
        values: list[int] = []
        for index, (left, op, right) in enumerate(self.lines):
            a, b = (values[x.line] if isinstance(x, Ref) else x for x in (left, right))
            value = a + b if op == "+" else a - b if op == "-" else a * b
            values.append(value + (slip if index == slip_line else 0))
        return values

    def demonstration(self, slip_line: int | None = None, slip: int = 0, double_form: str = "times") -> str:
        """The step-by-step solution; with a slip, that line is wrong and later lines build on it.

        ``double_form`` writes a doubling line ``a*2`` as ``a*2=2a`` (``"times"``) or ``a+a=2a``
        (``"sum"``): both operands of the sum are the (possibly slipped) value being doubled.
        """
        if double_form not in DOUBLE_FORMS:
            raise ValueError(f"double_form must be one of {', '.join(DOUBLE_FORMS)}, got {double_form!r}")
        values = self.results(slip_line, slip)
        text = []
        for (left, op, right), value in zip(self.lines, values):
            a, b = (values[x.line] if isinstance(x, Ref) else x for x in (left, right))
            if op == "*" and double_form == "sum":
                text.append(f"{a}+{a}={value}")
            else:
                text.append(f"{a}{op}{b}={value}")
        text.append(f"\\boxed{{{values[-1]}}}")
        return "\n".join(text)


def _signed_steps(rng: random.Random, start: int, count: int, difficulty: Difficulty) -> list[tuple[str, int]]:
    """``count`` (op, operand) pairs applied to ``start``; a ``-`` that would go below zero becomes ``+``."""
    total, steps = start, []
    for _ in range(count):
        operand = rng.randint(difficulty.min_operand, difficulty.max_operand)
        op = rng.choice("+-")
        if op == "-" and operand > total:
            op = "+"
        total = total + operand if op == "+" else total - operand
        steps.append((op, operand))
    return steps


def chain_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    """A chain worked left to right; every partial result stays non-negative."""
    num_terms = rng.randint(difficulty.min_terms, difficulty.max_terms)
    first = rng.randint(difficulty.min_operand, difficulty.max_operand)
    steps = _signed_steps(rng, first, num_terms - 1, difficulty)
    lines: list[tuple[int | Ref, str, int | Ref]] = []
    for index, (op, operand) in enumerate(steps):
        lines.append((first if index == 0 else Ref(index - 1), op, operand))
    expression = str(first) + "".join(f"{op}{operand}" for op, operand in steps)
    return Problem(expression, tuple(lines), "chain")


def double_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    """``(a±b...)*2``: the chain inside the brackets worked left to right, then one more line that
    doubles its value (``34*2=68``). Drawn again until the bracket's value is between
    ``DOUBLE_MIN_INNER`` (a tiny answer such as 0 is guessed without solving anything) and 49 (so
    the answer stays within the 0-99 pretraining covers)."""
    while True:
        inner = chain_problem(rng, Difficulty(max(2, difficulty.min_terms - 1), max(2, difficulty.max_terms - 1),
                                              difficulty.min_operand, difficulty.max_operand))
        last = Ref(len(inner.lines) - 1)
        problem = Problem(f"({inner.expression})*2", (*inner.lines, (last, "*", 2)), "double")
        if DOUBLE_MIN_INNER <= problem.results()[-2] <= 49:
            return problem


SAMPLERS = {"chain": chain_problem, "double": double_problem}


def sample_problem(rng: random.Random, difficulty: Difficulty, family: str = "chain") -> Problem:
    """Draw one problem of the given difficulty and family."""
    return SAMPLERS[family](rng, difficulty)


def split_of(prompt: str) -> str:
    """Which in-distribution split a prompt belongs to: train, val or test (a stable hash, not Python's)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:8], "big") % HELD_OUT_BUCKETS
    return next(split for split, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def is_held_out(prompt: str) -> bool:
    """Whether an in-distribution prompt is reserved for evaluation (the test or validation split)."""
    return split_of(prompt) != "train"


def _slips_for(problem: Problem, line: int) -> list[int]:
    """The arithmetic slips possible at ``line``: off by one or ten, keeping every result >= 0.

    Every later chain line carries the slip unchanged (its first operand is the previous result), and
    a doubling line doubles it (``a*2`` and ``a+a`` alike: both of the sum's operands are the slipped
    value), so the final answer is always off by the slip or twice it, never right.
    """
    return [s for s in (-10, -1, 1, 10) if min(problem.results(line, s)) >= 0]


def _corrupt(rng: random.Random, problem: Problem, double_form: str = "times") -> str:
    """A wrong demonstration: one slipped line, propagated, whose final answer differs from gold."""
    # +1 on the last line always keeps every result >= 0, so some line always has a slip. The form
    # only changes how lines are written, so the slips (and the rng draws) are the same in both forms.
    lines = [line for line in range(len(problem.lines)) if _slips_for(problem, line)]
    line = rng.choice(lines)
    return problem.demonstration(slip_line=line, slip=rng.choice(_slips_for(problem, line)), double_form=double_form)


def _floor(count: int, share: float) -> int:
    return math.floor(round(count * share, 9))  # round first: 0.3 * 10 is 3.0000000000000004


def make_split(
    split: str,
    n: int | None = None,
    seed: int | None = None,
    demo_error_rate: float = 0.0,
    skill_share: float | None = None,
    double_form: str = "times",
) -> list[dict]:
    """Generate ``n`` rows of a split: ``{"prompt", "answer", "demonstration", "data_source"}``.

    ``split`` is ``"train"``, ``"val"``, ``"test"`` (the same difficulty, disjoint) or ``"ood"``
    (harder). ``n`` and ``seed`` default to the split's fixed size and seed, so the default
    evaluation sets never change. Prompts within a split are unique.

    ``skill_share``: the share of ``double`` problems (default ``DEFAULT_SKILL_SHARE``): exactly
    ``floor(share * n)`` rows, spread evenly, so ``make_split(s, m)`` is a prefix of ``make_split(s, n)``
    for ``m < n``. ``demo_error_rate`` makes exactly
    ``round(rate * n)`` demonstrations wrong (one arithmetic slip propagated to a wrong final
    answer) to study demonstration quality; the rows' ``answer`` stays the correct gold, and the
    problems themselves do not depend on the rate.

    ``double_form``: how demonstrations write the doubling line, ``"times"`` (``10*2=20``, the
    default) or ``"sum"`` (``10+10=20``), wrong ones included; nothing else in the rows changes.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown sandbox split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0.0 <= demo_error_rate <= 1.0:
        raise ValueError(f"demo_error_rate must be in [0, 1], got {demo_error_rate}")
    share = DEFAULT_SKILL_SHARE if skill_share is None else skill_share
    if not 0.0 <= share <= 1.0:
        raise ValueError(f"skill_share must be in [0, 1], got {share}")
    if double_form not in DOUBLE_FORMS:
        raise ValueError(f"double_form must be one of {', '.join(DOUBLE_FORMS)}, got {double_form!r}")
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    seed = DEFAULT_SEEDS[split] if seed is None else seed
    difficulty = SPLIT_DIFFICULTY[split]

    # Separate generators for each family's problems and for slips, so that the problems are the same
    # at every error rate, and a family's problems do not depend on the share. Doubling rows are spread
    # evenly (row i is one when floor((i+1)·share) steps up), so every prefix of a split, such as the
    # first 100 rows that max_eval_examples=100 takes, holds the same share.
    slip_rng = random.Random(f"sandbox-{split}-{seed}-slips")
    families = ["double" if _floor(index + 1, share) > _floor(index, share) else "chain" for index in range(n)]
    problem_rngs = {family: random.Random(f"sandbox-{split}-{seed}-{family}") for family in FAMILIES}
    seen: set[str] = set()

    def draw(family: str) -> Problem:
        for _ in range(100 * n + 1000):
            problem = sample_problem(problem_rngs[family], difficulty, family)
            if problem.prompt in seen:
                continue
            if split != "ood" and split_of(problem.prompt) != split:
                continue  # train, val and test partition the in-distribution problems
            seen.add(problem.prompt)
            return problem
        raise ValueError(f"could not draw {n} distinct {split} problems; ask for fewer")

    problems = [draw(family) for family in families]
    wrong = set(slip_rng.sample(range(n), round(demo_error_rate * n)))
    return [
        {
            "prompt": problem.prompt,
            "answer": problem.answer,
            "demonstration": _corrupt(slip_rng, problem, double_form) if index in wrong
            else problem.demonstration(double_form=double_form),
            "data_source": f"sandbox-{split}-{problem.family}",
        }
        for index, problem in enumerate(problems)
    ]


def verify(completion: str, answer: str) -> float:
    """1.0 iff the last ``\\boxed{...}`` in ``completion`` equals ``answer`` (whitespace stripped)."""
    boxed = last_boxed(completion)
    if boxed is None:
        return 0.0
    return 1.0 if boxed.strip() == answer.strip() else 0.0
