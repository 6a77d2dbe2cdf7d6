"""The run's rows: loading them, which training rows are kept (the demonstration-length policy), their token ids (cached),
and the samplers that draw each step's share of them on this process."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import registry
from .config import Config
from .data import Example, load_examples, render_prompt
from .errors import ConfigError
from .parallel import Collective
from .prompt_sampler import PromptSampler


def load_rows(config: Config, require_demo: bool) -> tuple[list[Example], list[Example]]:
    """The training rows and the evaluation rows (eval_data "auto": the registered task's default, if any)."""
    train = load_examples(
        config.train_data, config.train_split, prompt_field=config.prompt_field, answer_field=config.answer_field,
        demo_field=config.demo_field, require_demo=require_demo, system_prompt=config.system_prompt,
        limit=config.max_train_examples, sandbox_demo_error_rate=config.sandbox_demo_error_rate,
        sandbox_skill_share=config.sandbox_skill_share, sandbox_train_size=config.sandbox_train_size,
        sandbox_double_form=config.sandbox_double_form)
    source = config.eval_data
    if source == "auto":
        registered = registry.data_source_of(config.train_data)
        source = registered[0].default_eval if registered is not None else None
    if not source:
        return train, []
    return train, load_examples(source, config.eval_split, prompt_field=config.prompt_field,
                                answer_field=config.answer_field, demo_field=config.demo_field, require_demo=False,
                                system_prompt=config.system_prompt, limit=config.max_eval_examples)


def kept_rows(examples: list[Example], tokenizer, config: Config,
              warn: Callable[[str], None]) -> tuple[list[Example], dict[str, Any]]:
    """The rows training keeps under `demo_truncation` (drop leaves out those whose demonstration + EOS is
    longer than max_completion_length), and a report of how many are longer; `warn` says so when any is."""
    limit = config.max_completion_length
    lengths: list[int] = []
    for start in range(0, len(examples), 1000):  # batched: fast tokenizers are much faster per batch
        texts = [e.demonstration for e in examples[start:start + 1000]]
        lengths += [len(ids) + 1 for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    long = [i for i, n in enumerate(lengths) if n > limit]
    report = {"total": len(examples), "longer_than_max_completion_length": len(long),
              "demo_truncation": config.demo_truncation}
    if not long:
        return examples, report
    effect = {"cut": f"each is trained on (and, inside LUFFY/SRFT groups, scored by) its first {limit} tokens",
              "drop": f"those rows are left out of training ({len(examples) - len(long)} remain)",
              "keep": "they are trained on whole"}[config.demo_truncation]
    warn(f"warning: {len(long)} of {len(examples)} demonstrations are longer than max_completion_length="
         f"{limit} tokens (the longest has {max(lengths)}); demo_truncation={config.demo_truncation}: {effect}. "
         "Set demo_truncation to cut, drop or keep to choose.")
    if config.demo_truncation != "drop":
        return examples, report
    if len(long) == len(examples):
        raise ConfigError(f"demo_truncation: drop leaves no training rows: every demonstration is longer than "
                          f"max_completion_length={limit}")
    dropped = set(long)
    return [e for i, e in enumerate(examples) if i not in dropped], report


class Rows:
    """The kept training rows, their token ids, and the two samplers (seeded, checkpointed) that draw them:
    the step's prompts and, independently, CHORD's expert rows. Draws are global; each process keeps its
    share, global[rank::world]."""

    def __init__(self, examples: list[Example], tokenizer, config: Config, collective: Collective):
        self.examples = examples
        self.tokenizer = tokenizer
        self.config = config
        self.collective = collective
        self.eos_id = tokenizer.eos_token_id
        self.sampler = PromptSampler(len(examples), config.batch_size, config.seed)
        self.demo_sampler = PromptSampler(len(examples), 1, config.seed, stream="demonstrations")
        self._positions = {id(e): i for i, e in enumerate(examples)}
        self._prompt_cache: dict[int, list[int]] = {}

    def step_rows(self, size: int) -> list[Example]:
        """This process's share of the next `size` rows of the prompt sampler."""
        return [self.examples[i] for i in self.collective.local_rows(self.sampler.next_batch(size))]

    def draw_demonstrations(self, count: int) -> list[Example]:
        """This process's share of `count` rows drawn for their demonstrations by the demonstration sampler."""
        if count == 0:
            return []
        return [self.examples[i] for i in self.collective.local_rows(self.demo_sampler.next_batch(count))]

    def position(self, example: Example) -> int:
        return self._positions[id(example)]

    def context_ids(self, prompt: str | list[dict]) -> list[int]:
        """Token ids of a prompt (text or chat messages) rendered as training prompts are (chat template,
        chat_template_kwargs), not cut by max_prompt_length (OPSD's teacher context)."""
        text = render_prompt(self.tokenizer, prompt, self.config.chat_template_kwargs)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, example: Example) -> list[int]:
        """The rendered prompt's token ids, kept to its last max_prompt_length tokens; cached per row."""
        key = id(example)
        if key not in self._prompt_cache:
            ids = self.context_ids(example.prompt)
            if self.config.max_prompt_length:
                ids = ids[-self.config.max_prompt_length:]
            self._prompt_cache[key] = ids
        return self._prompt_cache[key]

    def text_ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def demonstration_ids(self, example: Example) -> tuple[list[int], bool]:
        """Token ids of a demonstration + EOS, cut to max_completion_length unless demo_truncation is
        keep; and whether it was cut."""
        if example.demonstration is None:
            raise ValueError(f"{example.source} row {example.index} has no demonstration")
        ids = self.text_ids(example.demonstration) + [self.eos_id]
        limit = self.config.max_completion_length
        if self.config.demo_truncation == "keep":
            return ids, False
        return ids[:limit], len(ids) > limit
