"""A run's metrics.jsonl: one JSON record per logged step (and per evaluation), appended as training goes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def append(path: Path, record: dict[str, Any]) -> None:
    """Add one record as one line."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def read(path: Path) -> list[dict[str, Any]]:
    """Every record (none when the file does not exist)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def keep_until(path: Path, step: int) -> None:
    """Drop the records past `step` (a resumed run computes those steps again and logs them again)."""
    if path.exists():
        path.write_text("".join(json.dumps(r) + "\n" for r in read(path) if r["step"] <= step))


def logged_eval(path: Path, step: int) -> dict[str, float]:
    """Evaluation metrics already logged for `step` (a resumed run does not repeat them)."""
    return {k: v for r in read(path) if r["step"] == step for k, v in r.items() if k.startswith("eval/")}
