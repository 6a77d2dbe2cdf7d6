"""Batching: sequences laid out for one forward pass, micro-batches, and the whole step's counts.

Losses are normalised by counts of the *whole optimizer step* (all micro-batches, all processes), so
accumulating micro-batches gives exactly one big batch's gradient; the counts are computed here from
every sequence of the step before any micro-batch runs. Micro-batches are therefore free to take the
step's rows in any order: they take them sorted by length, so that little of a forward pass is padding.

Rows that share a prompt (a GRPO group: G rollouts, and the demonstration for LUFFY and SRFT) share
one forward pass of it: the prompt runs once, and its rows continue from copies of its KV cache, with
gradients flowing back through the copies into the one prompt pass. This computes the same function
as running every row whole (tests/test_batching.py compares losses and gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from . import losses
from .models import activation_checkpointing, cache_keyword


@dataclass
class TokenBatch:
    """Prompts, each distinct one stored once (left-padded), and the targets (completions or
    demonstrations, right-padded) that follow them; row i's prompt is prompt_ids[prompt_of[i]]."""

    prompt_ids: torch.Tensor  # (U, P) distinct prompts, left-padded so that every one ends at column P-1
    prompt_mask: torch.Tensor  # (U, P) 1 on real prompt tokens
    prompt_of: torch.Tensor  # (B,) long: the prompt row of each sequence
    targets: torch.Tensor  # (B, T) target tokens
    target_mask: torch.Tensor  # (B, T) 1.0 on real target tokens

    @property
    def shares_prompts(self) -> bool:
        return self.prompt_ids.shape[0] < self.targets.shape[0]


def pack(prompts: list[list[int]], targets: list[list[int]], pad_id: int, device: torch.device) -> TokenBatch:
    """Lay sequences out so every target starts at the same column (TRL's layout): then the last
    T+1 logits predict the targets and `logits_to_keep` spares the prompt's vocabulary projections.
    Equal prompts are stored once."""
    index: dict[tuple[int, ...], int] = {}
    prompt_of = [index.setdefault(tuple(p), len(index)) for p in prompts]
    distinct = [list(p) for p in index]
    width_p = max(len(p) for p in distinct)
    width_t = max(1, max(len(t) for t in targets))
    prompt_ids = torch.full((len(distinct), width_p), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((len(distinct), width_p), dtype=torch.long)
    for u, p in enumerate(distinct):
        prompt_ids[u, width_p - len(p):] = torch.tensor(p, dtype=torch.long)
        prompt_mask[u, width_p - len(p):] = 1
    target_ids = torch.full((len(targets), width_t), pad_id, dtype=torch.long)
    target_mask = torch.zeros((len(targets), width_t), dtype=torch.float32)
    for i, t in enumerate(targets):
        if t:
            target_ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
            target_mask[i, :len(t)] = 1.0
    return TokenBatch(prompt_ids.to(device), prompt_mask.to(device), torch.tensor(prompt_of, device=device),
                      target_ids.to(device), target_mask.to(device))


def _whole_rows(model, batch: TokenBatch) -> torch.Tensor:
    """Logits (B, T, V) from one forward over [prompt | target] rows, the prompt repeated per row."""
    input_ids = torch.cat([batch.prompt_ids[batch.prompt_of], batch.targets], dim=1)  # (B, P + T)
    attention = torch.cat([batch.prompt_mask[batch.prompt_of], batch.target_mask.long()], dim=1)  # (B, P + T)
    # Positions count real tokens only, so left padding does not shift them (as generate() does).
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    width_t = batch.targets.shape[1]
    logits = model(input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                   logits_to_keep=width_t + 1, use_cache=False).logits
    return logits[:, :-1]  # (B, T, V): logit at column j predicts the token at column j+1


def _shared_prompts(model, batch: TokenBatch) -> torch.Tensor:
    """Logits (B, T, V): each distinct prompt runs once, its rows continue from copies of its cache."""
    keyword = cache_keyword(model)
    prompt_positions = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (U, P)
    cache = DynamicCache()
    first = model(input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask, position_ids=prompt_positions,
                  logits_to_keep=1, use_cache=True, **{keyword: cache}).logits  # (U, 1, V) predicts each target's 1st token
    # Every row reads its prompt's keys and values; indexing is differentiable, so each row's
    # gradient flows back into the one prompt pass (summed over the rows that share it).
    cache.batch_select_indices(batch.prompt_of)
    width_t = batch.targets.shape[1]
    if width_t == 1:
        return first[batch.prompt_of]
    inputs = batch.targets[:, :-1]  # (B, T-1): the last target token predicts nothing we train on
    attention = torch.cat([batch.prompt_mask[batch.prompt_of], batch.target_mask[:, :-1].long()], dim=1)  # (B, P+T-1)
    positions = prompt_positions[batch.prompt_of, -1:] + 1 + torch.arange(width_t - 1, device=inputs.device)  # (B, T-1)
    rest = model(input_ids=inputs, attention_mask=attention, position_ids=positions, use_cache=True,
                 **{keyword: cache}).logits  # (B, T-1, V)
    return torch.cat([first[batch.prompt_of], rest], dim=1)  # (B, T, V)


def target_logits(model, batch: TokenBatch, share_prompts: bool = True) -> torch.Tensor:
    """Logits (B, T, V) that predict each target token (unscaled). share_prompts=False makes it one
    forward pass whatever the batch holds (sharded models need every process to run as many)."""
    # Activation checkpointing switches the cache off in training, so it would drop the shared prompt.
    if share_prompts and batch.shares_prompts and not activation_checkpointing(model):
        return _shared_prompts(model, batch)
    return _whole_rows(model, batch)


def target_logprobs(model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = True):
    """log π(target_t | prefix) and entropy H_t for every target position: two (B, T) tensors."""
    return losses.token_logprobs_and_entropy(target_logits(model, batch), batch.targets, temperature, with_entropy)


def micro_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Row indices of micro-batches of at most `size` rows covering every row once: the rows sorted by
    length (longest first, ties in row order), so that each micro-batch pads to a similar length."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + size] for i in range(0, len(order), size)]


def counted_tokens(target_ids: list[list[int]], excluded: list[bool]) -> int:
    """Target tokens that enter the loss: every token of every sequence not excluded (e.g. a truncated
    completion under `mask_truncated_completions`)."""
    return sum(0 if skip else len(t) for t, skip in zip(target_ids, excluded))
