"""Batching: sequences laid out for one forward pass, micro-batches, and the whole step's counts.

Losses are normalised by counts of the *whole optimizer step* (all micro-batches, all processes), so
accumulating micro-batches gives exactly one big batch's gradient; the counts are computed here from
every sequence of the step before any micro-batch runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import losses


@dataclass
class TokenBatch:
    """Left-padded prompts followed by right-padded targets (completions or demonstrations)."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    targets: torch.Tensor  # (B, T) target tokens
    target_mask: torch.Tensor  # (B, T) 1.0 on real target tokens


def pack(prompts: list[list[int]], targets: list[list[int]], pad_id: int, device: torch.device) -> TokenBatch:
    """Lay sequences out so every target starts at the same column (TRL's layout): then the last
    T+1 logits predict the targets and `logits_to_keep` spares the prompt's vocabulary projections."""
    width_p = max(len(p) for p in prompts)
    width_t = max(1, max(len(t) for t in targets))
    n = len(prompts)
    ids = torch.full((n, width_p + width_t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width_p + width_t), dtype=torch.long)
    tmask = torch.zeros((n, width_t), dtype=torch.float32)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        ids[i, width_p - len(p):width_p] = torch.tensor(p, dtype=torch.long)
        attn[i, width_p - len(p):width_p + len(t)] = 1
        if t:
            ids[i, width_p:width_p + len(t)] = torch.tensor(t, dtype=torch.long)
            tmask[i, :len(t)] = 1.0
    return TokenBatch(ids.to(device), attn.to(device), ids[:, width_p:].to(device), tmask.to(device))


def target_logits(model, batch: TokenBatch) -> torch.Tensor:
    """Logits (B, T, V) that predict each target token (unscaled)."""
    # Positions count real tokens only, so left padding does not shift them (as generate() does).
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    width_t = batch.targets.shape[1]
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids, logits_to_keep=width_t + 1, use_cache=False).logits
    return logits[:, :-1]  # (B, T, V): logit at column j predicts the token at column j+1


def target_logprobs(model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = True):
    """log π(target_t | prefix) and entropy H_t for every target position: two (B, T) tensors."""
    return losses.token_logprobs_and_entropy(target_logits(model, batch), batch.targets, temperature, with_entropy)


def micro_batches(n: int, size: int) -> list[range]:
    """Row ranges of at most `size` rows covering 0..n-1 in order."""
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def counted_tokens(target_ids: list[list[int]], excluded: list[bool]) -> int:
    """Target tokens that enter the loss: every token of every sequence not excluded (e.g. a truncated
    completion under `mask_truncated_completions`)."""
    return sum(0 if skip else len(t) for t, skip in zip(target_ids, excluded))
