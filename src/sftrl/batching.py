"""Batching: sequences laid out for one forward pass, micro-batches, and the whole step's counts.

Losses are normalised by counts of the *whole optimizer step* (all micro-batches, all processes), so
accumulating micro-batches gives exactly one big batch's gradient; the counts are computed here from
every sequence of the step before any micro-batch runs. Micro-batches are therefore free to take the
step's rows in any order: they take them sorted by length, so that little of a forward pass is padding.

Rows that share a prompt (a GRPO group: G rollouts, and the demonstration for LUFFY and SRFT) share
one forward pass of it: the prompt runs once, and its rows continue from copies of its KV cache, with
gradients flowing back through the copies into the one prompt pass. This computes the same function
as running every row whole (tests/test_batching.py compares losses and gradients).

Log-probabilities and entropies are taken in chunks of `chunk_size` target tokens (`logprob_chunk_size`):
the model runs up to its last hidden states, and each chunk goes through the LM head, log-softmax,
gather and entropy inside torch.utils.checkpoint, so only one chunk's (tokens, V) logits exist at a
time, in forward and in backward, instead of the whole (B, T, V) (at V = 152k and 8192 tokens, 5 GB
of float32 per sequence). The values and gradients are the unchunked ones (tests/test_chunked_logprobs.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.utils.checkpoint import checkpoint
from transformers import DynamicCache

from . import losses
from .models import AdapterFreeReference, activation_checkpointing, base_model, cache_keyword


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


def _forward(model, hidden: bool, logits_to_keep: int = 0, **kwargs) -> torch.Tensor:
    """The model's logits, or with `hidden` the last hidden states the LM head would turn into them,
    of the last `logits_to_keep` positions (0 = all)."""
    if not hidden:
        return model(logits_to_keep=logits_to_keep, **kwargs).logits
    if isinstance(model, AdapterFreeReference):
        states = model.backbone(**kwargs).last_hidden_state
    else:
        states = base_model(model).get_decoder()(**kwargs).last_hidden_state
    return states[:, -logits_to_keep:] if logits_to_keep else states


def _whole_rows(model, batch: TokenBatch, hidden: bool = False) -> torch.Tensor:
    """Logits (B, T, V) from one forward over [prompt | target] rows, the prompt repeated per row
    (with `hidden`: the last hidden states (B, T, H) instead)."""
    input_ids = torch.cat([batch.prompt_ids[batch.prompt_of], batch.targets], dim=1)  # (B, P + T)
    attention = torch.cat([batch.prompt_mask[batch.prompt_of], batch.target_mask.long()], dim=1)  # (B, P + T)
    # Positions count real tokens only, so left padding does not shift them (as generate() does).
    position_ids = (attention.cumsum(-1) - 1).clamp(min=0)
    width_t = batch.targets.shape[1]
    logits = _forward(model, hidden, input_ids=input_ids, attention_mask=attention, position_ids=position_ids,
                      logits_to_keep=width_t + 1, use_cache=False)
    return logits[:, :-1]  # (B, T, V): logit at column j predicts the token at column j+1


def _shared_prompts(model, batch: TokenBatch, hidden: bool = False) -> torch.Tensor:
    """Logits (B, T, V) (or hidden states (B, T, H)): each distinct prompt runs once, its rows continue
    from copies of its cache."""
    keyword = cache_keyword(model)
    prompt_positions = (batch.prompt_mask.cumsum(-1) - 1).clamp(min=0)  # (U, P)
    cache = DynamicCache()
    first = _forward(model, hidden, input_ids=batch.prompt_ids, attention_mask=batch.prompt_mask,
                     position_ids=prompt_positions, logits_to_keep=1, use_cache=True,
                     **{keyword: cache})  # (U, 1, V) predicts each target's 1st token
    # Every row reads its prompt's keys and values; the selection is differentiable, so each row's
    # gradient flows back into the one prompt pass (summed over the rows that share it). index_select,
    # whose backward is index_add, not indexing, whose backward (index_put with accumulate) runs ~15x slower on CPU.
    for layer in cache.layers:
        layer.keys, layer.values = layer.keys.index_select(0, batch.prompt_of), layer.values.index_select(0, batch.prompt_of)
    first = first.index_select(0, batch.prompt_of)  # (B, 1, V)
    width_t = batch.targets.shape[1]
    if width_t == 1:
        return first
    inputs = batch.targets[:, :-1]  # (B, T-1): the last target token predicts nothing we train on
    attention = torch.cat([batch.prompt_mask[batch.prompt_of], batch.target_mask[:, :-1].long()], dim=1)  # (B, P+T-1)
    positions = prompt_positions[batch.prompt_of, -1:] + 1 + torch.arange(width_t - 1, device=inputs.device)  # (B, T-1)
    rest = _forward(model, hidden, input_ids=inputs, attention_mask=attention, position_ids=positions, use_cache=True,
                    **{keyword: cache})  # (B, T-1, V)
    return torch.cat([first, rest], dim=1)  # (B, T, V)


def target_logits(model, batch: TokenBatch, hidden: bool = False, share_prompts: bool = True) -> torch.Tensor:
    """Logits (B, T, V) that predict each target token (unscaled); with `hidden`, the last hidden
    states (B, T, H) the LM head turns into them. share_prompts=False makes it one forward pass
    whatever the batch holds (sharded models need every process to run as many)."""
    # Activation checkpointing switches the cache off in training, so it would drop the shared prompt:
    # then every row runs whole.
    if share_prompts and batch.shares_prompts and not activation_checkpointing(model):
        return _shared_prompts(model, batch, hidden)
    return _whole_rows(model, batch, hidden)


def target_logprobs(model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = True,
                    chunk_size: int = 0):
    """log π(target_t | prefix) and entropy H_t for every target position: two (B, T) tensors."""
    scores = score_targets(model, batch, temperature, with_entropy=with_entropy, chunk_size=chunk_size)
    return scores.logps, scores.entropy


@dataclass
class TargetScores:
    """What the losses need of one micro-batch's targets, all (B, T)."""

    logps: torch.Tensor  # log π_θ(target) at `temperature`, with gradient
    entropy: torch.Tensor | None  # H_t of π_θ at `temperature`, with gradient
    ref_logps: torch.Tensor | None = None  # log π_ref(target) at `temperature`, no gradient
    kl: torch.Tensor | None = None  # exact KL(π_θ‖π_ref) of the unscaled logits; gradient iff kl_grad


def _head(model):
    """The LM head of a model (or of a LoRA policy's adapter-free reference), as a function."""
    if isinstance(model, AdapterFreeReference):
        return model.head
    return base_model(model).get_output_embeddings()


def chunkable(model) -> bool:
    """Whether logits are exactly LM head(last hidden states), so they can be taken in chunks; models
    that scale or soft-cap their logits (Gemma 2, Cohere) take the whole-logits path."""
    config = base_model(model.policy if isinstance(model, AdapterFreeReference) else model).config
    text = getattr(config, "get_text_config", lambda: config)()
    return getattr(text, "final_logit_softcapping", None) is None and getattr(text, "logit_scale", None) in (None, 1, 1.0)


def _chunk_scores(head, hidden, tokens, temperature, with_entropy, ref_head, ref_hidden, ref_logps, kl_grad):
    """TargetScores' fields for a chunk of N tokens: hidden (N, H), tokens (N,), ref_hidden (N, H) or None."""
    logits = head(hidden)  # (N, V)
    logps, entropy = losses.token_logprobs_and_entropy(logits.unsqueeze(0), tokens.unsqueeze(0), temperature,
                                                       with_entropy)
    ref_lp = kl = None
    if ref_hidden is not None:
        with torch.no_grad():
            ref_logits = ref_head(ref_hidden)  # (N, V)
            if ref_logps:
                ref_lp = losses.token_logprobs_and_entropy(ref_logits.unsqueeze(0), tokens.unsqueeze(0), temperature,
                                                           False)[0]
        kl = losses.exact_kl((logits if kl_grad else logits.detach()).unsqueeze(0), ref_logits.unsqueeze(0))
    return logps, entropy, ref_lp, kl


def score_targets(model, batch: TokenBatch, temperature: float = 1.0, *, with_entropy: bool = True,
                  reference=None, ref_logps: bool = False, kl_grad: bool = False, chunk_size: int = 0,
                  share_prompts: bool = True) -> TargetScores:
    """Log-probabilities and entropies of the targets under `model`; with a `reference`, the exact
    full-vocabulary KL to it at every position (`kl`, differentiable in the policy iff `kl_grad`) and,
    with `ref_logps`, its log-probabilities. chunk_size > 0 takes them `chunk_size` tokens at a time
    (module docstring); 0 computes the whole (B, T, V) logits at once. share_prompts: as target_logits."""
    targets = batch.targets
    if chunk_size <= 0 or not chunkable(model) or (reference is not None and not chunkable(reference)):
        logits = target_logits(model, batch, share_prompts=share_prompts)  # (B, T, V)
        logps, entropy = losses.token_logprobs_and_entropy(logits, targets, temperature, with_entropy)
        scores = TargetScores(logps, entropy)
        if reference is not None:
            with torch.no_grad():
                ref_logits = target_logits(reference, batch, share_prompts=share_prompts)  # (B, T, V)
                if ref_logps:
                    scores.ref_logps = losses.token_logprobs_and_entropy(ref_logits, targets, temperature, False)[0]
            scores.kl = losses.exact_kl(logits if kl_grad else logits.detach(), ref_logits)
        return scores
    shape = targets.shape  # (B, T)
    hidden = target_logits(model, batch, hidden=True, share_prompts=share_prompts).flatten(0, 1)  # (B·T, H)
    ref_hidden = None
    if reference is not None:
        with torch.no_grad():
            ref_hidden = target_logits(reference, batch, hidden=True,
                                       share_prompts=share_prompts).flatten(0, 1)  # (B·T, H)
    tokens = targets.flatten()  # (B·T,)
    # Recomputing a chunk in backward frees its logits in between; without a backward there is nothing to keep.
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    head, ref_head = _head(model), _head(reference) if reference is not None else None
    pieces = []
    for start in range(0, tokens.numel(), chunk_size):
        part = slice(start, start + chunk_size)
        args = (head, hidden[part], tokens[part], temperature, with_entropy, ref_head,
                ref_hidden[part] if ref_hidden is not None else None, ref_logps, kl_grad)
        pieces.append(checkpoint(_chunk_scores, *args, use_reentrant=False) if recompute else _chunk_scores(*args))

    def joined(index: int) -> torch.Tensor | None:
        if pieces[0][index] is None:
            return None
        return torch.cat([piece[index] for piece in pieces], dim=1).view(shape)

    return TargetScores(joined(0), joined(1), joined(2), joined(3))


def micro_batches(lengths: list[int], size: int) -> list[list[int]]:
    """Row indices of micro-batches of at most `size` rows covering every row once: the rows sorted by
    length (longest first, ties in row order), so that each micro-batch pads to a similar length."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + size] for i in range(0, len(order), size)]


def counted_tokens(target_ids: list[list[int]], excluded: list[bool]) -> int:
    """Target tokens that enter the loss: every token of every sequence not excluded (e.g. a truncated
    completion under `mask_truncated_completions`)."""
    return sum(0 if skip else len(t) for t, skip in zip(target_ids, excluded))


def pad_rows(rows: list[torch.Tensor], width: int, device: torch.device) -> torch.Tensor:
    """Per-row values of the targets (each (len(target),)), right-padded with 0 to (B, width) as
    `pack` lays the targets out."""
    out = torch.zeros((len(rows), width), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :len(row)] = row[:width]
    return out.to(device)
