"""Names -> reward functions, data sources and models: how built-ins, the sandbox and a user's own
code plug into sftrl the same way.

    from sftrl.registry import register_reward, register_dataset

    register_reward("my_verifier", my_verifier)                  # reward_funcs: [my_verifier]
    register_dataset("toy", load_toy_rows, verifier="my_verifier")  # train_data: toy  (or toy:test)

A module that registers things is imported by name before any lookup: the built-in ones in
``BUILTIN_PLUGINS``, then those in the ``SFTRL_PLUGINS`` environment variable (comma-separated) and in
the ``plugins`` config field. This module imports nothing else of sftrl, so anything may import it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

# Imported before the first lookup. Strings, not imports: the sandbox imports the reward helpers, so
# importing it from here (or from rewards) would be an import circle.
BUILTIN_PLUGINS = ("sftrl.rewards", "sftrl.sandbox.plugin")
PLUGINS_ENV = "SFTRL_PLUGINS"


class RegistryError(ValueError):
    """A name registered twice with different objects, or a plugin module that fails to import."""


@dataclass(frozen=True)
class DataSource:
    """A named dataset: ``loader(split, **options) -> list[dict]`` rows, the reward that verifies its
    answers (for `reward_funcs: [auto]` and for evaluation), and the source evaluated by default."""

    name: str
    loader: Callable[..., list[dict]]
    verifier: str | None = None
    default_eval: str | None = None
    default_split: str = "train"


_rewards: dict[str, Callable[..., Any]] = {}
_datasets: dict[str, DataSource] = {}
_models: dict[str, Callable[[], str]] = {}
_loaded: set[str] = set()


def _register(table: dict, kind: str, name: str, value: Any) -> None:
    if not isinstance(name, str) or not name or ":" in name:
        raise RegistryError(f"{kind} name must be a non-empty string without ':', got {name!r}")
    if name in table and table[name] is not value and table[name] != value:
        raise RegistryError(f"{kind} {name!r} is already registered")
    table[name] = value


def register_reward(name: str, function: Callable[..., Any]) -> None:
    """`function(prompts, completions, **columns) -> list[float | None]` under `name` (TRL's signature)."""
    if not callable(function):
        raise RegistryError(f"reward {name!r}: {function!r} is not callable")
    _register(_rewards, "reward", name, function)


def register_dataset(name: str, loader: Callable[..., list[dict]], verifier: str | None = None,
                     default_eval: str | None = None, default_split: str = "train") -> None:
    """A data source read as `name` or `name:split`; `verifier` names the reward that grades it."""
    _register(_datasets, "dataset", name, DataSource(name, loader, verifier, default_eval, default_split))


def register_model(name: str, resolve: Callable[[], str]) -> None:
    """A model name that `resolve()` turns into a local directory (e.g. a model shipped in a package)."""
    _register(_models, "model", name, resolve)


def load_plugins(extra: Iterable[str] = ()) -> None:
    """Import the built-in plugin modules, those in $SFTRL_PLUGINS and `extra` (each once)."""
    names = [*BUILTIN_PLUGINS, *filter(None, os.environ.get(PLUGINS_ENV, "").split(",")), *extra]
    for module in (n.strip() for n in names):
        if module and module not in _loaded:
            _loaded.add(module)
            try:
                importlib.import_module(module)
            except Exception as exc:
                _loaded.discard(module)
                raise RegistryError(f"plugin module {module!r} failed to import: {exc!r}") from exc


def reward(name: str) -> Callable[..., Any] | None:
    load_plugins()
    return _rewards.get(name)


def reward_names() -> list[str]:
    load_plugins()
    return list(_rewards)


def dataset(name: str) -> DataSource | None:
    load_plugins()
    return _datasets.get(name)


def data_source_of(source: str) -> tuple[DataSource, str | None] | None:
    """The registered source `source` names (`name` or `name:split`) and the split it gives, if any."""
    name, _, split = source.partition(":")
    found = dataset(name)
    return (found, split or None) if found is not None else None


def model(name: str) -> Callable[[], str] | None:
    load_plugins()
    return _models.get(name)
