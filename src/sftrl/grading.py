"""Benchmark questions and their grading: the verifier that grades each row, k per data_source, options
optionally shuffled, and the 0/1 grade of every sampled completion."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, replace

from . import registry
from .data import Example
from .rewards import as_completions, load_rewards, score_completions
from .rewards.scorer import reward_columns

_OPTION_LINE = re.compile(r"^([A-J])[).:]\s+(.*\S)\s*$")


def task_verifier(source: str) -> str | None:
    """The verifier a registered data source names for itself ("sandbox" for the sandbox), or None."""
    registered = registry.data_source_of(source)
    return registered[0].verifier if registered is not None else None


def grader_for(example: Example, reward: str | None = None) -> str:
    """The reward that grades `example`: `reward` if given; else the verifier its registered data
    source names ("sandbox" for the sandbox), "choice" when the gold answer is a lone option letter
    (ARC-C, GPQA), and "math" otherwise."""
    if reward:
        return reward
    verifier = task_verifier(example.source)
    if verifier:
        return verifier
    return "choice" if re.fullmatch(r"\(?[A-J]\)?", example.answer.strip()) else "math"


def shuffle_options(text: str, gold: str, rng: random.Random) -> tuple[str, str] | None:
    """Permute the contents of a question's option lines ("A) ...", "B. ...", one per line, labels
    A, B, C, ... in order) and return the new text and the gold's new letter; None when the text has
    no such option block or the gold is not one of its labels."""
    lines = text.split("\n")
    found = [(i, m) for i, m in ((i, _OPTION_LINE.match(line)) for i, line in enumerate(lines)) if m]
    labels = [m.group(1) for _, m in found]
    if len(found) < 2 or labels != [chr(ord("A") + j) for j in range(len(found))]:
        return None
    gold_label = gold.strip().strip("()")
    if gold_label not in labels:
        return None
    order = list(range(len(found)))
    rng.shuffle(order)
    for position, (line_index, match) in enumerate(found):
        source = found[order[position]][1]
        # Keep this line's label and punctuation ("A) "), take another line's option text.
        lines[line_index] = f"{match.group(0)[:match.start(2)]}{source.group(2)}"
    new_gold = labels[order.index(labels.index(gold_label))]
    return "\n".join(lines), new_gold


def _shuffled(example: Example, seed: int) -> Example:
    """`example` with its options shuffled (in its last user message), by a generator fixed by seed and row."""
    rng = random.Random(f"sftrl.shuffle:{seed}:{example.source}:{example.index}")
    if isinstance(example.prompt, str):
        result = shuffle_options(example.prompt, example.answer, rng)
        return example if result is None else replace(example, prompt=result[0], answer=result[1])
    messages = [dict(m) for m in example.prompt]
    for message in reversed(messages):
        if message["role"] == "user":
            result = shuffle_options(message["content"], example.answer, rng)
            if result is None:
                return example
            message["content"] = result[0]
            return replace(example, prompt=messages, answer=result[1])
    return example


@dataclass
class Question:
    """One benchmark question as evaluated: its id in the samples file, source name, grader and k."""

    id: str
    data_source: str
    grader: str
    k: int
    example: Example


def build_questions(
    examples: list[Example],
    dataset_name: str,
    k: int,
    k_by_source: dict[str, int] | None = None,
    reward: str | None = None,
    shuffle_choices: bool = False,
    seed: int = 0,
) -> list[Question]:
    """Questions for the harness: `data_source` from the column (verl) or the dataset name, the grader
    by :func:`grader_for`, k from `k_by_source` (e.g. {"aime24": 32}) or `k`, options optionally shuffled."""
    questions = []
    for example in examples:
        source = str(example.columns.get("data_source") or dataset_name)
        grader = grader_for(example, reward)
        if shuffle_choices and grader == "choice":
            example = _shuffled(example, seed)
        questions.append(Question(id=f"{dataset_name}#{example.index}", data_source=source, grader=grader,
                                  k=(k_by_source or {}).get(source, k), example=example))
    return questions


def grade_samples(questions: list[Question], completions: list[list[str]]) -> list[list[float]]:
    """0/1 grade of every completion (``completions[i]`` are question i's samples), each question by
    its grader; graders run once per grader over all their completions (math in parallel workers)."""
    grades: list[list[float]] = [[0.0] * len(c) for c in completions]
    for name in sorted({q.grader for q in questions}):
        rows = [i for i, q in enumerate(questions) if q.grader == name]
        examples = [questions[i].example for i in rows]
        columns = reward_columns(examples, [len(completions[i]) for i in rows])
        prompts = [questions[i].example.prompt for i in rows for _ in completions[i]]
        flat = as_completions(prompts, [text for i in rows for text in completions[i]])
        scores, _ = score_completions(load_rewards([name]), prompts, flat, columns)
        scores = scores.nan_to_num(0.0).tolist()
        position = 0
        for i in rows:
            grades[i] = [float(s) for s in scores[position:position + len(completions[i])]]
            position += len(completions[i])
    return grades
