"""One decode step of a Llama-family model (Llama, Mistral, Qwen2, Qwen3) written over the model's own
weights, for sftrl's decode loop (:mod:`.decode`).

Why: at rollout batch sizes on a CPU, most of a small model's decode step is per-operation overhead,
not arithmetic. transformers' forward runs about fifty small operations per layer per token (mask
construction, rotary embedding, separate q/k/v and gate/up projections, the residual adds); this step
runs the same function in about fifteen:
- q, k and v come from one matrix product, and gate and up from another (weights concatenated once per
  generation, while training has them fixed);
- the rotary tables are computed once per generation, q and k rotate together, and the attention
  scale rides in q's table;
- the residual adds ride in the output projections' matrix products (`addmm`);
- the attention mask is an additive bias built once per generation;
- RMSNorm is PyTorch's fused `rms_norm` (float32) or the model's own module (other dtypes).
The function is transformers' own to float rounding (tests/test_fast_decode.py compares the logits of
every step with the model's forward, for each family). `supports` is False for anything it does not
know to be exactly this architecture (LoRA or other wrapped layers, hooks, sharded weights, sliding
windows, NTK-dynamic rotary, other families): the loop then calls the model's forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FAMILIES = ("llama", "mistral", "qwen2", "qwen3")  # config.model_type of the architectures this step implements
# rotary types whose tables depend on the position alone (not "dynamic" or "longrope", which change with the length)
ROPE_TYPES = ("default", "linear", "llama3", "yarn")
FUSE_LIMIT_BYTES = 1 << 30  # concatenated q/k/v and gate/up weights above this size are not copied (GPU-sized models)


@dataclass
class _Layer:
    norm_1: nn.Module  # input_layernorm
    qkv: torch.Tensor | None  # (Q + 2K, E) q, k and v weights, concatenated (or None: separate projections)
    qkv_bias: torch.Tensor | None
    attention: nn.Module  # the layer's self_attn (its projections when not fused, q_norm / k_norm)
    norm_2: nn.Module  # post_attention_layernorm
    gate_up: torch.Tensor | None  # (2I, E) gate and up weights, concatenated (or None)
    gate_up_bias: torch.Tensor | None
    mlp: nn.Module


def _plain(model: nn.Module) -> bool:
    """Whether the layers this decoder computes with are exactly torch's Linear and Embedding (not LoRA's or
    a quantised layer, whose weight alone is not the layer's function), with no hooks anywhere
    (accelerate's offload, FSDP) and no sharded (DTensor) parameters."""
    inner = model.model
    used = [model.lm_head]
    for layer in inner.layers:
        a, m = layer.self_attn, layer.mlp
        used += [a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj]
    if any(type(module) is not nn.Linear for module in used) or type(inner.embed_tokens) is not nn.Embedding:
        return False
    if any(module._forward_hooks or module._forward_pre_hooks for module in model.modules()):
        return False
    return all(type(p.data) is torch.Tensor for p in model.parameters())


def _norm(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm of x: x · rsqrt(mean(x²) + eps) · weight, fused in float32."""
    if x.dtype == torch.float32 and module.weight.dtype == torch.float32:
        return F.rms_norm(x, module.weight.shape, module.weight, module.variance_epsilon)
    return module(x)


def _rms_norms(model: nn.Module) -> bool:
    """Whether every norm is the Llama-style RMSNorm `_norm` reproduces (weight · normalised x, no 1 + w)."""
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    return bool(norms) and all(type(m).__name__ in ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
                               and hasattr(m, "variance_epsilon") for m in norms)


class LlamaDecoder:
    """Decodes one batch of rows token by token at the model's current weights, from a prefill's cache.

    It keeps its own cache: per layer, keys and values (b, K, capacity, D) allocated once; each step
    writes one column of them."""

    def __init__(self, model: nn.Module, prefill, repeat: int, attention: torch.Tensor):
        """prefill: the prompts' cache (layers of keys and values (N, K, P, D)); each prompt's rows are its
        `repeat` copies; attention: (N·repeat, capacity) 1 on real tokens (prompt and every step to come)."""
        inner, config = model.model, model.config
        first = inner.layers[0].self_attn
        self.heads, self.kv_heads, self.head_dim = config.num_attention_heads, config.num_key_value_heads, first.head_dim
        self.embed, self.final_norm, self.head = inner.embed_tokens, inner.norm, model.lm_head
        fuse = sum(p.numel() * p.element_size() for layer in inner.layers
                   for p in (*layer.self_attn.parameters(), *layer.mlp.parameters())) <= FUSE_LIMIT_BYTES
        self.layers = []
        for layer in inner.layers:
            a, mlp = layer.self_attn, layer.mlp
            projections, gate_up = (a.q_proj, a.k_proj, a.v_proj), (mlp.gate_proj, mlp.up_proj)
            self.layers.append(_Layer(
                norm_1=layer.input_layernorm,
                qkv=torch.cat([p.weight for p in projections]) if fuse else None,
                qkv_bias=torch.cat([p.bias for p in projections]) if fuse and a.q_proj.bias is not None else None,
                attention=a,
                norm_2=layer.post_attention_layernorm,
                gate_up=torch.cat([p.weight for p in gate_up]) if fuse else None,
                gate_up_bias=torch.cat([p.bias for p in gate_up]) if fuse and mlp.gate_proj.bias is not None else None,
                mlp=mlp,
            ))
        self.qk_norm = hasattr(first, "q_norm")  # Qwen3 normalises each head's q and k before rotating them
        weights = self.embed.weight
        # float32 tables (the rotary module computes in float32, then casts to the dtype of its argument),
        # scaled, then cast once to the model's dtype
        # positions count real tokens only, so every one is below the capacity
        capacity = attention.shape[1]
        cos, sin = inner.rotary_emb(weights.new_zeros(1, dtype=torch.float32),
                                    torch.arange(capacity, device=weights.device)[None])  # (1, C, D)
        half = self.head_dim // 2
        sign = torch.cat([-cos.new_ones(half), cos.new_ones(half)])  # rotate_half(x) = flip(x's halves) · sign
        # q's rows of the tables carry the attention scale, so that q·kᵀ comes out scaled
        scale = cos.new_tensor([first.scaling] * self.heads + [1.0] * self.kv_heads)[:, None]  # (H + K, 1)
        self.cos = (cos[0][:, None] * scale).to(weights.dtype)  # (C, H + K, D)
        self.sin = ((sin[0] * sign)[:, None] * scale).to(weights.dtype)
        self.bias = weights.new_zeros(attention.shape).masked_fill(attention == 0, float("-inf"))[:, None, None]  # (B, 1, 1, C)
        self.keys, self.values = [], []
        for layer in prefill.layers:
            n, k, p, d = layer.keys.shape
            keys = layer.keys.new_empty((n * repeat, k, capacity, d))  # (B, K, C, D)
            values = layer.values.new_empty((n * repeat, k, capacity, d))  # (B, K, C, D)
            keys[:, :, :p] = layer.keys.repeat_interleave(repeat, dim=0)
            values[:, :, :p] = layer.values.repeat_interleave(repeat, dim=0)
            self.keys.append(keys)
            self.values.append(values)
        self.length = prefill.layers[0].keys.shape[2]

    def keep(self, rows: torch.Tensor) -> None:
        """Drop every row but `rows` (b,) from the batch (rows that finished)."""
        self.keys = [k[rows] for k in self.keys]
        self.values = [v[rows] for v in self.values]
        self.bias = self.bias[rows]

    @torch.no_grad()
    def __call__(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Logits (b, V) of the token after `token` (b,), at positions `position` (b,)."""
        b = token.shape[0]
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        cos, sin = self.cos[position], self.sin[position]  # (b, H + K, D)
        column, end = self.length, self.length + 1
        bias = self.bias[..., :end]  # (b, 1, 1, L)
        x = self.embed(token)  # (b, E)
        for layer, keys, values in zip(self.layers, self.keys, self.values):
            a = layer.attention
            y = _norm(layer.norm_1, x)
            if layer.qkv is not None:
                qkv = F.linear(y, layer.qkv, layer.qkv_bias)  # (b, (H + 2K)·D)
            else:
                qkv = torch.cat([a.q_proj(y), a.k_proj(y), a.v_proj(y)], dim=-1)
            qk = qkv[:, :(heads + kv_heads) * dim].view(b, heads + kv_heads, dim)  # (b, H + K, D)
            if self.qk_norm:
                qk = torch.cat([_norm(a.q_norm, qk[:, :heads]), _norm(a.k_norm, qk[:, heads:])], dim=1)
            flipped = qk.view(b, heads + kv_heads, 2, dim // 2).flip(2).view(b, heads + kv_heads, dim)
            qk = torch.addcmul(qk * cos, flipped, sin)  # apply_rotary_pos_emb (and q · scaling)
            keys[:, :, column] = qk[:, heads:]
            values[:, :, column] = qkv[:, (heads + kv_heads) * dim:].view(b, kv_heads, dim)
            q = qk[:, :heads].reshape(b, kv_heads, heads // kv_heads, dim)  # (b, K, H/K, D): the q heads of each kv head
            scores = torch.matmul(q, keys[:, :, :end].transpose(2, 3))  # (b, K, H/K, L)
            scores += bias
            weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            attended = torch.matmul(weights, values[:, :, :end]).view(b, heads * dim)  # (b, H·D)
            x = torch.addmm(x, attended, a.o_proj.weight.t())  # x + o_proj(attended)
            if a.o_proj.bias is not None:
                x = x + a.o_proj.bias
            y = _norm(layer.norm_2, x)
            m = layer.mlp
            if layer.gate_up is not None:
                gate, up = F.linear(y, layer.gate_up, layer.gate_up_bias).chunk(2, dim=-1)
            else:
                gate, up = m.gate_proj(y), m.up_proj(y)
            x = torch.addmm(x, m.act_fn(gate) * up, m.down_proj.weight.t())  # x + down_proj(act(gate) · up)
            if m.down_proj.bias is not None:
                x = x + m.down_proj.bias
        self.length = end
        return self.head(_norm(self.final_norm, x))


def supports(model: nn.Module, length: int) -> bool:
    """Whether `model` is exactly a Llama-family model `LlamaDecoder` implements, for sequences of up to
    `length` tokens (otherwise the decode loop calls the model's forward)."""
    config = getattr(model, "config", None)
    inner = getattr(model, "model", None)
    if config is None or getattr(config, "model_type", None) not in FAMILIES or inner is None:
        return False
    if not all(hasattr(inner, name) for name in ("layers", "embed_tokens", "norm", "rotary_emb")):
        return False
    if not all(hasattr(layer, "self_attn") and hasattr(layer, "mlp") for layer in inner.layers):
        return False
    if not hasattr(model, "lm_head") or not _plain(model) or not _rms_norms(model):
        return False
    rope = (getattr(config, "rope_parameters", None) or {}).get("rope_type", "default")
    if rope not in ROPE_TYPES:
        return False
    if any(kind != "full_attention" for kind in (getattr(config, "layer_types", None) or [])):
        return False
    window = getattr(config, "sliding_window", None)
    if config.model_type == "mistral" and window is not None and length >= window:
        return False
    return True
