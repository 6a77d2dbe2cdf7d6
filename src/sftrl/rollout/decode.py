"""The `torch` backend: sftrl's own decode loop over the training model.

What it saves over `model.generate` (timed in the README's Speed section):
- each prompt is prefilled once and its KV cache copied to its `num_generations` rows, where
  `generate` prefills every copy of the prompt;
- the KV cache is allocated once for the whole generation and each step writes one column of it;
  `generate`'s DynamicCache concatenates, so copies the whole cache of every layer, at every step
  (the largest cost of the loop before this buffer, in a torch.profiler trace on the sandbox model);
- rows that finished (EOS) leave the batch once they are a quarter of it, so later steps compute
  mostly rows still running;
- no logits processors, stopping criteria or per-step generation bookkeeping: one forward, one
  sampling step (temperature, top-p, multinomial) per token;
- for Llama-family models (Llama, Mistral, Qwen2, Qwen3) the forward is sftrl's own decode step
  (:mod:`.llama`: fused projections, no per-step mask or rotary work), about 20% faster than the
  model's forward on the sandbox model; any other model decodes through its forward (`ForwardDecoder`).
The tokens are drawn from exactly the distribution `generate` uses with the same settings
(temperature-scaled softmax, top-p as transformers' TopPLogitsWarper, no top-k), with torch's global
generator, so seeded runs repeat and resume.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import Cache, CacheLayerMixin

from ..models import cache_keyword
from .common import Sampling, chunks, left_pad
from . import llama

COMPACT_WHEN_FINISHED = 0.25  # finished rows leave the batch when they are this share of it


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


class BufferLayer(CacheLayerMixin):
    """One layer's keys and values in buffers (B, H, capacity, D) allocated once: each forward writes
    its columns in place and attends to a view of the columns written so far."""

    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, _ = key_states.shape
        self.keys = key_states.new_empty((batch, heads, self.capacity, key_states.shape[-1]))
        self.values = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0  # (kv length, kv offset) as a DynamicLayer reports them

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity


def buffer_cache(layers: list[tuple[torch.Tensor, torch.Tensor]], capacity: int) -> Cache:
    """A cache of BufferLayers holding each layer's (keys, values), each (B, H, L, D), L <= capacity."""
    cache = Cache(layers=[BufferLayer(capacity) for _ in layers])
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)
    return cache


class ForwardDecoder:
    """Decodes one batch of rows token by token through the model's own forward (any causal LM), with
    the prompts' cache copied into BufferLayers; the same interface as :class:`.llama.LlamaDecoder`."""

    def __init__(self, model: PreTrainedModel, prefill: DynamicCache, repeat: int, attention: torch.Tensor):
        self.model, self.keyword, self.attention = model, cache_keyword(model), attention  # (B, C)
        self.cache = buffer_cache([(layer.keys.repeat_interleave(repeat, dim=0),
                                    layer.values.repeat_interleave(repeat, dim=0)) for layer in prefill.layers],
                                  attention.shape[1])

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row but `rows` (b,): copy their cache, the others' is freed."""
        self.cache = buffer_cache([(layer.keys[rows, :, :layer.length], layer.values[rows, :, :layer.length])
                                   for layer in self.cache.layers], self.attention.shape[1])
        self.attention = self.attention[rows]

    def __call__(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) of the token after `token` (b,), at positions `position` (b,)."""
        end = self.cache.get_seq_length() + 1
        return self.model(input_ids=token[:, None], attention_mask=self.attention[:, :end], position_ids=position[:, None],
                          use_cache=True, **{self.keyword: self.cache}).logits[:, -1]


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
    ids, mask = left_pad(prompts, s.pad_id, device)  # (N, P)
    width = ids.shape[1]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)  # (N, P): left padding does not shift positions
    prefill = DynamicCache()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                   logits_to_keep=1, **{cache_keyword(model): prefill}).logits[:, -1]  # (N, V)
    # One prefill per prompt: its G samples start from copies of its cache rows, in buffers with
    # room for every token to come.
    logits = logits.repeat_interleave(g, dim=0)  # (B, V), B = N·G
    batch = logits.shape[0]
    attention = torch.cat([mask.repeat_interleave(g, dim=0), mask.new_ones(batch, steps)], dim=1)  # (B, P + T)
    position = positions[:, -1].repeat_interleave(g, dim=0) + 1  # (B,) position of the next token
    if llama.supports(model, width + steps):  # Llama-family models decode through sftrl's own step
        decoder = llama.LlamaDecoder(model, prefill, g, attention)
    else:
        decoder = ForwardDecoder(model, prefill, g, attention)
    del prefill
    tokens = torch.full((batch, steps), s.pad_id, dtype=torch.long, device=device)  # (B, T)
    lengths = torch.full((batch,), steps, dtype=torch.long, device=device)  # (B,)
    rows = torch.arange(batch, device=device)  # original row of each row in the batch
    running = torch.ones(batch, dtype=torch.bool, device=device)  # (b,) False once a row has its EOS
    eos = torch.tensor(s.eos_ids, device=device)
    for step in range(steps):
        token = next_tokens(logits, s, step).masked_fill(~running, s.pad_id)  # (b,)
        tokens[rows, step] = token
        ended = running & torch.isin(token, eos)
        if bool(ended.any()):
            lengths[rows[ended]] = step + 1
            running &= ~ended
            if not bool(running.any()):
                break
            if float((~running).float().mean()) >= COMPACT_WHEN_FINISHED:
                keep = running.nonzero().squeeze(1)
                decoder.keep(keep)
                rows, token, position, running = rows[keep], token[keep], position[keep], running[keep]
        if step + 1 == steps:
            break
        logits = decoder(token, position)  # (b, V)
        position = position + 1
    return [row[:n] for row, n in zip(tokens.tolist(), lengths.tolist())]
