"""What `sftrl compare` runs: each run's config under the shared budget (in steps, sequences or token
passes), the negative-control row, the regimes of `--grid` and the learning-rate points of `--tune`."""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Config, ConfigError
from .formatting import number
from .methods import METHODS
from .summary import CONTROL
from .validate import check_precision, load_config

# A row that is not a method of its own: (the method it runs, what it sets). The coin's chance of
# paying is the base model's measured pass rate (compare_eval.measure_pass_rate), filled in per regime.
CONTROLS: dict[str, tuple[str, dict[str, Any]]] = {CONTROL: ("grpo", {"reward_funcs": ["coin"]})}
BUDGETS = ("steps", "sequences", "tokens")
# Settings that change only the demonstrations: a method that trains on none runs the same with any value,
# so a grid reuses its run across regimes that differ only in them.
DEMONSTRATION_FIELDS = ("sandbox_demo_error_rate", "sandbox_double_form")
STEP_CAP_FACTOR = 4  # under a sequence or token budget no run takes more than this x max_steps steps
# The default token budget per budgeted sequence: about what a GRPO step of the sandbox spends per rollout
# (measured over 50 steps of the default regime, seed 0: GRPO 78.6 token passes per trained sequence,
# an SFT-only step 55.8, SRFT's and CHORD's mixed steps 73-75).
TOKENS_PER_SEQUENCE = 80
TUNE_SEED = 1000  # tuning runs use a seed of their own, so the compared seeds never choose their own rates
# The sandbox budget every compared run shares (recipes/sandbox-*.yaml carry the same values).
DEFAULT_BUDGET: dict[str, Any] = {
    "max_steps": 50, "batch_size": 16, "sft_batch_size": 128, "num_generations": 8, "learning_rate": 1e-4,
    "sft_learning_rate": 1e-3,
    "lr_scheduler": "constant", "warmup_steps": 5, "max_completion_length": 64,
}
DEFAULT_LR_GRID = {"learning_rate": [3e-5, 1e-4, 3e-4], "sft_learning_rate": [3e-4, 1e-3, 3e-3]}


def budget_overrides(budget: dict[str, Any]) -> dict[str, Any]:
    """The config values every run shares; phase lengths are fractions of the steps."""
    steps = budget["max_steps"]
    return {"model": "sandbox", "train_data": "sandbox", **budget, "sft_steps": steps // 2, "grpo_steps": steps // 2,
            "sasr_warmup_steps": max(1, steps // 5)}


def method_overrides(method: str, budget: dict[str, Any]) -> dict[str, Any]:
    """Phase lengths only one method reads, set for that method alone, so that a finished run of
    another method is still reused when they are added (a run's config records every field)."""
    if method == "uft":
        return {"uft_hint_steps": round(0.6 * budget["max_steps"])}  # UFT: hints for 300 of 500 steps
    return {}


def method_of(label: str) -> str:
    """The method a row runs: itself, or for a control the method it is built on."""
    return CONTROLS[label][0] if label in CONTROLS else label


def known_label(label: str) -> bool:
    return label in METHODS or label in CONTROLS


@dataclass(frozen=True)
class Row:
    """One row of a comparison: the method its runs train with and the settings only its runs get (a
    control's, or a user's `LABEL:key=value`), applied over the settings every run shares."""
    method: str
    settings: dict[str, Any] = field(default_factory=dict)


ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a row's name is part of its runs' directory names


def _row_of(label: str) -> Row:
    """The row a method or control name stands for by itself (a control carries its settings)."""
    return Row(method_of(label), dict(CONTROLS[label][1]) if label in CONTROLS else {})


def define_rows(entries: list[str], settings: dict[str, dict[str, Any]] | None = None) -> dict[str, Row]:
    """--methods entries -> {label: Row}, in the order given. An entry is a method or control (`sft`,
    `grpo-random`) or `NAME=METHOD`, a row of its own that runs METHOD (e.g. `questa=uft`: two rows of one
    method with different settings); `settings` gives a row's own config values ({label: {key: value}},
    from `LABEL:key=value` on the command line)."""
    rows: dict[str, Row] = {}
    for entry in entries:
        name, alias, target = entry.partition("=")
        if not alias:
            if not known_label(name):
                raise ConfigError(f"--methods: unknown method {name!r}; choose from {', '.join(sorted(METHODS))}, "
                                  f"{', '.join(CONTROLS)}, or NAME=METHOD for a row of its own")
            row = _row_of(name)
        else:
            if not ROW_NAME.fullmatch(name) or name == "base" or known_label(name):
                raise ConfigError(f"--methods {entry}: {name!r} must be a new row name (letters, digits, . _ + -; "
                                  f"not a method's, a control's or 'base')")
            if not known_label(target):
                raise ConfigError(f"--methods {entry}: unknown method {target!r}; choose from {', '.join(sorted(METHODS))}")
            row = _row_of(target)
        if name in rows:
            raise ConfigError(f"--methods: {name!r} is given twice")
        rows[name] = row
    for label, values in (settings or {}).items():
        if label not in rows:
            raise ConfigError(f"{label}:{next(iter(values), '')}=...: {label!r} is not a row of --methods "
                              f"({' '.join(rows)})")
        rows[label] = Row(rows[label].method, {**rows[label].settings, **values})
    return rows


def own_rows(rows: dict[str, Row]) -> dict[str, Row]:
    """The rows that are not a method or control under its own name with its own settings (a table names them)."""
    return {label: row for label, row in rows.items() if not known_label(label) or row != _row_of(label)}


# Fields compare sets for each run itself: an override of them would be ignored (seed, output_dir, save_every)
# or would silently train every row with another method (method), so it is refused, with the option to use.
PER_RUN_FIELDS = {"method": "--methods (NAME=METHOD for a row of its own)", "seed": "--seeds",
                  "output_dir": "--output-dir", "save_every": "--checkpoint-every or --curve-every"}


def check_overrides(overrides: dict[str, Any], row_settings: dict[str, dict[str, Any]] | None = None) -> None:
    """Refuse, in one line, a setting for every run or for one row that compare sets per run itself."""
    for prefix, values in [("", overrides), *((f"{label}:", v) for label, v in (row_settings or {}).items())]:
        for key in values:
            if key in PER_RUN_FIELDS:
                raise ConfigError(f"{prefix}{key}=...: compare sets {key} for each run itself; use {PER_RUN_FIELDS[key]}")


def run_config(label: str, seed: int, run_dir: Path, shared: dict[str, Any], checkpoint_every: int,
               row: Row | None = None) -> Config:
    """One run's config: the method's defaults and preset, then the shared budget, then the row's own
    settings (a control's; a user's `LABEL:key=value`), then seed and paths. A method that trains on no
    demonstrations gets the default of every demonstration-only setting, so its run does not depend on
    them. `row` None: the row `label` names by itself (a method or control)."""
    row = row or _row_of(label)
    method = row.method
    values = {"method": method, **method_overrides(method, shared), **shared,
              **row.settings, "seed": seed, "output_dir": str(run_dir),
              "save_every": checkpoint_every, "save_total_limit": 1000,
              # compare samples avg@k itself on both splits (evaluate_run); the trainer's own evaluation keeps
              # greedy accuracy only, so no run pays twice for the same samples (result-neutral: reuse holds)
              "eval_samples": 0}
    if not METHODS[method].needs_demonstrations:
        defaults = Config().to_dict()
        values.update({name: defaults[name] for name in DEMONSTRATION_FIELDS if name in defaults})
    config = load_config(None, values)
    check_precision(config)  # a run's check (the trainer makes it too), here before any run starts
    return config


def budget_limits(budget: str, shared: dict[str, Any], amount: int | None) -> dict[str, Any]:
    """The config values a budget sets. steps: `max_steps` steps each (today's sandbox budget). sequences:
    every run trains on the same count of sequences (max_steps x sft_batch_size by default; a step
    with more rows, e.g. SRFT's demonstrations or CHORD's expert rows, spends it faster). tokens: the same
    count of token passes (see Config.max_token_passes; default TOKENS_PER_SEQUENCE x that many
    sequences). Under sequences and tokens a run may take up to STEP_CAP_FACTOR x max_steps steps."""
    if budget not in BUDGETS:
        raise ConfigError(f"--budget: {budget!r} is not one of {', '.join(BUDGETS)}")
    if amount is not None and amount < 1:
        raise ConfigError(f"--budget-amount: must be at least 1, got {amount}")
    if budget == "steps":
        if amount is not None:
            raise ConfigError("--budget-amount: only with --budget sequences or tokens (use --max-steps for steps)")
        return {}
    steps = shared["max_steps"]
    sequences = steps * (shared.get("sft_batch_size") or shared["batch_size"])
    cap = {"max_steps": STEP_CAP_FACTOR * steps}
    if budget == "sequences":
        return {**cap, "max_train_sequences": amount or sequences}
    return {**cap, "max_token_passes": amount or TOKENS_PER_SEQUENCE * sequences}


# ------------------------------------------------------------------------------------ regimes
def expand_grid(grid: list[str] | None) -> list[tuple[str, dict[str, Any]]]:
    """`key=v1,v2 ...` -> the regimes: ("default", {}) first, then each key at each of its values with
    every other setting at its default (one knob at a time, not their product), named `key=value`."""
    from .config import parse_overrides

    regimes: list[tuple[str, dict[str, Any]]] = [("default", {})]
    for item in grid or []:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values.strip():
            raise ConfigError(f"--grid: expected key=value1,value2,..., got {item!r}")
        for text in values.split(","):
            if not text.strip():
                raise ConfigError(f"--grid: an empty value in {item!r}")
            value = parse_overrides([f"{key.strip()}={text.strip()}"])[key.strip()]
            name = f"{key.strip()}={text.strip()}"
            if name in (n for n, _ in regimes):
                raise ConfigError(f"--grid: {name} is given twice")
            regimes.append((name, {key.strip(): value}))
    return regimes


def run_key(config: Config) -> str:
    """What makes two runs the same run: every result-changing setting (not where it is written)."""
    from .config import result_neutral

    values = config.to_dict()
    neutral = result_neutral(values)
    values = {k: v for k, v in values.items() if k not in neutral and k != "output_dir"}
    return json.dumps(values, sort_keys=True, default=str)


# ------------------------------------------------------------------------------------ tuning
def tuning_grid(method: str, shared: dict[str, Any], grid: dict[str, list[float]]) -> list[dict[str, float]]:
    """The points to try: the product of the grid's values over the learning rates `method` uses."""
    fields = METHODS[method].learning_rate_fields(load_config(None, {"method": method, **shared}))
    return [dict(zip(fields, values)) for values in itertools.product(*(grid[f] for f in fields))]


def rate_tag(point: dict[str, float]) -> str:
    short = {"learning_rate": "lr", "sft_learning_rate": "sftlr"}
    return "-".join(f"{short[k]}{number(v, 'g')}" for k, v in point.items())
