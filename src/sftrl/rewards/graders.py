"""Built-in graders in TRL's reward signature: ``fn(prompts, completions, **columns) -> list[float | None]``.

The "Shared reward and evaluation protocol" of ALGORITHMS.md:

- ``math``: math-verify on the last ``\\boxed{}`` of the answer (the text after ``</think>`` when the
  completion thinks), graded against the ``answer`` column, each grading in the time-limited worker
  pool of :mod:`sftrl.rewards.pool`.
- ``choice``: multiple choice, graded by option letter (A-J, or a digit label 1-9 as some ARC rows use).

``completions`` are strings or TRL's conversational form (a list of message dicts per completion; the
content of the last message is graded). Columns a grader does not use are ignored, as in TRL.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any

from ..errors import RewardError
from .pool import run_with_time_limit, shutdown_pool

logger = logging.getLogger(__name__)

MATH_GRADING_TIMEOUT = 5.0
"""Seconds one math grading (parse + verify of one completion) may take before it scores 0.0."""

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"

# ---------------------------------------------------------------------------------------------------
# Reading completions


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``, braces balanced; None if absent."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1 : j]
    return None  # unbalanced: the answer was cut off


def completion_text(completion: Any) -> str:
    """The text of one completion: a string as is, or the content of the last message of TRL's
    conversational form (``[{"role": "assistant", "content": ...}]``; list-of-parts content joined)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        message = completion
    elif isinstance(completion, Sequence):
        if not completion:
            return ""
        message = completion[-1]
        if not isinstance(message, dict):
            raise RewardError(f"a conversational completion must be a list of message dicts, got {completion!r:.200}")
    else:
        raise RewardError(f"a completion must be a string or a list of messages, got {type(completion).__name__}")
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    # Multimodal-style content: [{"type": "text", "text": ...}, ...]; only the text parts are graded.
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def answer_section(text: str) -> str | None:
    """The part of a completion that holds its answer.

    With a thinking template the answer is what follows the last ``</think>``; a ``<think>`` that is
    opened and never closed means the model never got to answer (None). Without think tags it is the
    whole text.
    """
    close = text.rfind(THINK_CLOSE)
    if close >= 0:
        after = text[close + len(THINK_CLOSE) :]
        return None if THINK_OPEN in after else after
    return None if THINK_OPEN in text else text


def _gold_strings(answer: Sequence[Any] | None, count: int, reward_name: str) -> list[str]:
    """The ``answer`` column as strings, checked to be present and aligned with the completions."""
    if answer is None:
        raise RewardError(f"the {reward_name!r} reward needs the gold answers in an 'answer' column")
    if isinstance(answer, str) or len(answer) != count:
        got = "a string" if isinstance(answer, str) else f"{len(answer)} entries"
        raise RewardError(f"the {reward_name!r} reward got {got} in 'answer' for {count} completions")
    golds = []
    for row, gold in enumerate(answer):
        if gold is None:
            raise RewardError(f"the {reward_name!r} reward: row {row} has no gold answer (answer is None)")
        golds.append(gold if isinstance(gold, str) else str(gold))
    return golds


# ---------------------------------------------------------------------------------------------------
# Math: text normalization shared by the parent (fast path) and the workers (math-verify)

# A thin space, an escaped space or a plain space between digit groups ("1\,000", "1 000") is a
# thousands separator; math-verify would read "1 000" as the product 1*000 = 0.
_DIGIT_GROUP_SPACE = re.compile(r"(?<=\d)(?:\\[,;:! ]|~|\s|\{,\})(?=\d{3}(?!\d))")
# Python-style scientific notation ("1.04e-3", common in Minerva's gold answers): math-verify reads
# it as 1.04*E - 3 with Euler's E, so it is rewritten as LaTeX before parsing.
_E_NOTATION = re.compile(r"(?<![\w.\\])(\d+(?:\.\d*)?|\.\d+)[eE]([-+]?\d+)(?![\w.])")


def _strip_math_delimiters(text: str) -> str:
    """Whitespace, surrounding ``$...$`` (OlympiadBench golds carry them) and a sentence's final period."""
    text = text.strip()
    while len(text) >= 2 and text.startswith("$") and text.endswith("$"):
        text = text[1:-1].strip()
    if text.endswith(".") and not text.endswith(".."):
        text = text[:-1].rstrip()  # "\boxed{70.}": the sentence's period, not a decimal point
    return text


def normalize_math_answer(text: str) -> str:
    """A math answer as math-verify should see it: delimiters stripped, digit-group spaces removed,
    ``1.5e-3`` written as ``1.5\\times10^{-3}``."""
    text = _strip_math_delimiters(text)
    text = _DIGIT_GROUP_SPACE.sub("", text)
    return _E_NOTATION.sub(lambda m: f"{m.group(1)}\\times10^{{{m.group(2)}}}", text)


def math_prediction(completion: str) -> str | None:
    """The predicted answer of a math completion: the last ``\\boxed{}`` of its answer section."""
    section = answer_section(completion)
    return None if section is None else last_boxed(section)


# ---------------------------------------------------------------------------------------------------
# Math: what runs inside a worker process


def _init_math_worker() -> None:
    """Worker initializer: imports math-verify (so no grading pays for it inside its time limit)."""
    import math_verify  # noqa: F401  (heavy: sympy, latex2sympy2)

    # Timeouts are off on purpose (the pool's limit wraps every call); math-verify warns about that.
    logging.getLogger("math_verify").setLevel(logging.ERROR)


def _math_verify_parse(text: str) -> list:
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse(
        text,
        extraction_config=[LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()],
        parsing_timeout=None,  # signal-based; our process-level limit replaces it
    )


_parsed_golds: dict[str, list] = {}  # per worker: a GRPO batch repeats each gold num_generations times


def _parse_gold(gold: str) -> list:
    """Parse a raw gold string robustly: a bare gold like ``(-\\infty, 3]`` or ``2\\sqrt{3}`` is misread
    by the plain-text extractor (as ``3`` or ``2``), so it is boxed first; ``$...$`` and raw are
    fallbacks for golds that do not parse boxed."""
    if gold not in _parsed_golds:
        normalized = normalize_math_answer(gold)
        parsed: list = []
        for candidate in (f"\\boxed{{{normalized}}}", f"${normalized}$", normalized):
            parsed = _math_verify_parse(candidate)
            if parsed:
                break
        if len(_parsed_golds) > 10_000:
            _parsed_golds.clear()
        _parsed_golds[gold] = parsed
    return _parsed_golds[gold]


def _verify_in_worker(prediction: str, gold: str) -> bool:
    """Grade one boxed prediction against one gold; runs in a worker process under the pool's limit."""
    from math_verify import verify

    try:
        gold_parsed = _parse_gold(gold)
        if not gold_parsed:
            return False
        predicted = _math_verify_parse(f"\\boxed{{{normalize_math_answer(prediction)}}}")
        return bool(predicted) and bool(verify(gold_parsed, predicted, timeout_seconds=None))
    except Exception:  # a sympy failure on odd input is a wrong answer, not a crash of training
        logger.debug("math-verify failed on %r vs %r", prediction, gold, exc_info=True)
        return False


# ---------------------------------------------------------------------------------------------------
# Math: grading a batch from the training process


def shutdown_grading_pool() -> None:
    """Stop the math-grading workers (a later grading starts fresh ones)."""
    shutdown_pool()


def verify_in_pool(tasks: list[tuple[str, str]], timeout: float) -> list[float]:
    """``(prediction, gold)`` pairs graded by math-verify in the worker pool, each under ``timeout`` s."""
    verdicts = run_with_time_limit(_verify_in_worker, tasks, timeout, default=False,
                                   initializer=_init_math_worker, describe=lambda task: repr(task[0]))
    return [1.0 if verdict else 0.0 for verdict in verdicts]


def grade_math_batch(
    completions: Sequence[str], golds: Sequence[str], timeout: float | None = None
) -> list[float]:
    """Grade math completions against gold answers: 1.0 if the last ``\\boxed{}`` of each answer
    section is equivalent to its gold under math-verify, else 0.0.

    An exact string match (after stripping whitespace and ``$``) scores 1.0 without math-verify; the
    rest go to the worker pool together, each limited to ``timeout`` seconds (default
    ``MATH_GRADING_TIMEOUT``).
    """
    if len(completions) != len(golds):
        raise RewardError(f"grade_math_batch: {len(completions)} completions but {len(golds)} gold answers")
    timeout = MATH_GRADING_TIMEOUT if timeout is None else timeout
    scores = [0.0] * len(completions)
    to_verify: list[int] = []
    tasks: list[tuple[str, str]] = []
    for i, (completion, gold) in enumerate(zip(completions, golds)):
        prediction = math_prediction(completion)
        if prediction is None or not prediction.strip():
            continue  # no boxed answer (or an unfinished thought): wrong
        if _strip_math_delimiters(prediction) == _strip_math_delimiters(gold):
            scores[i] = 1.0
            continue
        to_verify.append(i)
        tasks.append((prediction, gold))
    if tasks:
        verified = verify_in_pool(tasks, timeout)
        for i, score in zip(to_verify, verified):
            scores[i] = score
    return scores


def grade_math(completion: str, gold: str, timeout: float | None = None) -> float:
    """Grade one math completion against its gold answer (see `grade_math_batch`)."""
    return grade_math_batch([completion], [gold], timeout)[0]


def math_reward(prompts: list, completions: list, answer: list | None = None, **columns: Any) -> list[float | None]:
    """Reward "math": 1.0 when the last ``\\boxed{}`` after any ``</think>`` is equivalent to ``answer``."""
    texts = [completion_text(c) for c in completions]
    return grade_math_batch(texts, _gold_strings(answer, len(texts), "math"))


# ---------------------------------------------------------------------------------------------------
# Multiple choice

_LATEX_TEXT_WRAPPER = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
# An option label at the start of a string: "B", "(B)", "B)", "B. Paris", "[B]"; a digit label must not
# be the start of a number ("3.5", "10").
_LEADING_LABEL = re.compile(r"^[\s(\[]*([A-Ja-j]|[1-9])(?![\w]|\.\d)")
# "The answer is (C).", "Answer: B", "ANSWER: C", "**Answer:** B", "the answer is option C". A bare
# label must be upper case ("the answer is a ..." is English); a lower-case one needs parentheses.
_ANSWER_PHRASE = re.compile(
    r"(?i:answer)(?:\s+(?i:is|would\s+be|should\s+be|must\s+be))?[\s:*$]*(?:(?i:option|choice)\s*)?[\s:*$]*"
    r"(?:\(\s*([A-Ja-j]|[1-9])\s*\)|([A-J]|[1-9])(?![\w]|\.\d))"
)
_LONE_LABEL = re.compile(r"^\s*\(?([A-Ja-j]|[1-9])\)?\.?\s*$")


def _unwrap_latex_text(text: str) -> str:
    """``\\text{(B)}`` -> ``(B)``, nested wrappers included; ``$`` and ``*`` (markdown bold) dropped."""
    previous = None
    while previous != text:
        previous, text = text, _LATEX_TEXT_WRAPPER.sub(r"\1", text)
    return text.replace("$", "").replace("*", "")


def choice_label(text: str) -> str | None:
    """The option label that ``text`` starts with, upper-cased: "(b)" -> "B", "B. Paris" -> "B"."""
    match = _LEADING_LABEL.match(_unwrap_latex_text(text))
    return match.group(1).upper() if match else None


def choice_prediction(completion: str) -> str | None:
    """The option a multiple-choice completion picks: its last ``\\boxed{}`` if it has one, otherwise
    the last "answer is X" / "Answer: X" phrase, otherwise an answer that is only a label."""
    section = answer_section(completion)
    if section is None:
        return None
    boxed = last_boxed(section)
    if boxed is not None:
        return choice_label(boxed)
    phrases = list(_ANSWER_PHRASE.finditer(_unwrap_latex_text(section)))
    if phrases:
        last = phrases[-1]
        return (last.group(1) or last.group(2)).upper()
    lone = _LONE_LABEL.match(section)
    return lone.group(1).upper() if lone else None


def choice_reward(prompts: list, completions: list, answer: list | None = None, **columns: Any) -> list[float | None]:
    """Reward "choice": 1.0 when the completion picks the gold option (a letter such as "B", "(B)", "\\text{B}")."""
    texts = [completion_text(c) for c in completions]
    golds = _gold_strings(answer, len(texts), "choice")
    scores: list[float | None] = []
    for row, (text, gold) in enumerate(zip(texts, golds)):
        # Strict on golds (a label and nothing else): free-text golds mean the wrong reward was chosen.
        gold_label = _LONE_LABEL.match(_unwrap_latex_text(gold))
        if gold_label is None:
            raise RewardError(f"the 'choice' reward: row {row}'s gold answer {gold!r} is not an option label (A-J)")
        scores.append(1.0 if choice_prediction(text) == gold_label.group(1).upper() else 0.0)
    return scores
