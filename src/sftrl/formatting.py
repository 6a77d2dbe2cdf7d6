"""How every number sftrl prints is written: CLI output, progress lines, tables, reports, analyses.

One function, so that a value that rounds to zero reads the same on every machine. Floats differ
across CPUs in their last bits (vector width, fused multiply-add, thread count), so a quantity that
is zero in exact arithmetic comes out as +1e-17 on one machine and -1e-17 on another, and Python
prints the second as ``-0.000``. :func:`number` prints both as ``0.000``. Imports nothing else of sftrl.
"""

from __future__ import annotations

import math

_NONZERO_DIGITS = frozenset("123456789")


def number(value: float | int, spec: str = "") -> str:
    """`value` formatted with the format spec `spec` (as in ``format(value, spec)``: ".3f", "+.1f",
    ">8.1%", ...), never with a negative zero: a value that rounds to zero at that precision is written
    as zero is (``0.000``, ``+0.0`` under a "+" spec), with the same width and alignment."""
    text = format(value, spec)
    if "-" in text and not _NONZERO_DIGITS & set(text) and _finite(value):
        text = format(0.0 if isinstance(value, float) else 0, spec)
    return text


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except TypeError:  # not a number (a label in a table column): printed as format() prints it
        return False
