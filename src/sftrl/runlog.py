"""A run's metrics.jsonl: one JSON record per logged step (and per evaluation), appended as training goes.

The file stays strict JSON whatever happens: a NaN or infinite metric is written as null (Python's
json would write the non-standard NaN/Infinity that other readers reject), and a last line cut off
by a crash is left out when the file is read back (with a warning), as the steps after the newest
checkpoint are computed and logged again anyway.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

from .errors import RunError

logger = logging.getLogger(__name__)


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
