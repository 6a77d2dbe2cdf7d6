"""The one validation every entry point uses (train, eval, compare, report, analyze, sandbox prepare).

Each check raises a one-line :class:`~sftrl.errors.SftrlError` naming the field, option, file or row,
before anything is written, so bad input never changes or loses a file that was there before. Here,
not in config, live the checks that need the methods (names, presets), so config never imports them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import registry
from .config import Config, ConfigError, build_config, parse_overrides, read_recipe
from .methods import METHODS


def apply_preset(values: dict[str, Any]) -> dict[str, Any]:
    """Fill in the chosen method's PRESET (e.g. LUFFY's released-code settings) beneath what the
    recipe and overrides set: a field given explicitly always wins."""
    method = values.get("method", Config.method)
    preset = METHODS[method].preset if isinstance(method, str) and method in METHODS else {}
    return {**preset, **values}


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict[str, Any] | None = None) -> Config:
    """Config from defaults, then the method's preset, then the recipe's YAML mapping, then overrides;
    every field checked, then the checks that need the methods."""
    values: dict[str, Any] = dict(read_recipe(recipe)) if recipe is not None else {}
    if isinstance(overrides, list):
        overrides = parse_overrides(overrides)
    values.update(overrides or {})
    config = build_config(apply_preset(values))
    check_config(config)
    return config


def check_config(c: Config) -> None:
    """What a field cannot say on its own: the method exists, GRPO groups have two members, plugins import."""
    if c.method not in METHODS:
        raise ConfigError(f"method: unknown {c.method!r}; choose one of {', '.join(METHODS)}")
    if METHODS[c.method].needs_rollouts and c.num_generations < 2:
        raise ConfigError(f"num_generations: GRPO needs at least 2 rollouts per prompt, got {c.num_generations}")
    if c.use_peft and METHODS[c.method].snapshots_reference(c):
        # The reference of a LoRA run is the base with its adapters off; a snapshot of the policy taken
        # during training is not, and a second adapter copy is not implemented.
        raise ConfigError(f"use_peft: {c.method} with these settings makes the policy of mid-training its KL "
                          "reference, which a LoRA run does not support (its reference is the base model); use "
                          "sasr_reference=initial / sft_kl_coef=0, or train without use_peft")
    if c.use_peft and c.rollout_backend == "vllm":
        raise ConfigError("use_peft: rollout_backend=vllm does not load LoRA adapters yet; use rollout_backend=torch "
                          "or generate")
    try:
        registry.load_plugins(c.plugins)
    except registry.RegistryError as exc:
        raise ConfigError(f"plugins: {exc}") from exc


def check_precision(c: Config, cuda: bool | None = None, cpu_bf16: bool | None = None) -> None:
    """mixed_precision=bf16 on a CPU run (no CUDA) needs a CPU with bfloat16 instructions; without them
    torch emulates bf16, many times slower than float32 (sftrl.hardware). Not part of check_config: a
    GPU recipe's config is loaded and its memory estimated (`sftrl train --dry-run`) on any machine.
    `auto` is float32 on a CPU: bf16 there is opt-in until its parity with float32 is shown."""
    if c.mixed_precision != "bf16":
        return
    if cuda is None:
        import torch

        cuda = torch.cuda.is_available()
    if cuda:
        return
    from . import hardware

    if cpu_bf16 is None:
        cpu_bf16 = hardware.cpu_bf16_supported()
    if not cpu_bf16:
        raise ConfigError(f"mixed_precision: bf16 on a CPU run needs bfloat16 instructions (AVX512-BF16, AMX or "
                          f"Arm BF16), which this CPU ({hardware.cpu_name()}) lacks, so torch would emulate them, "
                          "slower than float32; use mixed_precision=no (auto is no on a CPU)")


def check_processes(c: Config, processes: int, backend: str = "ddp", environ: Mapping[str, str] | None = None,
                    deepspeed_config: Mapping[str, Any] | None = None) -> None:
    """The step's prompts (and an SFT step's demonstrations) split evenly over data-parallel processes,
    the backend accelerate chose is the one asked for, a DeepSpeed config leaves sftrl the
    accumulation, the learning rate and the skip rules (see sftrl.parallel), and the precision asked
    for runs on this machine (check_precision). The trainer calls it once it knows the processes."""
    check_precision(c)
    for name, value, what in (("batch_size", c.batch_size, "prompts"), ("sft_batch_size", c.sft_batch, "demonstrations")):
        if value % processes:
            raise ConfigError(f"{name}: {value} {what} do not split evenly over {processes} processes; "
                              f"use a multiple of {processes}")
    environ = os.environ if environ is None else environ
    if environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" and backend != "fsdp":
        raise ConfigError(f"ACCELERATE_USE_FSDP: FSDP was asked for but accelerate runs {backend} (accelerate "
                          "shards only on GPUs and other accelerators, not on CPU); use the ddp config there")
    if backend == "fsdp" and c.logprob_chunk_size > 0:
        # The chunked path runs the decoder and then the LM head a chunk at a time, outside the root
        # module's forward, where FSDP2 has not gathered their shards (it raises there).
        raise ConfigError(f"logprob_chunk_size: {c.logprob_chunk_size} is not supported under FSDP (chunked "
                          "log-probabilities call the decoder and LM head outside FSDP's root module); set "
                          "logprob_chunk_size=0")
    if backend != "deepspeed" or deepspeed_config is None:
        return
    ds = deepspeed_config
    if ds.get("gradient_accumulation_steps", "auto") not in ("auto", 1):
        raise ConfigError(f"deepspeed gradient_accumulation_steps: sftrl accumulates each step's micro-batches itself; "
                          f"set it to 1 or auto, got {ds['gradient_accumulation_steps']}")
    clipping = ds.get("gradient_clipping", "auto")
    if clipping != "auto" and float(clipping) != c.max_grad_norm:
        raise ConfigError(f"max_grad_norm: {c.max_grad_norm}, but the DeepSpeed config's gradient_clipping is {clipping} "
                          "and DeepSpeed clips; make them equal or set gradient_clipping to auto")
    for key in ("optimizer", "scheduler"):
        if key in ds:
            raise ConfigError(f"deepspeed {key}: remove it from the DeepSpeed config; sftrl builds AdamW and sets "
                              "each step's learning rate")
    if c.skip_update_grad_norm > 0:
        raise ConfigError(f"skip_update_grad_norm: {c.skip_update_grad_norm} cannot apply under DeepSpeed (its engine "
                          "clips and steps in one call); set it to 0")
    if METHODS[c.method].extra_optimizer(c) is not None:
        raise ConfigError(f"method: {c.method} steps a second optimizer, which DeepSpeed's engine does not allow; "
                          "use DDP or FSDP")
    if c.save_every > 0:
        raise ConfigError(f"save_every: {c.save_every}, but resumable checkpoints are not written under DeepSpeed "
                          "(its optimizer state is partitioned); set save_every=0 (the final model is saved)")


def check_range(option: str, value: float | int | None, low: float | None = None, high: float | None = None,
                *, low_open: bool = False, allow_none: bool = False) -> None:
    """A command-line number in [low, high] (or (low, high] with low_open); the error names the option."""
    if value is None and allow_none:
        return
    below = value is None or (low is not None and (value <= low if low_open else value < low))
    above = value is not None and high is not None and value > high
    if below or above or value != value:  # value != value: NaN
        bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise ConfigError(f"{option}: must be in {bounds}, got {value}")


def check_output_dir(option: str, path: str | Path) -> None:
    """An output directory is a directory (or not there yet), never a file that would be overwritten."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option}: {path} is a file, not a directory")
