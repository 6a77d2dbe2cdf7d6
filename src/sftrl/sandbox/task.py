"""The sandbox task: chains of additions and subtractions, solved one step per line.

A problem is a chain such as ``Compute 37+45-12.``; its demonstration works it out left to right,
one partial result per line, and ends with the answer boxed::

    37+45=82
    82-12=70
    \\boxed{70}

It is a genuine multi-step task (every step depends on the previous partial result, and a slip in
any step propagates to the final answer), it has an exact verifier, and its sequences are short
(under ~80 characters), so a tiny character-level model can learn it on a CPU in minutes.

Splits:

- ``train`` and ``test`` share one difficulty (in-distribution: 2-digit operands, 3-4 terms). They
  are disjoint by construction: every problem is assigned to one side by a hash of its prompt, so
  no seed or size can make a test problem appear in training.
- ``ood`` is harder: longer operands (up to 3 digits) and more steps (5-6 terms).

Running totals never go negative (a ``-`` that would go below zero becomes a ``+``), so answers are
non-negative integers written in plain decimal.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from sftrl.rewards import last_boxed

SPLITS = ("train", "test", "ood")
DEFAULT_SIZES = {"train": 5000, "test": 200, "ood": 200}
# Fixed per-split seeds: the default test and ood sets are the same on every machine and run.
DEFAULT_SEEDS = {"train": 0, "test": 1, "ood": 2}
# One in HELD_OUT_BUCKETS of all in-distribution prompts (by hash) is reserved for the test split.
HELD_OUT_BUCKETS = 10


@dataclass(frozen=True)
class Difficulty:
    """How hard a chain problem is: its number of terms and the range of its operands (inclusive)."""

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
SPLIT_DIFFICULTY = {"train": IN_DISTRIBUTION, "test": IN_DISTRIBUTION, "ood": OUT_OF_DISTRIBUTION}


@dataclass(frozen=True)
class Problem:
    """One chain: the first operand, then (operator, operand) pairs applied left to right."""

    first: int
    steps: tuple[tuple[str, int], ...]

    @property
    def prompt(self) -> str:
        chain = str(self.first) + "".join(f"{op}{operand}" for op, operand in self.steps)
        return f"Compute {chain}."

    @property
    def answer(self) -> str:
        return str(self.partial_results()[-1])

    def partial_results(self, slip_step: int | None = None, slip: int = 0) -> list[int]:
        """Running total after each step; ``slip`` is added to step ``slip_step`` and carried on."""
        total = self.first
        results = []
        for index, (op, operand) in enumerate(self.steps):
            total = total + operand if op == "+" else total - operand
            if index == slip_step:
                total += slip
            results.append(total)
        return results

    def demonstration(self, slip_step: int | None = None, slip: int = 0) -> str:
        """The step-by-step solution; with a slip, that step is wrong and later steps build on it."""
        lines = []
        previous = self.first
        for (op, operand), result in zip(self.steps, self.partial_results(slip_step, slip)):
            lines.append(f"{previous}{op}{operand}={result}")
            previous = result
        lines.append(f"\\boxed{{{previous}}}")
        return "\n".join(lines)


def sample_problem(rng: random.Random, difficulty: Difficulty) -> Problem:
    """Draw one problem of the given difficulty; the running total never goes negative."""
    num_terms = rng.randint(difficulty.min_terms, difficulty.max_terms)
    first = rng.randint(difficulty.min_operand, difficulty.max_operand)
    total = first
    steps = []
    for _ in range(num_terms - 1):
        operand = rng.randint(difficulty.min_operand, difficulty.max_operand)
        op = rng.choice("+-")
        if op == "-" and operand > total:
            op = "+"  # keep every partial result a non-negative integer
        total = total + operand if op == "+" else total - operand
        steps.append((op, operand))
    return Problem(first=first, steps=tuple(steps))


def is_held_out(prompt: str) -> bool:
    """Whether an in-distribution prompt belongs to the test side (a stable hash, not Python's)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % HELD_OUT_BUCKETS == 0


def _slip_for(rng: random.Random, problem: Problem, step: int) -> int:
    """An arithmetic slip for ``step``: off by one or ten, keeping every later partial result >= 0.

    The slip is carried through the remaining additions and subtractions unchanged, so the final
    answer is off by exactly ``slip`` (never zero): the demonstration is always wrong.
    """
    lowest_from_step = min(problem.partial_results()[step:])
    candidates = [slip for slip in (-10, -1, 1, 10) if lowest_from_step + slip >= 0]
    return rng.choice(candidates)


def _corrupt(rng: random.Random, problem: Problem) -> str:
    """A wrong demonstration: one slipped step, propagated, whose final answer differs from gold."""
    step = rng.randrange(len(problem.steps))
    slip = _slip_for(rng, problem, step)
    return problem.demonstration(slip_step=step, slip=slip)


def make_split(
    split: str,
    n: int | None = None,
    seed: int | None = None,
    demo_error_rate: float = 0.0,
) -> list[dict]:
    """Generate ``n`` rows of a split: ``{"prompt", "answer", "demonstration", "data_source"}``.

    ``split`` is ``"train"``, ``"test"`` (same difficulty as train, disjoint from it) or ``"ood"``
    (harder). ``n`` and ``seed`` default to the split's fixed size and seed, so the default test and
    ood sets never change. Prompts within a split are unique.

    ``demo_error_rate`` makes exactly ``round(rate * n)`` demonstrations wrong (one arithmetic slip
    propagated to a wrong final answer) to study demonstration quality; the rows' ``answer`` stays
    the correct gold, and the problems themselves do not depend on the rate.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown sandbox split {split!r}; expected one of {', '.join(SPLITS)}")
    if not 0.0 <= demo_error_rate <= 1.0:
        raise ValueError(f"demo_error_rate must be in [0, 1], got {demo_error_rate}")
    n = DEFAULT_SIZES[split] if n is None else n
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    seed = DEFAULT_SEEDS[split] if seed is None else seed
    difficulty = SPLIT_DIFFICULTY[split]

    # Separate generators for problems and for slips, so the problems are the same at every rate.
    problem_rng = random.Random(f"sandbox-{split}-{seed}")
    slip_rng = random.Random(f"sandbox-{split}-{seed}-slips")

    problems: list[Problem] = []
    seen: set[str] = set()
    attempts = 0
    while len(problems) < n:
        attempts += 1
        if attempts > 100 * n + 1000:
            raise ValueError(f"could not draw {n} distinct {split} problems; ask for fewer")
        problem = sample_problem(problem_rng, difficulty)
        prompt = problem.prompt
        if prompt in seen:
            continue
        if split != "ood" and is_held_out(prompt) != (split == "test"):
            continue  # train and test partition the in-distribution problems
        seen.add(prompt)
        problems.append(problem)

    wrong = set(slip_rng.sample(range(n), round(demo_error_rate * n)))
    return [
        {
            "prompt": problem.prompt,
            "answer": problem.answer,
            "demonstration": _corrupt(slip_rng, problem) if index in wrong else problem.demonstration(),
            "data_source": f"sandbox-{split}",
        }
        for index, problem in enumerate(problems)
    ]


def verify(completion: str, answer: str) -> float:
    """1.0 iff the last ``\\boxed{...}`` in ``completion`` equals ``answer`` (whitespace stripped)."""
    boxed = last_boxed(completion)
    if boxed is None:
        return 0.0
    return 1.0 if boxed.strip() == answer.strip() else 0.0
