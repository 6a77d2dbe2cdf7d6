"""The `torch` backend: sftrl's own decode loop over the training model's forward.

What it saves over `model.generate` (measured in benchmarks/README.md):
- each prompt is prefilled once and its KV cache copied to its `num_generations` rows, where
  `generate` prefills every copy of the prompt;
- rows that finished (EOS) leave the batch, so later steps compute only the rows still running;
- no logits processors, stopping criteria or per-step generation bookkeeping: one forward, one
  sampling step (temperature, top-p, multinomial) per token.
The tokens are drawn from exactly the distribution `generate` uses with the same settings
(temperature-scaled softmax, top-p as transformers' TopPLogitsWarper, no top-k), with torch's global
generator, so seeded runs repeat and resume.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel

from ..models import cache_keyword
from .common import Sampling, chunks, left_pad


def filter_top_p(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    """Logits (B, V) with the tokens outside the nucleus set to -inf: transformers' TopPLogitsWarper
    (ascending sort, drop tokens whose cumulative probability is <= 1 - top_p, keep at least one)."""
    if top_p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, descending=False)  # (B, V)
    cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
    drop_sorted = cumulative <= (1 - top_p)
    drop_sorted[..., -1:] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)  # (B, V) back in vocabulary order
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(logits: torch.Tensor, sampling: Sampling, step: int) -> torch.Tensor:
    """One token per row (B,) from the last position's logits (B, V)."""
    logits = logits.float()
    if step < sampling.min_new_tokens:  # as transformers' MinNewTokensLengthLogitsProcessor
        logits[:, list(sampling.eos_ids)] = float("-inf")
    if sampling.greedy:
        return logits.argmax(dim=-1)
    probs = filter_top_p(logits / sampling.temperature, sampling.top_p).softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


@torch.no_grad()
def sample_with_decode_loop(model: PreTrainedModel, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Each prompt's `num_generations` completions (EOS included), prompt i's at i*G ... i*G+G-1."""
    out: list[list[int]] = []
    for rows in chunks(len(prompts), sampling):
        out += _decode([prompts[i] for i in rows], model, sampling)
    return out


def _decode(prompts: list[list[int]], model: PreTrainedModel, s: Sampling) -> list[list[int]]:
    g, steps = s.num_generations, s.max_new_tokens
    device = next(model.parameters()).device
    cache_kw = cache_keyword(model)
    ids, mask = left_pad(prompts, s.pad_id, device)  # (N, P)
    width = ids.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, P): left padding does not shift positions
    cache = DynamicCache()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **{cache_kw: cache}).logits[:, -1]  # (N, V)
    # One prefill per prompt: its G samples start from copies of the same cache rows.
    cache.batch_repeat_interleave(g)
    logits = logits.repeat_interleave(g, dim=0)  # (B, V), B = N·G
    batch = logits.shape[0]
    attention = torch.cat([mask.repeat_interleave(g, dim=0), mask.new_ones(batch, steps)], dim=1)  # (B, P + T)
    position = positions[:, -1:].repeat_interleave(g, dim=0) + 1  # (B, 1) position of the next token
    tokens = torch.full((batch, steps), s.pad_id, dtype=torch.long, device=device)  # (B, T)
    lengths = torch.full((batch,), steps, dtype=torch.long, device=device)  # (B,)
    rows = torch.arange(batch, device=device)  # original row of each row still running
    eos = torch.tensor(s.eos_ids, device=device)
    for step in range(steps):
        token = next_tokens(logits, s, step)  # (b,)
        tokens[rows, step] = token
        running = ~torch.isin(token, eos)  # (b,)
        if not bool(running.all()):
            lengths[rows[~running]] = step + 1
            if not bool(running.any()):
                break
            # Finished rows leave the batch (and the cache): later steps compute only the rows still running.
            keep = running.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, attention, position = rows[keep], token[keep], attention[keep], position[keep]
        if step + 1 == steps:
            break
        logits = model(input_ids=token[:, None], attention_mask=attention[:, :width + step + 1], position_ids=position,
                       use_cache=True, **{cache_kw: cache}).logits[:, -1]  # (b, V)
        position = position + 1
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
