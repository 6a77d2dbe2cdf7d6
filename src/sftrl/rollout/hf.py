"""The `generate` backend: transformers' `model.generate`, one call per chunk of prompts."""

from __future__ import annotations

import torch
from transformers import GenerationConfig, PreTrainedModel

from .common import Sampling, chunks, cut_at_eos, left_pad


@torch.no_grad()
def sample_with_generate(model: PreTrainedModel, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
    """Each prompt's `num_generations` completions (EOS included, cut at the first one), prompt by prompt.

    The generation config is built here from `sampling` alone, so that the loss's temperature-scaled
    softmax is the distribution the tokens were drawn from. `generate` fills every setting left unset
    from the model's own generation config (a checkpoint's repetition_penalty, min_p, suppress_tokens,
    ...), so the model's is swapped for an empty one during the call.
    """
    s = sampling
    config = GenerationConfig(
        do_sample=not s.greedy,
        temperature=None if s.greedy else s.temperature,
        top_p=None if s.greedy else s.top_p,
        top_k=None if s.greedy else 0,  # transformers fills None with 50: switch top-k off explicitly
        max_new_tokens=s.max_new_tokens,
        min_new_tokens=s.min_new_tokens or None,
        eos_token_id=list(s.eos_ids),
        pad_token_id=s.pad_id,
        num_return_sequences=s.num_generations,
    )
    device = next(model.parameters()).device
    out: list[list[int]] = []
    own, model.generation_config = model.generation_config, GenerationConfig()
    try:
        for rows in chunks(len(prompts), s):
            ids, mask = left_pad([prompts[i] for i in rows], s.pad_id, device)
            sequences = model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
            out += [cut_at_eos(tokens, s.eos_ids)[0] for tokens in sequences[:, ids.shape[1]:].tolist()]
    finally:
        model.generation_config = own
    return out
