"""Reward functions in TRL's signature: ``fn(prompts, completions, **columns) -> list[float | None]``.

Built-in verifiers (the "Shared reward and evaluation protocol" of ALGORITHMS.md):

- ``math``: math-verify on the last ``\\boxed{}`` of the answer (the text after ``</think>`` when the
  completion thinks), graded against the ``answer`` column.
- ``choice``: multiple choice, graded by option letter (A-J, or a digit label 1-9 as some ARC rows use).
- ``sandbox``: exact match of the last ``\\boxed{}`` for the built-in sandbox task.

``completions`` are strings or TRL's conversational form (a list of message dicts per completion; the
content of the last message is graded). Every dataset column arrives as a keyword argument; columns a
function does not use are ignored, as in TRL.

math-verify guards its sympy calls with ``signal.alarm``, which only works in the main thread and
cannot stop a C-level computation such as a huge integer power. So its own timeouts are turned off
and every grading runs in a small pool of worker processes under a wall-clock limit of ours; a
grading that overruns scores 0.0 and its worker is killed, so one pathological answer can never hang
training. The workers are spawned (forking a process that holds CUDA is unsafe), so a script that
grades math at import time must guard its entry point with ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import importlib.util
import itertools
import logging
import math
import multiprocessing
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported lazily: math-grading worker processes import this module too
    import torch

logger = logging.getLogger(__name__)

RewardFunction = Callable[..., list]
"""``fn(prompts, completions, **columns) -> list[float | None]``, one entry per completion."""

MATH_GRADING_TIMEOUT = 5.0
"""Seconds one math grading (parse + verify of one completion) may take before it scores 0.0."""

MAX_GRADING_WORKERS = min(2, os.cpu_count() or 1)
"""Worker processes for math grading. Small on purpose: grading is cheap next to generation."""

WORKER_STARTUP_LIMIT = 120.0
"""Seconds without any grading starting or finishing after which the workers are declared broken."""

_POLL_INTERVAL = 0.05  # how often the grading loop looks for newly started gradings (seconds)

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


class RewardError(ValueError):
    """A reward function could not be loaded or called, or returned something unusable."""


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

_worker_started_queue: Any = None  # the pool's "grading started" channel, set by the initializer


def _init_grading_worker(started_queue: Any) -> None:
    """Worker initializer: imports math-verify (so no grading pays for it inside its time limit)."""
    global _worker_started_queue
    _worker_started_queue = started_queue
    import math_verify  # noqa: F401  (heavy: sympy, latex2sympy2)

    # Timeouts are off on purpose (ours wrap every call); math-verify warns about that once per process.
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


def _verify_in_worker(task_id: int, prediction: str, gold: str) -> bool:
    """Grade one boxed prediction against one gold; runs in a worker process under our time limit."""
    from math_verify import verify

    _worker_started_queue.put(task_id)  # synchronous pipe write: visible even if sympy then hogs the GIL
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
# Math: the worker pool, as seen from the training process


class _GradingPool:
    """Worker processes running math-verify, and the channel on which they announce each start.

    Knowing when each grading actually starts (not when it was queued) is what lets a whole batch be
    submitted at once while each grading still gets its own full time limit.
    """

    def __init__(self, max_workers: int) -> None:
        # spawn: forking a process that holds CUDA, tokenizer threads or a training loop is unsafe.
        context = multiprocessing.get_context("spawn")
        self.started_queue = context.SimpleQueue()
        self.executor = concurrent.futures.ProcessPoolExecutor(
            max_workers=max_workers,
            mp_context=context,
            initializer=_init_grading_worker,
            initargs=(self.started_queue,),
        )

    def drain_started(self) -> list[int]:
        """Task ids whose grading has started since the last call (never blocks)."""
        started = []
        while not self.started_queue.empty():
            started.append(self.started_queue.get())
        return started

    def kill(self) -> None:
        """Stop every worker now, hung or not, and release the executor."""
        # ProcessPoolExecutor has no public way to kill busy workers before Python 3.14.
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for process in processes:
            process.terminate()  # SIGTERM's default action ends even a C-level sympy/bigint loop
        self.executor.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.join(timeout=2.0)
            if process.is_alive():
                process.kill()
                process.join(timeout=2.0)
        self.started_queue.close()


_MAIN_GUARD_HINT = (
    "They are spawned processes, which re-import the main script: a script that grades math must guard "
    "its entry point with `if __name__ == '__main__':`."
)

_pool: _GradingPool | None = None
_pool_lock = threading.Lock()  # one batch at a time uses the pool; also guards creating/killing it
_task_ids = itertools.count()  # unique across pools and batches, so a stale "started" is never misread


def _current_pool() -> _GradingPool:
    global _pool
    if _pool is not None and getattr(_pool.executor, "_broken", False):
        _discard_pool()  # a worker died between batches (killed from outside): start over
    if _pool is None:
        _pool = _GradingPool(MAX_GRADING_WORKERS)
    return _pool


def _discard_pool() -> None:
    global _pool
    if _pool is not None:
        _pool.kill()
        _pool = None


def shutdown_grading_pool() -> None:
    """Stop the math-grading workers (a later grading starts fresh ones)."""
    with _pool_lock:
        _discard_pool()


def _grade_in_pool(tasks: list[tuple[str, str]], timeout: float) -> list[float]:
    """Run ``(prediction, gold)`` gradings in the worker pool, each under ``timeout`` seconds.

    All gradings are submitted at once. A grading that runs past its limit scores 0.0; the pool is
    then killed (its worker may be stuck in C code forever) and the gradings that had not finished
    are resubmitted to a fresh pool. A worker crash scores the gradings that were running 0.0 and
    retries the rest the same way.
    """
    scores = [0.0] * len(tasks)
    remaining = list(range(len(tasks)))
    while remaining:
        pool = _current_pool()
        futures: dict[concurrent.futures.Future, int] = {}  # future -> task index
        task_of_id: dict[int, int] = {}  # task id (as announced by a starting worker) -> task index
        for i in remaining:
            task_id = next(_task_ids)
            task_of_id[task_id] = i
            futures[pool.executor.submit(_verify_in_worker, task_id, *tasks[i])] = i
        started_at: dict[int, float] = {}  # task index -> when its grading started
        finished: set[int] = set()
        failed: set[int] = set()  # timed out, or running when the pool broke
        pending = set(futures)
        last_progress = time.monotonic()
        while pending:
            now = time.monotonic()
            for task_id in pool.drain_started():
                if task_id in task_of_id:
                    started_at.setdefault(task_of_id[task_id], now)
                    last_progress = now
            running = [futures[f] for f in pending if futures[f] in started_at]
            overdue = [i for i in running if now - started_at[i] > timeout]
            if overdue:
                for i in overdue:
                    logger.warning("math grading timed out after %.1fs (scored 0.0): %.200r", timeout, tasks[i][0])
                failed.update(overdue)
                break
            if now - last_progress > max(WORKER_STARTUP_LIMIT, timeout):
                _discard_pool()
                raise RuntimeError(f"math grading workers did not start a grading in {WORKER_STARTUP_LIMIT:.0f}s. "
                                   + _MAIN_GUARD_HINT)
            next_deadline = min((started_at[i] + timeout for i in running), default=now + _POLL_INTERVAL)
            wait_for = min(max(next_deadline - now, 0.0), _POLL_INTERVAL)
            done, pending = concurrent.futures.wait(
                pending, timeout=wait_for, return_when=concurrent.futures.FIRST_COMPLETED
            )
            for future in done:
                i = futures[future]
                last_progress = time.monotonic()
                try:
                    scores[i] = 1.0 if future.result() else 0.0
                    finished.add(i)
                except BrokenProcessPool:
                    # A worker died (killed from outside, out of memory). What it was running is lost;
                    # what had not started yet is retried on a fresh pool.
                    if i in started_at:
                        logger.warning("math grading worker died (scored 0.0): %.200r", tasks[i][0])
                        failed.add(i)
                except Exception:  # the worker catches grading errors itself; this is anything else
                    logger.warning("math grading failed (scored 0.0): %.200r", tasks[i][0], exc_info=True)
                    finished.add(i)
        unfinished = [i for i in remaining if i not in finished and i not in failed]
        if failed or unfinished:
            _discard_pool()
        if unfinished and not failed and not finished:
            raise RuntimeError("math grading workers died before grading anything. " + _MAIN_GUARD_HINT)
        remaining = unfinished
    return scores


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
        with _pool_lock:
            try:
                verified = _grade_in_pool(tasks, timeout)
            except BaseException:
                # Interrupted (Ctrl-C) or failed mid-batch: gradings may still be running, possibly hung,
                # with no one watching their time limit. Start the next batch on fresh workers.
                _discard_pool()
                raise
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


# ---------------------------------------------------------------------------------------------------
# Sandbox


def sandbox_reward(prompts: list, completions: list, answer: list | None = None, **columns: Any) -> list[float | None]:
    """Reward "sandbox": the built-in task's exact verifier (last ``\\boxed{}`` equals the answer)."""
    from sftrl.sandbox.task import verify  # lazily: the sandbox is not needed to grade real data

    texts = [completion_text(c) for c in completions]
    return [float(verify(text, gold)) for text, gold in zip(texts, _gold_strings(answer, len(texts), "sandbox"))]


# ---------------------------------------------------------------------------------------------------
# Loading reward functions by name

BUILTIN_REWARDS: dict[str, RewardFunction] = {
    "math": math_reward,
    "choice": choice_reward,
    "sandbox": sandbox_reward,
}


def _load_module_from_file(spec: str, path_text: str) -> Any:
    """Import a ``.py`` file as a module of its own (not on sys.path, under a name no one else uses)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RewardError(f"reward function {spec!r}: file {str(path)!r} not found")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"sftrl_user_rewards_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    if module_spec is None or module_spec.loader is None:
        raise RewardError(f"reward function {spec!r}: cannot import {str(path)!r} as a Python module")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module  # dataclasses and pickling look the module up while it executes
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise RewardError(f"reward function {spec!r}: importing {str(path)!r} failed: {exc!r}") from exc
    return module


def load_reward(spec: str | RewardFunction) -> RewardFunction:
    """A reward function from its spec: a built-in name (math, choice, sandbox), ``package.module:function``
    or ``path/to/file.py:function``. A callable is returned as is."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward function spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    known = ", ".join(BUILTIN_REWARDS)
    if ":" not in spec:
        if "/" in spec or "\\" in spec or "." in spec:
            raise RewardError(
                f"reward function {spec!r}: missing the ':function' part (write module:function or file.py:function)"
            )
        raise RewardError(
            f"unknown reward function {spec!r}: the built-in ones are {known}; a function of your own is "
            "given as module:function or path/to/file.py:function"
        )
    target, _, attribute = spec.rpartition(":")  # rpartition: a Windows path has a ':' of its own
    target, attribute = target.strip(), attribute.strip()
    if not attribute or not target:
        raise RewardError(
            f"reward function {spec!r}: missing the {'function' if not attribute else 'module'} part "
            "(write module:function or file.py:function)"
        )
    if target.endswith(".py") or "/" in target or "\\" in target:
        module = _load_module_from_file(spec, target)
    else:
        try:
            module = importlib.import_module(target)
        except Exception as exc:
            raise RewardError(f"reward function {spec!r}: importing module {target!r} failed: {exc!r}") from exc
    if not hasattr(module, attribute):
        raise RewardError(f"reward function {spec!r}: {target!r} has no attribute {attribute!r}")
    function = getattr(module, attribute)
    if not callable(function):
        raise RewardError(f"reward function {spec!r}: {attribute!r} is a {type(function).__name__}, not callable")
    return function


def load_rewards(specs: Sequence[str | RewardFunction]) -> list[tuple[str, RewardFunction]]:
    """``(name, function)`` for each spec. Built-ins are named by their spec, others by their
    ``__name__`` as TRL does (with a suffix where two would share a name), so metrics read
    ``rewards/<name>/mean``."""
    loaded: list[tuple[str, RewardFunction]] = []
    for spec in specs:
        function = load_reward(spec)
        name = spec.strip() if isinstance(spec, str) and spec.strip() in BUILTIN_REWARDS else None
        name = name or getattr(function, "__name__", None) or str(spec)
        taken = {existing for existing, _ in loaded}
        unique_name, suffix = name, 2
        while unique_name in taken:  # metrics are keyed by name: two functions must not share one
            unique_name, suffix = f"{name}_{suffix}", suffix + 1
        loaded.append((unique_name, function))
    return loaded


# ---------------------------------------------------------------------------------------------------
# Scoring a batch with several reward functions


def _nanstd(values: torch.Tensor) -> float:
    """Standard deviation ignoring NaNs, Bessel-corrected, NaN below two values (TRL's ``nanstd``)."""
    import torch

    present = values[~torch.isnan(values)]
    if present.numel() < 2:
        return math.nan
    return float(present.std(unbiased=True))


def score_completions(
    reward_fns: Sequence[tuple[str, RewardFunction]],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Score completions with every reward function and combine them as TRL's GRPOTrainer does.

    Each function is called as ``fn(prompts=prompts, completions=completions, **columns)``. A None
    reward means "not applicable": it is NaN in that function's column and left out of the weighted
    sum (nansum); a row where every function returned None is NaN in the total.

    Returns the (N,) float32 total reward and metrics ``rewards/<name>/mean`` and ``rewards/<name>/std``
    (over the rows the function scored).
    """
    import torch

    count = len(completions)
    if len(prompts) != count:
        raise RewardError(f"score_completions: {len(prompts)} prompts but {count} completions")
    for key, values in columns.items():
        if len(values) != count:
            raise RewardError(f"score_completions: column {key!r} has {len(values)} values for {count} completions")
    if weights is None:
        weights = [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise RewardError(f"score_completions: {len(weights)} weights for {len(reward_fns)} reward functions")
    # prompts/completions are passed explicitly; a dataset column of the same name would clash.
    columns = {key: values for key, values in columns.items() if key not in ("prompts", "completions")}

    per_function = torch.full((count, len(reward_fns)), math.nan, dtype=torch.float32)
    for column, (name, function) in enumerate(reward_fns):
        rewards = function(prompts=prompts, completions=completions, **columns)
        if hasattr(rewards, "tolist") and not isinstance(rewards, list):  # a tensor or array
            rewards = rewards.tolist()
        if not isinstance(rewards, (list, tuple)):
            raise RewardError(
                f"reward function {name!r} returned {type(rewards).__name__}, expected a list of {count} floats or None"
            )
        if len(rewards) != count:
            raise RewardError(
                f"reward function {name!r} returned {len(rewards)} rewards, but {count} were expected "
                "(one per completion)"
            )
        try:
            values = [math.nan if reward is None else float(reward) for reward in rewards]
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward function {name!r} returned a non-number: {exc}") from exc
        per_function[:, column] = torch.tensor(values, dtype=torch.float32)

    weight_row = torch.tensor(list(weights), dtype=torch.float32).unsqueeze(0)
    total = (per_function * weight_row).nansum(dim=1)
    total[torch.isnan(per_function).all(dim=1)] = math.nan  # unscorable rows stay NaN, as in TRL

    metrics: dict[str, float] = {}
    for column, (name, _) in enumerate(reward_fns):
        metrics[f"rewards/{name}/mean"] = float(torch.nanmean(per_function[:, column]))
        metrics[f"rewards/{name}/std"] = _nanstd(per_function[:, column])
    return total, metrics
