"""Training and evaluation data: loading, validation, chat templates and prompt sampling.

Every dataset, whatever it is stored in, becomes a list of :class:`Example` (a prompt, a gold
answer, an optional demonstration, and all other columns kept for reward functions and per-source
metrics). The steps are separate so each can be used on its own:

- :func:`load_rows` reads raw rows (plain ``dict``) from the sandbox task, a ``.jsonl`` / ``.json``
  / ``.parquet`` file (verl's RL parquet format included), a directory written by
  ``datasets.Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, or the Hugging Face hub.
- :func:`to_examples` validates rows and turns them into :class:`Example`. Bad input raises a
  :class:`DataError` that names the source, the row and the field, so a user can find and fix it.
- :func:`load_examples` does both.
- :func:`render_prompt` gives the exact text a model is conditioned on, through the tokenizer's
  chat template when it has one.
- :class:`PromptSampler` draws batches of example indices, reshuffled every epoch, deterministic
  from a seed and resumable from a checkpoint.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import registry
from .errors import SftrlError

# File extensions load_rows reads, and the reader for each.
SUPPORTED_EXTENSIONS = (".jsonl", ".json", ".parquet")
# Extensions of data files we do not read. A source ending in one of these is clearly meant as a
# local file, so a missing one is reported as "not found" instead of being looked up on the hub.
_OTHER_DATA_EXTENSIONS = (
    ".csv", ".tsv", ".txt", ".arrow", ".feather", ".orc", ".avro", ".xlsx", ".xls", ".pkl",
    ".pickle", ".yaml", ".yml", ".gz", ".bz2", ".xz", ".zst", ".zip", ".tar", ".ndjson",
)
CHAT_ROLES = ("system", "user", "assistant")
# verl's RL parquet format keeps the gold answer here instead of in an "answer" column.
VERL_ANSWER_FIELD = "reward_model.ground_truth"
DEFAULT_ANSWER_FIELD = "answer"

# Marks a field that is absent from a row (distinct from a field whose value is None).
_MISSING: Any = object()


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
# Loading raw rows
# --------------------------------------------------------------------------------------------------


def load_rows(
    source: str,
    split: str = "train",
    *,
    sandbox_train_size: int | None = None,
    sandbox_demo_error_rate: float = 0.0,
    sandbox_skill_share: float | None = None,
    sandbox_double_form: str = "times",
) -> list[dict]:
    """Read the raw rows of a dataset as plain Python dicts.

    ``source`` is, in order of precedence:

    - a data source registered with :mod:`sftrl.registry`, as ``name`` or ``name:<split>``; the
      sandbox registers ``"sandbox"`` (splits ``train``, ``val``, ``test``, ``ood``), generated by
      :func:`sftrl.sandbox.task.make_split`. A split written in the source wins over ``split``.
      ``sandbox_train_size`` and ``sandbox_skill_share`` set the number of train rows and their share
      of doubling problems (other splits keep their fixed size and share, so evaluation sets never
      change); ``sandbox_demo_error_rate`` makes that fraction of demonstrations wrong;
      ``sandbox_double_form`` writes the train demonstrations' doubling line as ``10*2=20``
      (``"times"``) or ``10+10=20`` (``"sum"``). A loader gets only the options it declares, so one
      config can always pass them.
    - an existing ``.jsonl`` file (one JSON object per line, blank lines skipped), ``.json`` file (a
      list of objects, or ``{"data": [...]}``) or ``.parquet`` file (list and struct cells, such as
      verl's ``prompt`` and ``reward_model``, become Python lists and dicts).
    - an existing directory written by ``Dataset.save_to_disk`` (its rows, whatever ``split`` is)
      or ``DatasetDict.save_to_disk`` (the ``split`` asked for).
    - otherwise a Hugging Face hub dataset id, loaded with ``datasets.load_dataset(id, split=split)``.
      A configuration is chosen with ``"id@config"`` (for example ``"openai/gsm8k@main"``).

    A source that is plainly a local path (a data-file extension, an absolute or ``./`` path, or
    more than one ``/``, which hub ids never have) but does not exist raises "not found" instead of
    being looked up on the hub.
    """
    registered = registry.data_source_of(source)
    if registered is not None:
        data_source, source_split = registered
        options = {"sandbox_train_size": sandbox_train_size, "sandbox_demo_error_rate": sandbox_demo_error_rate,
                   "sandbox_skill_share": sandbox_skill_share, "sandbox_double_form": sandbox_double_form}
        return _load_registered(source, data_source, source_split or split, options)

    path = Path(source).expanduser()
    if path.is_file():
        return _load_file(path)
    if path.is_dir():
        return _load_saved_dataset(path, split)
    if _looks_like_local_path(source):
        raise DataError("not found (no such file or directory)", source=source)
    return _load_from_hub(source, split)


def _load_registered(source: str, data_source: registry.DataSource, split: str, options: dict) -> list[dict]:
    """Rows from a registered loader, given the options it declares (others are for other sources)."""
    parameters = inspect.signature(data_source.loader).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    accepted = {k: v for k, v in options.items() if takes_any or k in parameters}
    try:
        rows = data_source.loader(split, **accepted)
    except ValueError as error:
        raise DataError(f"cannot load split {split!r}: {error}", source=source) from error
    return [dict(row) for row in rows]


def _looks_like_local_path(source: str) -> bool:
    """Whether ``source`` is clearly meant as a local path rather than a hub id like ``owner/name``."""
    suffix = Path(source).suffix.lower()
    return (
        suffix in SUPPORTED_EXTENSIONS
        or suffix in _OTHER_DATA_EXTENSIONS
        or source.startswith(("/", "~", "."))  # absolute, home or ./ and ../ relative
        or "\\" in source
        or source.count("/") > 1
    )


def _load_file(path: Path) -> list[dict]:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(path)
    if suffix == ".json":
        return _load_json(path)
    if suffix == ".parquet":
        return _load_parquet(path)
    raise DataError(
        f"unsupported file type {suffix or '(no extension)'!r}; supported: "
        f"{', '.join(SUPPORTED_EXTENSIONS)}, a directory written by datasets' save_to_disk, "
        "or a Hugging Face hub dataset id",
        source=str(path),
    )


def _load_jsonl(path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON: {error.msg} (column {error.colno})",
                                source=str(path), line=line_number) from error
            if not isinstance(row, dict):
                raise DataError(f"expected a JSON object, got {_json_type_name(row)}",
                                source=str(path), line=line_number)
            rows.append(row)
    return rows


def _load_json(path: Path) -> list[dict]:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"invalid JSON: {error.msg} (column {error.colno})",
                        source=str(path), line=error.lineno) from error
    # A {"data": [...]} wrapper is common in exported datasets (and what pandas' orient="table" makes).
    if isinstance(document, dict) and isinstance(document.get("data"), list):
        document = document["data"]
    if not isinstance(document, list):
        raise DataError(
            f'expected a list of objects or {{"data": [...]}}, got {_json_type_name(document)}'
            + (f" with keys {', '.join(map(repr, document))}" if isinstance(document, dict) else ""),
            source=str(path),
        )
    for index, row in enumerate(document):
        if not isinstance(row, dict):
            raise DataError(f"expected a JSON object, got {_json_type_name(row)}",
                            source=str(path), row=index)
    return document


def _json_type_name(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _load_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as parquet

    try:
        table = parquet.read_table(path)
    except Exception as error:  # pyarrow raises several types for corrupt or non-parquet files
        raise DataError(f"cannot read parquet file: {error}", source=str(path)) from error
    # to_pylist turns list<struct> cells (verl's chat-message prompts) into lists of dicts directly,
    # where pandas would give numpy object arrays that chat templates and json cannot handle.
    return table.to_pylist()


def _load_saved_dataset(path: Path, split: str) -> list[dict]:
    import datasets

    saved_as_dataset = (path / "state.json").is_file()
    saved_as_dataset_dict = (path / "dataset_dict.json").is_file()
    if not (saved_as_dataset or saved_as_dataset_dict):
        raise DataError(
            "is a directory but not one written by datasets' save_to_disk (no state.json or "
            "dataset_dict.json); pass a .jsonl, .json or .parquet file instead",
            source=str(path),
        )
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:
        raise DataError(f"cannot load the saved dataset: {error}", source=str(path)) from error
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(
                f"has no split {split!r}; available splits: {', '.join(loaded.keys())}",
                source=str(path),
            )
        loaded = loaded[split]
    return loaded.to_list()


def _load_from_hub(source: str, split: str) -> list[dict]:
    import datasets

    dataset_id, _, config_name = source.partition("@")
    try:
        dataset = datasets.load_dataset(dataset_id, name=config_name or None, split=split)
    except Exception as error:
        # datasets raises ConnectionError offline, DatasetNotFoundError for unknown ids, ValueError
        # for unknown splits or configs, and more; all mean the same to a user: no data from there.
        raise DataError(
            f"could not load split {split!r} of hub dataset {dataset_id!r}"
            + (f" (config {config_name!r})" if config_name else "")
            + f": the Hugging Face hub could not be reached, or the dataset, config or split was "
            f"not found ({type(error).__name__}: {error}). If a local file was meant, check the path.",
            source=source,
        ) from error
    return dataset.to_list()


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


# --------------------------------------------------------------------------------------------------
# Sampling prompts for training
# --------------------------------------------------------------------------------------------------


class PromptSampler:
    """Batches of example indices: a fresh permutation every epoch, deterministic and resumable.

    Each epoch visits every index exactly once, in an order fixed by ``(seed, epoch)``. A batch that
    reaches the end of an epoch is completed from the start of the next epoch's permutation, so all
    batches have ``batch_size`` indices (a batch larger than the dataset spans several epochs).
    ``state_dict()`` / ``load_state_dict()`` record ``(epoch, position)``; a sampler restored from
    a state draws exactly the batches the original would have drawn next. A named ``stream`` (CHORD's
    expert rows) draws its own order, independent of the unnamed (prompt) stream of the same seed.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int, stream: str = "") -> None:
        if n_examples < 1:
            raise ValueError(f"cannot sample prompts from an empty dataset (n_examples={n_examples})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream  # a named stream ("demonstrations") draws an order independent of the prompts'
        self.epoch = 0
        self.position = 0  # how many indices of this epoch's permutation were already drawn
        self._order_epoch: int | None = None
        self._order: list[int] = []

    def _epoch_order(self) -> list[int]:
        """This epoch's permutation, computed once per epoch."""
        if self._order_epoch != self.epoch:
            # A string key hashes seed and epoch together (random.Random seeds from its SHA-512), so
            # seed s at epoch e+1 does not replay seed s+1 at epoch e, as seeding with s+e would.
            # The unnamed stream keeps the key it always had, so existing runs draw what they drew.
            key = f"{self.stream}:" if self.stream else ""
            rng = random.Random(f"sftrl.PromptSampler:{key}{self.seed}:{self.epoch}")
            order = list(range(self.n_examples))
            rng.shuffle(order)
            self._order, self._order_epoch = order, self.epoch
        return self._order

    @property
    def epochs_done(self) -> float:
        """Passes over the data so far, fractional: 1.5 = one epoch and half of the next."""
        return self.epoch + self.position / self.n_examples

    def next_batch(self, size: int | None = None) -> list[int]:
        """The next ``size`` (default ``batch_size``) indices, crossing into the next epoch when this
        one runs out."""
        size = self.batch_size if size is None else size
        batch: list[int] = []
        while len(batch) < size:
            order = self._epoch_order()
            take = min(size - len(batch), self.n_examples - self.position)
            batch.extend(order[self.position : self.position + take])
            self.position += take
            if self.position == self.n_examples:
                self.epoch += 1
                self.position = 0
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where sampling stands, plus the settings a resumed sampler must share to continue it."""
        return {"epoch": self.epoch, "position": self.position,
                "n_examples": self.n_examples, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from ``state``; it must come from a sampler over as many examples with the same seed."""
        for setting in ("n_examples", "seed"):
            if setting in state and state[setting] != getattr(self, setting):
                raise ValueError(
                    f"cannot resume prompt sampling: the saved state has {setting}={state[setting]}, "
                    f"this sampler has {setting}={getattr(self, setting)}; the batches would differ"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.n_examples:
            raise ValueError(f"invalid sampler state: epoch={epoch}, position={position} "
                             f"for {self.n_examples} examples")
        self.epoch, self.position = epoch, position
