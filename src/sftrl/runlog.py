"""A run's metrics.jsonl: one JSON record per logged step (and per evaluation), appended as training goes;
and :class:`RunLogger`, through which a training run logs and prints.

The file stays strict JSON whatever happens: a NaN or infinite metric is written as null (Python's
json would write the non-standard NaN/Infinity that other readers reject), and a last line cut off
by a crash is left out when the file is read back (with a warning), as the steps after the newest
checkpoint are computed and logged again anyway.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import RunError
from .formatting import number
from .progress import Progress

logger = logging.getLogger(__name__)

# What the progress bar shows beside the step count: metric -> short name.
BAR_METRICS = {"loss": "loss", "reward": "reward", "sft/loss": "sft", "entropy": "H", "grad_norm": "|g|",
               "sasr/p_sft": "p_sft", "kl_ref": "kl"}


def finite_or_none(value: Any) -> Any:
    """`value` with every non-finite float (in dicts and lists too) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_or_none(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(item) for item in value]
    return value


def dumps(record: dict[str, Any]) -> str:
    """One record as strict JSON (non-finite numbers as null)."""
    return json.dumps(finite_or_none(record), allow_nan=False)


def append(path: Path, record: dict[str, Any]) -> None:
    """Add one record as one line."""
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    """Every record (none when the file does not exist). A last line cut off mid-write is left out
    with a warning; a bad line anywhere else is an error naming the file and line."""
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    records = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            if i == last:
                logger.warning("%s: line %d is cut off (the run stopped while writing it); it is left out",
                               path, i + 1)
                break
            raise RunError(f"{path}: line {i + 1} is not valid JSON ({exc.msg}); the metrics file is damaged") from exc
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise RunError(f"{path}: line {i + 1} is not a metrics record (an object with an integer 'step')")
        records.append(record)
    return records


def keep_until(path: Path, step: int) -> None:
    """Keep the records up to `step` (a resumed run computes later steps again and logs them again);
    a cut-off last line goes too."""
    if path.exists():
        path.write_text("".join(dumps(r) + "\n" for r in read(path) if r["step"] <= step))


def logged_eval(path: Path, step: int) -> dict[str, float]:
    """Evaluation metrics already logged for `step` (a resumed run does not repeat them)."""
    return {k: v for r in read(path) if r["step"] == step for k, v in r.items() if k.startswith("eval/")}


def tracker_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config as trackers take hyperparameters: numbers, strings and booleans (TensorBoard's hparams
    refuse lists and None)."""
    return {key: value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
            for key, value in config.items()}


def accuracy_text(metrics: dict[str, float], samples: int = 0, temperature: float = 0.0) -> str:
    """'41.0%', or '41.0% (math 55.0%, gsm8k 8.3%)' when the eval set has several data sources; with
    sampled accuracy logged, 'avg@4 (T 0.6) 30.9% (...); greedy 14.5% (...)', the sampled one first."""
    def text(name: str) -> str:
        prefix = f"eval/{name}/"
        parts = [f"{key[len(prefix):]} {number(value, '.1%')}" for key, value in metrics.items() if key.startswith(prefix)]
        return number(metrics[f'eval/{name}'], '.1%') + (f" ({', '.join(parts)})" if parts else "")

    if "eval/sampled_accuracy" not in metrics:
        return text("accuracy")
    return f"avg@{samples} (T {number(temperature, 'g')}) {text('sampled_accuracy')}; greedy {text('accuracy')}"


class RunLogger:
    """Where a training run's records and messages go, from the main process only (the others' calls do
    nothing): metrics.jsonl, the trackers of `report_to` (the same numbers, through accelerate:
    TensorBoard, W&B, Trackio), and printed lines, written above the progress bar while one is shown.

    `accelerator` is accelerate's Accelerator (its is_main_process, log_with, init_trackers, log and
    end_training are used)."""

    def __init__(self, run_dir: Path, accelerator: Any):
        self.run_dir = run_dir
        self.path = run_dir / "metrics.jsonl"
        self.accelerator = accelerator
        self.main = accelerator.is_main_process
        self.bar: Progress | None = None

    def prepare(self, restart: bool) -> None:
        """Make the run directory; `restart`: it holds a run of the same settings that stopped before its
        first checkpoint, whose records are cleared (the run starts again from step 0)."""
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if restart:
                self.print(f"{self.run_dir} holds a run with these settings that stopped before its first "
                           "checkpoint: starting it again from step 0")
                self.clear()

    def print(self, text: str) -> None:
        if self.main:
            if self.bar is not None:
                self.bar.write(text)
            else:
                print(text, flush=True)

    def log(self, record: dict[str, Any]) -> None:
        """Append `record` (it has a `step`) to metrics.jsonl, and give its numbers to the trackers."""
        if self.main:
            append(self.path, record)
            if self.accelerator.log_with:
                numbers = {key: value for key, value in record.items() if key != "step"
                           and isinstance(value, (int, float)) and not isinstance(value, bool)}
                self.accelerator.log(numbers, step=record["step"])

    def logged_eval(self, step: int) -> dict[str, float]:
        """Evaluation metrics already in metrics.jsonl for `step` (a resumed run does not repeat them)."""
        return logged_eval(self.path, step)

    def keep_until(self, step: int) -> None:
        """Drop the records after `step` (a resumed run logs them again)."""
        if self.main:
            keep_until(self.path, step)

    def clear(self) -> None:
        """Forget every record (a run that starts again from step 0)."""
        if self.main:
            self.path.unlink(missing_ok=True)

    def start_trackers(self, config: dict[str, Any]) -> None:
        """Open the trackers (if any), with the run's config as their hyperparameters; collective."""
        if self.accelerator.log_with:
            self.accelerator.init_trackers(self.run_dir.name, config=tracker_config(config))

    def close(self) -> None:
        """Flush and close the trackers' files."""
        if self.accelerator.log_with:
            self.accelerator.end_training()

    def finish(self, summary: dict[str, Any], lora: bool, merged: bool, accuracy: Callable[[dict[str, float]], str]) -> None:
        """The run is over: write summary.json and say what it reached and where the model is (`lora`: an
        adapter; `merged`: and the merged model); `accuracy` formats evaluation metrics."""
        if self.main:
            (self.run_dir / "summary.json").write_text(json.dumps(finite_or_none(summary), indent=2))
            if summary["eval_after"]:
                self.print(end_message(summary, summary["method"], accuracy))
            self.print(f"model saved to {self.run_dir / 'model'}" + (
                f" (LoRA adapter; merged model in {self.run_dir / 'model-merged'})" if merged
                else " (LoRA adapter)" if lora else ""))

    def open_bar(self, total: int, desc: str, enabled: bool, initial: int) -> None:
        """Show a progress bar of optimizer steps (on the main process, when `enabled`)."""
        self.bar = Progress(total, desc, enabled=enabled and self.main, initial=initial, unit="step")

    def close_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def advance(self, metrics: dict[str, Any]) -> None:
        """One step done: the bar shows its kind and its BAR_METRICS."""
        if self.bar is not None:
            postfix = {short: number(metrics[k], ".3g") for k, short in BAR_METRICS.items()
                       if isinstance(metrics.get(k), (int, float))}
            self.bar.update(1, step=metrics["step_type"], **postfix)


def skip_warning(step: int, metrics: dict[str, Any], finite: bool, skip_above: float) -> str:
    """Why step `step` made no update: its loss or gradient norm was not finite, or the norm was above
    skip_update_grad_norm (`skip_above`)."""
    if not finite:
        return (f"warning: step {step} skipped: its loss or gradient norm is not finite (loss "
                f"{number(metrics['loss'], '.4g')}, grad_norm {number(metrics['grad_norm'], '.4g')}); "
                "no update was made")
    return (f"warning: step {step} skipped: its gradient norm {number(metrics['grad_norm'], '.4g')} "
            f"is above skip_update_grad_norm={number(skip_above, 'g')}; no update was made")


def end_message(summary: dict[str, Any], method: str, accuracy: Callable[[dict[str, float]], str]) -> str:
    """The accuracy before and after training, with the run's length and time (`summary` as the trainer
    writes it, with `eval_after`; `accuracy` formats evaluation metrics)."""
    before = summary.get("eval_before") or {}
    return ((f"accuracy before training: {accuracy(before)}\n" if before else "")
            + f"accuracy after training:  {accuracy(summary['eval_after'])} "
            f"({method}, {summary['steps']} steps, {number(summary['train_seconds'], '.0f')} s)")
