"""Training and evaluation examples: rows validated into :class:`Example`, and prompts as model input.

Every dataset, whatever it is stored in, becomes a list of :class:`Example` (a prompt, a gold
answer, an optional demonstration, and all other columns kept for reward functions and per-source
metrics). The steps are separate so each can be used on its own:

- :func:`sftrl.sources.load_rows` reads raw rows (plain ``dict``) from the sandbox task, a ``.jsonl`` /
  ``.json`` / ``.parquet`` file (verl's RL parquet format included), a directory written by
  ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or the Hugging Face hub.
- :func:`to_examples` validates rows and turns them into :class:`Example`. Bad input raises a
  :class:`~sftrl.errors.DataError` that names the source, the row and the field, so a user can find and fix it.
- :func:`load_examples` does both.
- :func:`render_prompt` gives the exact text a model is conditioned on, through the tokenizer's
  chat template when it has one.

:class:`sftrl.prompt_sampler.PromptSampler` draws batches of example indices for training.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import DataError
from .sources import load_rows

CHAT_ROLES = ("system", "user", "assistant")
# verl's RL parquet format keeps the gold answer here instead of in an "answer" column.
VERL_ANSWER_FIELD = "reward_model.ground_truth"
DEFAULT_ANSWER_FIELD = "answer"

# Marks a field that is absent from a row (distinct from a field whose value is None).
_MISSING: Any = object()


@dataclass
class Example:
    """One problem, ready for training or evaluation.

    ``prompt`` is either the plain text of a user message or a list of chat messages
    ``{"role", "content"}``; :func:`render_prompt` turns either into model input text.
    ``answer`` is the gold answer as a string (what verifiers compare against).
    ``demonstration`` is a reference solution for the SFT side of a method, or None.
    ``columns`` holds every other column of the original row (``data_source``, ``reward_model``,
    ``extra_info``, ...) for reward functions and per-source metrics.
    ``source`` and ``index`` say where the example came from (0-based row in that source).
    """

    prompt: str | list[dict]
    answer: str
    demonstration: str | None = None
    columns: dict = field(default_factory=dict)
    source: str = "<in-memory>"
    index: int = 0


# --------------------------------------------------------------------------------------------------
# Validation: rows -> examples
# --------------------------------------------------------------------------------------------------


def to_examples(
    rows: Iterable[Mapping],
    source: str,
    prompt_field: str = "prompt",
    answer_field: str = DEFAULT_ANSWER_FIELD,
    demo_field: str = "demonstration",
    require_demo: bool = False,
    system_prompt: str | None = None,
) -> list[Example]:
    """Validate raw rows and turn them into examples; the first bad row raises :class:`DataError`.

    Field names may be dotted paths into nested dicts (``"reward_model.ground_truth"``); a key that
    itself contains a dot is found too. With the default ``answer_field="answer"``, a row without an
    ``answer`` column but with verl's ``reward_model.ground_truth`` uses that, so verl parquet files
    load with no options.

    Checks, each reported with source, row and field:

    - the prompt is a non-empty string, or a non-empty list of ``{"role", "content"}`` messages with
      role ``system``, ``user`` or ``assistant`` and string content;
    - the answer is present and a non-empty string or a number (converted to ``str``);
    - the demonstration, when present, is a string; when ``require_demo`` is True (the method trains
      on demonstrations) every row must have a non-empty one. Without ``require_demo`` an empty
      demonstration becomes None.

    ``system_prompt``, if given, is added as a leading system message: a plain-text prompt becomes
    ``[system, user]`` messages, and a message list without a system message gets one prepended
    (one that already has a system message is left as it is).

    ``columns`` keeps every top-level column except the ones read as prompt, answer and
    demonstration; the parent of a dotted field (``reward_model``) is kept, since it usually holds
    more than the field read from it.
    """
    consumed_columns = {prompt_field, answer_field, demo_field}
    examples = []
    for index, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DataError(f"expected a mapping of field names to values, got {type(row).__name__}",
                            source=source, row=index)
        row = _to_plain_python(row)
        examples.append(
            Example(
                prompt=_read_prompt(row, prompt_field, system_prompt, source, index),
                answer=_read_answer(row, answer_field, source, index),
                demonstration=_read_demonstration(row, demo_field, require_demo, source, index),
                columns={key: value for key, value in row.items() if key not in consumed_columns},
                source=source,
                index=index,
            )
        )
    if not examples:
        raise DataError("the dataset is empty (no rows)", source=source)
    return examples


def _lookup(row: Mapping, dotted_field: str) -> Any:
    """The value at ``dotted_field`` in ``row`` (a literal key first, then a nested path), or _MISSING."""
    if dotted_field in row:
        return row[dotted_field]
    value: Any = row
    for part in dotted_field.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _describe_fields(row: Mapping, dotted_field: str) -> str:
    """What a row does have, to put next to "missing field": its columns, and nested keys on the path."""
    description = f"the row has fields: {', '.join(map(str, row)) or '(none)'}"
    parts = dotted_field.split(".")
    value: Any = row
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(value, Mapping) or part not in value:
            break
        value = value[part]
        parent = ".".join(parts[: depth + 1])
        if isinstance(value, Mapping):
            description += f"; '{parent}' has: {', '.join(map(str, value)) or '(none)'}"
        else:
            description += f"; '{parent}' is {type(value).__name__}, not a mapping"
            break
    return description


def _read_prompt(
    row: Mapping, prompt_field: str, system_prompt: str | None, source: str, index: int
) -> str | list[dict]:
    prompt = _lookup(row, prompt_field)
    if prompt is _MISSING:
        raise DataError(f"missing ({_describe_fields(row, prompt_field)})",
                        source=source, row=index, field=prompt_field)
    expected = "expected a non-empty string or a non-empty list of {role, content} messages"
    if isinstance(prompt, str):
        if not prompt.strip():
            raise DataError(f"is empty; {expected}", source=source, row=index, field=prompt_field)
        if system_prompt is not None:
            return [{"role": "system", "content": system_prompt}, {"role": "user", "content": prompt}]
        return prompt
    if isinstance(prompt, (list, tuple)):
        if not prompt:
            raise DataError(f"is an empty list; {expected}", source=source, row=index, field=prompt_field)
        messages = [_check_message(message, position, prompt_field, source, index)
                    for position, message in enumerate(prompt)]
        if system_prompt is not None and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system_prompt})
        return messages
    got = "null" if prompt is None else type(prompt).__name__
    raise DataError(f"{expected}, got {got}", source=source, row=index, field=prompt_field)


def _check_message(message: Any, position: int, prompt_field: str, source: str, index: int) -> dict:
    where = f"{prompt_field}[{position}]"
    if not isinstance(message, Mapping):
        raise DataError(f"expected a {{role, content}} message, got {type(message).__name__}",
                        source=source, row=index, field=where)
    for key in ("role", "content"):
        if key not in message:
            raise DataError(f"message has no '{key}' (it has: {', '.join(map(str, message))})",
                            source=source, row=index, field=where)
    if message["role"] not in CHAT_ROLES:
        raise DataError(f"role {message['role']!r} is not one of {', '.join(CHAT_ROLES)}",
                        source=source, row=index, field=where)
    if not isinstance(message["content"], str):
        raise DataError(f"content must be a string, got {type(message['content']).__name__}",
                        source=source, row=index, field=where)
    return dict(message)


def _read_answer(row: Mapping, answer_field: str, source: str, index: int) -> str:
    answer = _lookup(row, answer_field)
    field_read = answer_field
    if answer is _MISSING and answer_field == DEFAULT_ANSWER_FIELD:
        answer = _lookup(row, VERL_ANSWER_FIELD)
        field_read = VERL_ANSWER_FIELD
    if answer is _MISSING:
        also = (f" (also looked for '{VERL_ANSWER_FIELD}', verl's format)"
                if answer_field == DEFAULT_ANSWER_FIELD else "")
        raise DataError(f"missing{also}; {_describe_fields(row, field_read)}",
                        source=source, row=index, field=answer_field)
    # bool is an int subclass, but True/False as gold is almost surely a mistaken column.
    if isinstance(answer, (int, float)) and not isinstance(answer, bool):
        if isinstance(answer, float) and math.isnan(answer):  # how pandas and some JSON mark missing
            raise DataError("is NaN (missing); every row needs a gold answer",
                            source=source, row=index, field=field_read)
        return str(answer)
    if answer is None or (isinstance(answer, str) and not answer.strip()):
        raise DataError("is empty; every row needs a gold answer",
                        source=source, row=index, field=field_read)
    if not isinstance(answer, str):
        raise DataError(f"expected a string or a number, got {type(answer).__name__}",
                        source=source, row=index, field=field_read)
    return answer


def _read_demonstration(
    row: Mapping, demo_field: str, require_demo: bool, source: str, index: int
) -> str | None:
    demonstration = _lookup(row, demo_field)
    if isinstance(demonstration, (list, tuple)) and demonstration and all(
            isinstance(m, Mapping) and "content" in m for m in demonstration):
        # chat messages (LUFFY's `target` column): the demonstration is the last assistant turn
        replies = [m for m in demonstration if m.get("role", "assistant") == "assistant"]
        demonstration = (replies or list(demonstration))[-1]["content"]
    if demonstration is not _MISSING and demonstration is not None and not isinstance(demonstration, str):
        raise DataError(f"expected a string demonstration, got {type(demonstration).__name__}",
                        source=source, row=index, field=demo_field)
    present = isinstance(demonstration, str) and bool(demonstration.strip())
    if require_demo and not present:
        state = "missing" if demonstration is _MISSING else "empty"
        hint = f"; {_describe_fields(row, demo_field)}" if demonstration is _MISSING else ""
        raise DataError(
            f"demonstration is {state}, but the chosen method trains on demonstrations, so every row "
            f"needs one (looked up field '{demo_field}'; set the demonstration field name if it is "
            f"stored elsewhere){hint}",
            source=source, row=index, field=demo_field,
        )
    return demonstration if present else None


def _to_plain_python(value: Any) -> Any:
    """Numpy arrays and scalars (from pandas ``to_dict("records")`` rows, say) as Python lists/values.

    Rows built from a pandas frame of a verl parquet hold each prompt as a numpy object array of
    dicts; converting them lets such rows validate and reach chat templates like any other.
    """
    if isinstance(value, Mapping):
        return {key: _to_plain_python(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain_python(item) for item in value]
    # Checked by duck type so numpy stays an optional import here.
    if type(value).__module__ == "numpy":
        if hasattr(value, "tolist"):
            return _to_plain_python(value.tolist())
    return value


# --------------------------------------------------------------------------------------------------
# Putting it together, and prompts as model input
# --------------------------------------------------------------------------------------------------


def load_examples(
    source: str,
    split: str = "train",
    *,
    prompt_field: str = "prompt",
    answer_field: str = DEFAULT_ANSWER_FIELD,
    demo_field: str = "demonstration",
    require_demo: bool = False,
    system_prompt: str | None = None,
    limit: int | None = None,
    **sandbox_kwargs: Any,
) -> list[Example]:
    """Load ``source`` (see :func:`load_rows`) and validate it into examples (see :func:`to_examples`).

    ``limit`` keeps the first ``limit`` rows after loading (rows beyond it are not validated).
    ``sandbox_kwargs`` are :func:`load_rows`' ``sandbox_train_size``, ``sandbox_demo_error_rate``,
    ``sandbox_skill_share`` and ``sandbox_double_form``.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative or None, got {limit}")
    rows = load_rows(source, split, **sandbox_kwargs)
    if limit is not None:
        rows = rows[:limit]
    return to_examples(
        rows,
        source,
        prompt_field=prompt_field,
        answer_field=answer_field,
        demo_field=demo_field,
        require_demo=require_demo,
        system_prompt=system_prompt,
    )


def render_prompt(tokenizer: Any, prompt: str | list[dict], chat_template_kwargs: dict | None = None) -> str:
    """The text a model is conditioned on for ``prompt``; its completion is generated after it.

    With a chat template on the tokenizer: ``apply_chat_template(messages,
    add_generation_prompt=True, tokenize=False, **chat_template_kwargs)``, a plain-text prompt being
    one user message (the kwargs reach the template, e.g. Qwen3's ``enable_thinking``).
    Without one (base models, the sandbox's character tokenizer): a plain-text prompt as it is, and
    chat messages as their contents joined by newlines (roles dropped, nothing appended), so the
    same data works for models that were never chat-tuned.
    """
    has_chat_template = bool(getattr(tokenizer, "chat_template", None))
    if isinstance(prompt, str):
        if not has_chat_template:
            return prompt
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = list(prompt)
        if not has_chat_template:
            return "\n".join(message["content"] for message in messages)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False,
                                         **(chat_template_kwargs or {}))

