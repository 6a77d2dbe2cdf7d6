"""What every rollout backend shares: the sampling settings, prompt encoding, EOS handling, padding."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass(frozen=True)
class Sampling:
    """How to sample: one value for every backend, so that each draws from the same distribution."""

    num_generations: int  # samples per prompt, contiguous in the output (a GRPO group)
    max_new_tokens: int
    temperature: float  # softmax(logits / temperature); ignored when greedy
    top_p: float  # nucleus threshold (1.0: off); no top-k, no repetition penalty
    greedy: bool  # argmax instead of sampling (evaluation at temperature 0)
    eos_ids: tuple[int, ...]  # every id that ends a completion
    pad_id: int
    min_new_tokens: int = 0  # EOS is masked out of the first min_new_tokens steps (transformers' min_new_tokens)
    batch_size: int = 256  # sequences sampled together (a memory knob)


@dataclass
class Completions:
    """Sampled completions, one entry per sequence (prompt i's samples at i*G ... i*G+G-1)."""

    prompt_ids: list[list[int]]  # prompt tokens (after max_prompt_length truncation)
    completion_ids: list[list[int]]  # generated tokens up to and including the first EOS
    truncated: list[bool]  # True when no EOS came within max_new_tokens
    texts: list[str]  # decoded completions, special tokens removed


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Every id that ends a completion: the generation config's (chat models often list several) and the tokenizer's."""
    ids: set[int] = set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(configured, int):
        ids.add(configured)
    elif configured:
        ids.update(configured)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    if not ids:
        raise ValueError("the tokenizer and the model's generation config define no EOS token; completions could never end")
    return sorted(ids)


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: list[str], max_prompt_length: int | None) -> list[list[int]]:
    """Token ids of rendered prompts; the chat template already placed any BOS, so none is added here."""
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    if max_prompt_length is not None:
        ids = [p[-max_prompt_length:] for p in ids]  # keep the end: it holds the question and the generation prompt
    return ids


def left_pad(sequences: list[list[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), both (B, L), padded on the left so every sequence ends at the last column."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if seq:
            ids[row, width - len(seq):] = torch.tensor(seq, dtype=torch.long)
            mask[row, width - len(seq):] = 1
    return ids.to(device), mask.to(device)


def cut_at_eos(tokens: list[int], eos_ids: tuple[int, ...]) -> tuple[list[int], bool]:
    """The completion up to and including its first EOS, and whether it had none (truncated)."""
    cut = next((i for i, t in enumerate(tokens) if t in eos_ids), None)
    return (tokens, True) if cut is None else (tokens[:cut + 1], False)


def chunks(n: int, sampling: Sampling) -> list[range]:
    """Prompt ranges sampled together: batch_size sequences, whole groups (at least one prompt) each."""
    per_call = max(1, sampling.batch_size // sampling.num_generations)
    return [range(i, min(n, i + per_call)) for i in range(0, n, per_call)]
