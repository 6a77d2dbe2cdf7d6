"""Errors that mean "your input (or your run directory) is not usable", said in one line.

The CLI prints any :class:`SftrlError` as ``sftrl: error: <message>`` and exits with status 2, no
traceback; everything else is a bug and keeps its traceback. Imports nothing else of sftrl.
"""

from __future__ import annotations


class SftrlError(Exception):
    """A problem with the user's input or run state; the message names the field, file or row."""


class ConfigError(SftrlError, ValueError):
    """A bad recipe, override, command-line option or value; the message names the field or option."""


class RewardError(SftrlError, ValueError):
    """A reward function could not be loaded or called, or returned something unusable."""


class DataError(SftrlError, ValueError):
    """Bad or unreadable data, reported with where it is: source, row (0-based), field, line.

    The message reads like ``"data/train.jsonl: row 17: field 'answer': is empty"``; the parts are
    also kept as attributes (``source``, ``row``, ``field``, ``line``) for programmatic use. ``line``
    is a 1-based line number of a text file, used when a row could not even be parsed.
    """

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        row: int | None = None,
        field: str | None = None,
        line: int | None = None,
    ) -> None:
        self.source = source
        self.row = row
        self.field = field
        self.line = line
        self.detail = message
        location = []
        if source is not None:
            location.append(str(source))
        if line is not None:
            location.append(f"line {line}")
        if row is not None:
            location.append(f"row {row}")
        if field is not None:
            location.append(f"field '{field}'")
        super().__init__(": ".join([*location, message]))


class RunError(SftrlError):
    """A run directory that cannot be used as asked (finished, other settings, damaged), or a run that
    had to stop (too many non-finite steps)."""


def one_line(text: object) -> str:
    """`text` with its line breaks folded, so that a message stays on one line."""
    return " ".join(part.strip() for part in str(text).splitlines() if part.strip())
