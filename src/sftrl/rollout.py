"""Rollouts: sample completions with Hugging Face `generate`, batched to fit memory.

One function, `generate_completions`, is the backend interface: prompts in, token ids, texts and
truncation flags out. Each prompt's `num_generations` samples come out contiguous (a GRPO group).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase


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


@torch.no_grad()
def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    num_generations: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 256,
    max_prompt_length: int | None = None,
    greedy: bool = False,
    progress=None,
) -> Completions:
    """Sample `num_generations` completions per prompt, `batch_size` sequences per `generate` call.

    Sampling is plain temperature/top-p (top-k and repetition penalties from the model's own
    generation config are switched off) so that the loss's temperature-scaled softmax is the
    distribution the tokens were drawn from.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos_ids = eos_token_ids(model, tokenizer)
    gen_config = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else temperature,
        top_p=None if greedy else top_p,
        top_k=None if greedy else 0,  # transformers fills None with 50: switch top-k off explicitly
        max_new_tokens=max_new_tokens,
        eos_token_id=eos_ids,
        pad_token_id=pad_id,
        num_return_sequences=num_generations,
    )
    prompts = encode_prompts(tokenizer, prompt_texts, max_prompt_length)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt rendered to zero tokens; check the prompt field and the chat template")
    device = next(model.parameters()).device
    per_call = max(1, batch_size // num_generations)
    was_training = model.training
    model.eval()
    out = Completions([], [], [], [])
    eos_set = set(eos_ids)
    try:
        for start in range(0, len(prompts), per_call):
            chunk = prompts[start:start + per_call]
            ids, mask = left_pad(chunk, pad_id, device)
            sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen_config)
            generated = sequences[:, ids.shape[1]:].tolist()
            for row, tokens in enumerate(generated):
                cut = next((i for i, t in enumerate(tokens) if t in eos_set), None)
                completion = tokens if cut is None else tokens[:cut + 1]
                out.prompt_ids.append(chunk[row // num_generations])
                out.completion_ids.append(completion)
                out.truncated.append(cut is None)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    out.texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    return out
