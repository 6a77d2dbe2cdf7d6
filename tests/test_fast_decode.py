"""sftrl's decode step for Llama-family models (sftrl.rollout.llama) computes the model's own forward:
logits equal to transformers' at every step, for each family it accepts, and it refuses what it does not
implement, leaving those models to their forward."""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, DynamicCache, GPT2Config, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config)

from sftrl.rollout import llama
from sftrl.rollout.common import left_pad
from sftrl.models import cache_keyword
from sftrl.rollout.decode import ForwardDecoder

SIZES = dict(vocab_size=102, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0, eos_token_id=1)
FAMILIES = {
    "llama": lambda: LlamaConfig(**SIZES),
    "llama-mha-bias": lambda: LlamaConfig(**SIZES | dict(num_key_value_heads=4), attention_bias=True, mlp_bias=True),
    "llama3-rope": lambda: LlamaConfig(**SIZES, rope_parameters=dict(
        rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
        original_max_position_embeddings=32)),
    "mistral": lambda: MistralConfig(**SIZES),
    "qwen2": lambda: Qwen2Config(**SIZES),  # biases on q, k and v
    "qwen3": lambda: Qwen3Config(**SIZES, head_dim=24),  # q and k norms, head_dim != hidden / heads
}


def build(config):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():  # untrained norms are all ones and biases all zeros: make them matter
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(torch.randn_like(param) * 0.3)
    return model


def decoders(model, prompts, repeat, new_tokens):
    ids, mask = left_pad(prompts, 0, torch.device("cpu"))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    prefill = DynamicCache()
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True, logits_to_keep=1,
                       **{cache_keyword(model): prefill}).logits[:, -1]
    rows = len(prompts) * repeat
    attention = torch.cat([mask.repeat_interleave(repeat, 0), mask.new_ones(rows, new_tokens)], dim=1)
    ours = llama.LlamaDecoder(model, prefill, repeat, attention)
    theirs = ForwardDecoder(model, prefill, repeat, attention)
    return ours, theirs, logits.repeat_interleave(repeat, 0), positions[:, -1].repeat_interleave(repeat, 0) + 1


@pytest.mark.float_sensitive
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "separate"])
@pytest.mark.parametrize("family", FAMILIES)
def test_each_step_is_the_models_forward(family, fused, monkeypatch):
    if not fused:  # a model too large to copy its projections runs them one by one
        monkeypatch.setattr(llama, "FUSE_LIMIT_BYTES", 0)
    model = build(FAMILIES[family]())
    assert llama.supports(model, 64)
    prompts = [[5, 9, 14, 3, 22, 7], [8, 8, 30], [40, 2, 17, 17, 60, 61, 62, 63, 11]]  # left padding differs per row
    ours, theirs, logits, position = decoders(model, prompts, repeat=3, new_tokens=12)
    assert (ours.layers[0].qkv is not None) == fused
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for step in range(11):
            token = torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)
            if step == 5:  # rows finished: both keep the same rows, in a new order
                keep = torch.tensor([7, 0, 2, 5, 8])
                ours.keep(keep)
                theirs.keep(keep)
                token, position = token[keep], position[keep]
            logits, mine = theirs(token, position), ours(token, position)
            torch.testing.assert_close(mine, logits, rtol=1e-5, atol=1e-5)
            position = position + 1
    assert logits.shape == (5, 102)


@pytest.mark.float_sensitive
def test_bfloat16_steps_are_the_models_forward_to_bfloat16_rounding():
    model = build(FAMILIES["qwen3"]()).to(torch.bfloat16)  # norms through the model's own modules in bfloat16
    ours, theirs, logits, position = decoders(model, [[5, 9, 14, 3], [8, 30]], repeat=2, new_tokens=6)
    with torch.no_grad():
        for _ in range(5):
            token = logits.float().argmax(-1)
            logits, mine = theirs(token, position), ours(token, position)
            assert mine.dtype == torch.bfloat16
            torch.testing.assert_close(mine.float(), logits.float(), rtol=0.05, atol=0.05)
            position = position + 1


def test_models_it_does_not_implement_decode_through_their_forward():
    plain = build(FAMILIES["llama"]())
    assert llama.supports(plain, 64)
    lora = get_peft_model(build(FAMILIES["llama"]()), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    hooked = build(FAMILIES["llama"]())
    hooked.model.layers[1].mlp.register_forward_hook(lambda module, args, out: out * 2)
    refused = {
        "LoRA": lora,
        "LoRA's base model": lora.get_base_model(),  # its q_proj and v_proj are LoRA layers
        "a forward hook": hooked,
        "sliding windows": build(Qwen2Config(**SIZES, use_sliding_window=True, sliding_window=16, max_window_layers=1)),
        "dynamic rotary": build(LlamaConfig(**SIZES, rope_parameters=dict(rope_type="dynamic", rope_theta=10000.0,
                                                                          factor=2.0))),
        "another family": AutoModelForCausalLM.from_config(GPT2Config(vocab_size=102, n_embd=32, n_layer=1, n_head=2)),
    }
    for reason, model in refused.items():
        assert not llama.supports(model, 64), reason
    assert not llama.supports(build(MistralConfig(**SIZES | dict(sliding_window=32))), 64)  # the window would bite
    assert llama.supports(build(MistralConfig(**SIZES | dict(sliding_window=128))), 64)
