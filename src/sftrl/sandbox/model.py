"""The sandbox's tiny causal LM: a standard ``LlamaForCausalLM``, small enough to train on a CPU.

A stock architecture means every code path a real run takes (``from_pretrained``, ``generate``,
KV caching, saving, vLLM-compatible configs) is the one the sandbox exercises. Llama rather than
Qwen2 because transformers ties a ``qwen2`` model folder to its byte-level Qwen2 tokenizer, which
would replace the sandbox's character-level one on reload.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

# Size: about 1.6M parameters. Wide enough to learn multi-digit carries, small enough that a
# training step on a batch of short sequences takes a fraction of a second on two CPU cores.
HIDDEN_SIZE = 192
NUM_LAYERS = 4
NUM_ATTENTION_HEADS = 6  # head dim 32
INTERMEDIATE_SIZE = 512  # SwiGLU MLP width
# Sandbox sequences (chat markers + prompt + solution) stay well under 128 tokens; RoPE
# extrapolates, so this bounds nothing but is what the config advertises.
MAX_POSITION_EMBEDDINGS = 256


def build_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0, hidden_size: int = HIDDEN_SIZE,
                num_layers: int = NUM_LAYERS, num_attention_heads: int = NUM_ATTENTION_HEADS,
                intermediate_size: int = INTERMEDIATE_SIZE) -> PreTrainedModel:
    """A freshly initialised float32 Llama sized for the sandbox (or as asked: benchmarks time larger
    ones), its vocab matching ``tokenizer``.

    ``seed`` fixes the initial weights. Special-token ids are written into both the model config and
    its generation config, so ``generate`` stops at eos and pads with the tokenizer's pad token.
    """
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_attention_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=MAX_POSITION_EMBEDDINGS,
        tie_word_embeddings=True,  # ~20k fewer parameters, and the usual choice for tiny LMs
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        dtype="float32",
    )
    # Initialise under a local generator state so building a model never perturbs the caller's RNG.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.to(torch.float32)
    generation = model.generation_config
    generation.bos_token_id = tokenizer.bos_token_id
    generation.eos_token_id = tokenizer.eos_token_id
    generation.pad_token_id = tokenizer.pad_token_id
    return model
