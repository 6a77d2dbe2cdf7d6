"""TRL's reward contract: how reward functions are named, loaded, called and combined.

A reward function has TRL's signature ``fn(prompts, completions, **kwargs) -> list[float | None]`` and
is called exactly as TRL 1.16's ``GRPOTrainer._calculate_rewards`` calls it:

- ``prompts``: the dataset's prompts (a string, or a list of chat messages), one per completion;
- ``completions``: strings, or ``[{"role": "assistant", "content": text}]`` when the prompts are chat
  messages (TRL's conversational form; :func:`as_completions`);
- ``completion_ids``: the completion's token ids (EOS included when it ended with one);
- ``trainer_state``: a ``transformers.TrainerState`` (``global_step``, ``max_steps``, ``epoch``);
- ``log_metric(name, value)``: adds a scalar to this step's metrics (averaged over the step);
- every dataset column, one value per completion (``answer`` holds the gold answer);
- sync functions run one after the other, then ``async def`` ones are awaited concurrently.

A None reward means "not applicable": that function's column is NaN there and the weighted
sum over functions is TRL's ``nansum``; a row where every function returned None is *unscorable*: NaN
in the total, left out of group statistics, advantage 0 (TRL 1.16 does the same).

Where sftrl deviates from TRL: ``log_extra`` and ``environments`` are not passed (sftrl has no
completions table or environments); a reward of NaN or ±inf is an error naming the function, the value
and the row (TRL would silently take a NaN for None, hiding a grader's 0/0, and train on ±inf, turning
the group's advantages into NaN): None is the one way to say "not scored"; an exception raised inside
a reward function becomes one error naming the function and the first row that reproduces it alone.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib
import importlib.util
import inspect
import math
import re
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import registry
from ..errors import RewardError

if TYPE_CHECKING:  # torch is imported lazily: math-grading worker processes import this package too
    import torch

RewardFunction = Callable[..., list]
"""``fn(prompts, completions, **kwargs) -> list[float | None]``, one entry per completion."""

# Keyword arguments sftrl passes besides the dataset columns; a column of one of these names is dropped.
RESERVED_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_metric")


# ---------------------------------------------------------------------------------------------------
# Names and loading


def callable_name(function: Callable) -> str:
    """TRL's ``get_callable_name``: a function's ``__name__`` (through ``functools.partial``), else its class's."""
    while isinstance(function, functools.partial):
        function = function.func
    return getattr(function, "__name__", type(function).__name__)


def is_async_callable(function: Callable) -> bool:
    """TRL's ``is_async_callable``: an ``async def`` function, partial of one, or object with ``async __call__``."""
    while isinstance(function, functools.partial):
        function = function.func
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None))


def _load_module_from_file(spec: str, path_text: str) -> Any:
    """Import a ``.py`` file as a module of its own (not on sys.path, under a name no one else uses)."""
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise RewardError(f"reward function {spec!r}: file {str(path)!r} not found")
    path = path.resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module_name = f"sftrl_user_rewards_{re.sub(r'[^0-9A-Za-z_]', '_', path.stem)}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
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
    """A reward function from its spec: a registered name (math, choice, sandbox, or one a plugin
    registered), ``package.module:function`` or ``path/to/file.py:function``. A callable is returned as is."""
    if callable(spec):
        return spec
    if not isinstance(spec, str) or not spec.strip():
        raise RewardError(f"reward function spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    registered = registry.reward(spec)
    if registered is not None:
        return registered
    if ":" not in spec:
        if "/" in spec or "\\" in spec or "." in spec:
            raise RewardError(
                f"reward function {spec!r}: missing the ':function' part (write module:function or file.py:function)")
        raise RewardError(
            f"unknown reward function {spec!r}: the registered ones are {', '.join(registry.reward_names())}; a "
            "function of your own is given as module:function or path/to/file.py:function")
    target, _, attribute = spec.rpartition(":")  # rpartition: a Windows path has a ':' of its own
    target, attribute = target.strip(), attribute.strip()
    if not attribute or not target:
        raise RewardError(f"reward function {spec!r}: missing the {'function' if not attribute else 'module'} part "
                          "(write module:function or file.py:function)")
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
    """``(name, function)`` for each spec. Registered ones are named by their spec, others as TRL names
    them (``callable_name``), with a suffix where two would share a name, so metrics read
    ``rewards/<name>/mean``."""
    loaded: list[tuple[str, RewardFunction]] = []
    for spec in specs:
        function = load_reward(spec)
        name = spec.strip() if isinstance(spec, str) and registry.reward(spec.strip()) is not None else None
        name = name or callable_name(function) or str(spec)
        taken = {existing for existing, _ in loaded}
        unique_name, suffix = name, 2
        while unique_name in taken:  # metrics are keyed by name: two functions must not share one
            unique_name, suffix = f"{name}_{suffix}", suffix + 1
        loaded.append((unique_name, function))
    return loaded


# ---------------------------------------------------------------------------------------------------
# Calling


def as_completions(prompts: Sequence[Any], texts: Sequence[str]) -> list:
    """Completions as TRL hands them to reward functions: the text, or ``[{"role": "assistant",
    "content": text}]`` where the prompt is a list of chat messages."""
    return [[{"role": "assistant", "content": text}] if isinstance(prompt, list) else text
            for prompt, text in zip(prompts, texts)]


_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


def _event_loop() -> asyncio.AbstractEventLoop:
    """One event loop on a daemon thread for async reward functions (as TRL runs them), so they can be
    awaited even when the caller already runs an event loop (a notebook)."""
    global _loop
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="sftrl-async-rewards", daemon=True).start()
    return _loop


def _await_all(coroutines: list) -> list:
    async def gather():
        return await asyncio.gather(*coroutines, return_exceptions=True)

    return asyncio.run_coroutine_threadsafe(gather(), _event_loop()).result()


def _row_kwargs(kwargs: dict[str, Any], row: int, count: int) -> dict[str, Any]:
    """The keyword arguments of one row: per-completion lists sliced, everything else as is."""
    return {key: value[row:row + 1] if isinstance(value, list) and len(value) == count else value
            for key, value in kwargs.items()}


def _call(function: Callable, kwargs: dict[str, Any]) -> Any:
    result = function(**kwargs)
    return _await_all([result])[0] if inspect.isawaitable(result) else result


def _failure(name: str, function: Callable, kwargs: dict[str, Any], count: int, error: BaseException,
             row_names: Sequence[str] | None) -> RewardError:
    """One error for a reward function that raised: the first row that raises alone names the place."""
    for row in range(count):
        try:
            outcome = _call(function, _row_kwargs(kwargs, row, count))
        except Exception as exc:  # noqa: BLE001: any error is the user's function failing
            outcome = exc
        if isinstance(outcome, Exception):
            where = row_names[row] if row_names else f"completion {row}"
            hint = ("; reward functions get TRL's keyword arguments (completion_ids, trainer_state, log_metric, "
                    "every dataset column): end the signature with **kwargs"
                    if isinstance(outcome, TypeError) and "keyword argument" in str(outcome) else "")
            return RewardError(f"reward function {name!r} raised {type(outcome).__name__}: {outcome} "
                               f"(on {where}){hint}")
    return RewardError(f"reward function {name!r} raised {type(error).__name__}: {error} "
                       f"(on a batch of {count} completions; no single one of them reproduces it)")


def _values(name: str, rewards: Any, count: int, row_names: Sequence[str] | None) -> list[float]:
    """The function's output as floats, None -> NaN; anything else unusable is an error naming the row."""
    if hasattr(rewards, "tolist") and not isinstance(rewards, list):  # a tensor or array
        rewards = rewards.tolist()
    if not isinstance(rewards, (list, tuple)):
        raise RewardError(f"reward function {name!r} returned {type(rewards).__name__}, expected a list of "
                          f"{count} floats or None")
    if len(rewards) != count:
        raise RewardError(f"reward function {name!r} returned {len(rewards)} rewards, but {count} were expected "
                          "(one per completion)")
    values = []
    for row, reward in enumerate(rewards):
        where = row_names[row] if row_names else f"completion {row}"
        if reward is None:
            values.append(math.nan)
            continue
        try:
            value = float(reward)
        except (TypeError, ValueError):
            raise RewardError(f"reward function {name!r} returned {reward!r:.80} for {where}; expected a number "
                              "or None") from None
        if not math.isfinite(value):
            # NaN too: TRL would take it for None without a word, and a NaN is far more often a grader's
            # 0/0 than a choice not to score; None says that unambiguously.
            raise RewardError(f"reward function {name!r} returned {value} for {where}; rewards must be finite "
                              "numbers (return None for a completion the function does not score; TRL would "
                              f"{'treat NaN as None' if math.isnan(value) else 'train on it'})")
        values.append(value)
    return values


def reward_matrix(
    reward_fns: Sequence[tuple[str, RewardFunction]],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    *,
    completion_ids: list[list[int]] | None = None,
    trainer_state: Any = None,
    log_metric: Callable[[str, float], None] | None = None,
    row_names: Sequence[str] | None = None,
) -> torch.Tensor:
    """Every reward function's rewards: an (N, F) float32 tensor, NaN where a function returned None.

    Called with TRL's keyword arguments (module docstring); `row_names` (one per completion, e.g.
    "data.jsonl row 17") name the row in errors.
    """
    import torch

    count = len(completions)
    if len(prompts) != count:
        raise RewardError(f"reward functions: {len(prompts)} prompts but {count} completions")
    for key, values in columns.items():
        if len(values) != count:
            raise RewardError(f"reward functions: column {key!r} has {len(values)} values for {count} completions")
    kwargs: dict[str, Any] = {key: values for key, values in columns.items() if key not in RESERVED_KWARGS}
    kwargs.update(prompts=prompts, completions=completions)
    if completion_ids is not None:
        kwargs["completion_ids"] = completion_ids
    if trainer_state is not None:
        kwargs["trainer_state"] = trainer_state
    if log_metric is not None:
        kwargs["log_metric"] = log_metric

    per_function = torch.full((count, len(reward_fns)), math.nan, dtype=torch.float32)
    pending: list[tuple[int, str, Callable, Any]] = []
    for column, (name, function) in enumerate(reward_fns):
        try:
            outcome = function(**kwargs)
        except Exception as exc:  # noqa: BLE001
            raise _failure(name, function, kwargs, count, exc, row_names) from exc
        if inspect.isawaitable(outcome):  # async: awaited together below, as TRL gathers them
            pending.append((column, name, function, outcome))
            continue
        per_function[:, column] = torch.tensor(_values(name, outcome, count, row_names), dtype=torch.float32)
    if pending:
        results = _await_all([outcome for *_, outcome in pending])
        for (column, name, function, _), outcome in zip(pending, results):
            if isinstance(outcome, BaseException):
                raise _failure(name, function, kwargs, count, outcome, row_names) from outcome
            per_function[:, column] = torch.tensor(_values(name, outcome, count, row_names), dtype=torch.float32)
    return per_function


def combine(per_function: torch.Tensor, weights: Sequence[float] | None = None) -> torch.Tensor:
    """TRL's total reward: Σ_f w_f r_f as a nansum over functions, (N,); NaN on unscorable rows
    (every function returned None)."""
    import torch

    if weights is None:
        weights = [1.0] * per_function.shape[1]
    if len(weights) != per_function.shape[1]:
        raise RewardError(f"{len(weights)} reward weights for {per_function.shape[1]} reward functions")
    weight_row = torch.tensor(list(weights), dtype=torch.float32).unsqueeze(0)  # (1, F)
    total = (per_function * weight_row).nansum(dim=1)  # (N,)
    total[torch.isnan(per_function).all(dim=1)] = math.nan
    return total


def nanstd(values: torch.Tensor) -> float:
    """TRL's ``nanstd`` of all values: ignores NaNs, Bessel-corrected, NaN below two values."""
    present = values[~values.isnan()]
    if present.numel() < 2:
        return math.nan
    return float(present.std(unbiased=True))


def nanmean(values: torch.Tensor) -> float:
    """Mean ignoring NaNs; NaN when nothing is left (as torch.nanmean)."""
    present = values[~values.isnan()]
    return float(present.mean()) if present.numel() else math.nan


def function_metrics(per_function: torch.Tensor, names: Sequence[str], prefix: str = "") -> dict[str, float]:
    """``<prefix>rewards/<name>/mean`` and ``/std`` over the rows each function scored (TRL's nanmean/nanstd)."""
    metrics: dict[str, float] = {}
    for column, name in enumerate(names):
        metrics[f"{prefix}rewards/{name}/mean"] = nanmean(per_function[:, column])
        metrics[f"{prefix}rewards/{name}/std"] = nanstd(per_function[:, column])
    return metrics


def score_completions(
    reward_fns: Sequence[tuple[str, RewardFunction]],
    prompts: list,
    completions: list,
    columns: dict[str, list],
    weights: Sequence[float] | None = None,
    **call: Any,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Score completions with every reward function and combine them as TRL does: the (N,) total
    (NaN on unscorable rows) and ``rewards/<name>/mean`` / ``/std`` over the rows each function scored.
    `call` takes :func:`reward_matrix`'s keyword arguments."""
    if weights is not None and len(weights) != len(reward_fns):
        raise RewardError(f"{len(weights)} weights for {len(reward_fns)} reward functions")
    per_function = reward_matrix(reward_fns, prompts, completions, columns, **call)
    return combine(per_function, weights), function_metrics(per_function, [name for name, _ in reward_fns])
