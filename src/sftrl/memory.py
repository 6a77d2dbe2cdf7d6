"""An estimate of a run's GPU memory per process, before anything is loaded (`sftrl train --dry-run`).

Terms, in bytes per GPU, for a Llama/Qwen-style decoder (P parameters, L layers, hidden H, MLP width
I, vocabulary V, KV width K = kv_heads·head_dim), N GPUs, micro-batch b rows of S = prompt + completion
tokens, chunk c = logprob_chunk_size tokens. sftrl keeps weights in float32 (dtype auto; compute in
bf16 under autocast), so:

- weights 4P; gradients 4·P_train; AdamW moments 8·P_train (P_train = P, or the LoRA adapters' count);
  a reference copy 4P when the method needs one (beta > 0, SASR's initial reference) and LoRA is off
  (a LoRA run's reference is its base with the adapters off: nothing more). ZeRO-3 / FSDP full
  sharding divides these four terms by N, and adds one gathered layer's weights (4P/L) back.
- activations kept for backward, per token and layer: 2·(6H + 4I) bytes of bf16 matmul outputs
  (q, k, v, attention output, o_proj input, residual; gate, up, act(gate), gate·up) + 4·2H of float32
  residual and norm inputs, times b·S·L. With gradient checkpointing only each layer's float32 input
  stays (4H per token and layer), plus one layer's activations while it is recomputed. Flash / SDPA
  attention keeps no S×S scores.
- logits: about 14 bytes per (token, vocabulary entry) alive at once (bf16 logits, their float32
  copy, softmax for the entropy, and the gradient of the float32 copy), for b·S tokens, or c tokens
  with chunked log-probabilities.
- rollouts (torch / generate backends, a separate phase of the step, before the gradients exist): the
  KV cache of generation_batch_size sequences of S tokens, 2·L·K·2 bytes per token (bf16).

Peak = sharded state + max(training phase: activations + logits, generation phase: KV cache); it
leaves out the CUDA context and allocator fragmentation (budget 2 to 5 GB per GPU) and vLLM, which
takes its own vllm_gpu_memory_utilization share of the GPU.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .config import Config
from .errors import ConfigError
from .formatting import number

GiB = 2 ** 30


@dataclass(frozen=True)
class Architecture:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    qkv_bias: bool = False

    @property
    def kv_width(self) -> int:
        return self.kv_heads * (self.hidden // self.heads)


# The recipes' models (their config.json on the hub), so a dry run needs no download.
QWEN25_7B = Architecture(3584, 28, 18944, 28, 4, 152064, False, True)
KNOWN = {"Qwen/Qwen2.5-Math-7B": QWEN25_7B, "Qwen/Qwen2.5-7B-Instruct": QWEN25_7B, "Qwen/Qwen2.5-7B": QWEN25_7B,
         "Qwen/Qwen2.5-1.5B": Architecture(1536, 28, 8960, 12, 2, 151936, True, True)}


def from_config(values: dict) -> Architecture:
    """An Architecture from a config.json mapping (Llama, Qwen2 and alike)."""
    try:
        return Architecture(values["hidden_size"], values["num_hidden_layers"], values["intermediate_size"],
                            values["num_attention_heads"], values.get("num_key_value_heads") or
                            values["num_attention_heads"], values["vocab_size"],
                            bool(values.get("tie_word_embeddings", False)),
                            values.get("model_type") == "qwen2" or bool(values.get("attention_bias", False)))
    except KeyError as exc:
        raise ConfigError(f"model: its config has no {exc.args[0]}, so its memory cannot be estimated") from exc


def architecture(model: str) -> Architecture:
    """The model's architecture: a known hub id, a local directory's config.json, or the hub cache's."""
    if model in KNOWN:
        return KNOWN[model]
    from .models import resolve_model_path

    path = Path(resolve_model_path(model)).expanduser()
    if (path / "config.json").is_file():
        return from_config(json.loads((path / "config.json").read_text()))
    try:
        from transformers import AutoConfig

        return from_config(AutoConfig.from_pretrained(model, local_files_only=True).to_dict())
    except OSError as exc:
        raise ConfigError(f"model: {model}'s config.json is neither local nor in the hub cache; download it "
                          f"(hf download {model} config.json) to estimate its memory") from exc


def parameter_count(a: Architecture) -> int:
    """Embedding (+ untied LM head) + per layer: q, k, v, o projections (+ q/k/v biases), gate/up/down, two norms; final norm."""
    attention = a.hidden * a.hidden * 2 + 2 * a.hidden * a.kv_width + (a.hidden + 2 * a.kv_width if a.qkv_bias else 0)
    layer = attention + 3 * a.hidden * a.intermediate + 2 * a.hidden
    return a.vocab * a.hidden * (1 if a.tied else 2) + a.layers * layer + a.hidden


def lora_parameter_count(a: Architecture, r: int, targets: list[str] | None) -> int:
    """r·(in + out) per adapted projection and layer; targets None = PEFT's default for Llama/Qwen (q_proj, v_proj)."""
    shapes = {"q_proj": (a.hidden, a.hidden), "k_proj": (a.hidden, a.kv_width), "v_proj": (a.hidden, a.kv_width),
              "o_proj": (a.hidden, a.hidden), "gate_proj": (a.hidden, a.intermediate),
              "up_proj": (a.hidden, a.intermediate), "down_proj": (a.intermediate, a.hidden)}
    names = ["q_proj", "v_proj"] if targets is None else list(shapes) if targets == ["all-linear"] else targets
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise ConfigError(f"lora_target_modules: cannot estimate {unknown}; known: {', '.join(shapes)}, all-linear")
    return a.layers * sum(r * (shapes[n][0] + shapes[n][1]) for n in names)


def estimate(config: Config, a: Architecture, gpus: int, sharded: bool, needs_reference: bool,
             needs_rollouts: bool = True) -> dict[str, float]:
    """Bytes per GPU of each term (module docstring) and their peak."""
    p = parameter_count(a)
    trainable = lora_parameter_count(a, config.lora_r, config.lora_target_modules) if config.use_peft else p
    shard = gpus if sharded else 1
    tokens = config.micro_batch_size * ((config.max_prompt_length or 0) + config.max_completion_length)
    per_token_layer = 2 * (6 * a.hidden + 4 * a.intermediate) + 4 * 2 * a.hidden
    if config.gradient_checkpointing:
        activations = tokens * (a.layers * 4 * a.hidden + per_token_layer)
    else:
        activations = tokens * a.layers * per_token_layer
    logit_tokens = min(tokens, config.logprob_chunk_size) if config.logprob_chunk_size else tokens
    terms = {
        "weights": 4 * p / shard,
        "gradients": 4 * trainable / shard,
        "optimizer": 8 * trainable / shard,
        "reference": 4 * p / shard if needs_reference and not config.use_peft else 0.0,
        "gathered layer": 4 * (p / a.layers) if sharded else 0.0,
        "activations": float(activations),
        "logits": 14.0 * logit_tokens * a.vocab,
        "rollout KV cache": 0.0 if config.rollout_backend == "vllm" or not needs_rollouts else float(
            config.generation_batch_size * ((config.max_prompt_length or 0) + config.max_completion_length)
            * 2 * a.layers * a.kv_width * 2),
    }
    state = sum(terms[k] for k in ("weights", "optimizer", "reference", "gathered layer"))
    training = state + terms["gradients"] + terms["activations"] + terms["logits"]
    generation = state + terms["rollout KV cache"]
    return {**terms, "parameters": float(p), "trainable": float(trainable), "peak": max(training, generation)}


def report(config: Config, needs_reference: bool, needs_rollouts: bool = True, gpus: int = 8,
           gpu_gib: float = 80.0) -> str:
    """The dry run's table: each term per GPU, without and with ZeRO-3/FSDP sharding over `gpus` GPUs."""
    a = architecture(config.model)
    plain = estimate(config, a, gpus, False, needs_reference, needs_rollouts)
    sharded = estimate(config, a, gpus, True, needs_reference, needs_rollouts)
    lines = [f"memory estimate per GPU for {config.model} ({number(plain['parameters'] / 1e9, '.2f')}B parameters, "
             f"{number(plain['trainable'] / 1e9, '.3g')}B trained{', LoRA r=' + str(config.lora_r) if config.use_peft else ''}), "
             f"micro_batch_size={config.micro_batch_size} x {(config.max_prompt_length or 0) + config.max_completion_length} "
             f"tokens, gradient_checkpointing={str(config.gradient_checkpointing).lower()}, "
             f"logprob_chunk_size={config.logprob_chunk_size}",
             f"{'term':<18}{'DDP (GiB)':>12}{f'ZeRO-3/FSDP x{gpus} (GiB)':>26}"]
    for key in ("weights", "gradients", "optimizer", "reference", "gathered layer", "activations", "logits",
                "rollout KV cache", "peak"):
        lines.append(f"{key:<18}{number(plain[key] / GiB, '>12.1f')}{number(sharded[key] / GiB, '>26.1f')}")
    verdict = lambda peak: "fits" if peak / GiB <= gpu_gib * 0.9 else "does NOT fit"  # noqa: E731
    lines.append(f"on {number(gpu_gib, '.0f')} GiB GPUs (10% kept for the CUDA context and fragmentation): DDP "
                 f"{verdict(plain['peak'])}, ZeRO-3/FSDP over {gpus} {verdict(sharded['peak'])}")
    if config.logprob_chunk_size:  # FSDP refuses chunked log-probs (validate.check_processes)
        fsdp = estimate(replace(config, logprob_chunk_size=0), a, gpus, True, needs_reference, needs_rollouts)
        lines.append(f"FSDP needs logprob_chunk_size=0 (the sharded column is ZeRO-3's): logits "
                     f"{number(fsdp['logits'] / GiB, '.1f')} GiB, peak {number(fsdp['peak'] / GiB, '.1f')} GiB, "
                     f"{verdict(fsdp['peak'])}")
    return "\n".join(lines)
