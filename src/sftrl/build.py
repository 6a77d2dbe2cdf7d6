"""Building a run's parts from its config: the accelerator; the rows, reward functions and tokenizer; the
policy (activation checkpointing, LoRA) and its frozen reference, the optimizers and the rollout engine;
and, once they are built, the base model's log-probs that kl_from_base measures the policy against
(RL's Razor).

The parts are made in one fixed order here, because the run's random draws depend on it: a resumed
or repeated run must build them exactly as the first one did.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from .config import Config
from .data import Example
from .errors import ConfigError
from .evaluate import BaseLogprobs, base_logprobs
from .methods import Method
from .models import (AdapterFreeReference, add_lora, frozen_copy, load_frozen, load_model, load_tokenizer, resolve_model_path,
                     set_activation_checkpointing)
from .parallel import Collective, Parallel
from .rewards.scorer import Scorer
from .rollout import make_engine
from .rows import Rows, kept_rows, load_rows
from .validate import check_precision


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_accelerator(config: Config) -> Accelerator:
    """The run's accelerator: mixed precision ("auto": bf16 on a GPU that has it) and its trackers. The
    precision is checked first: accelerate keeps a refused setting for the rest of the process."""
    check_precision(config)
    mixed = config.mixed_precision
    if mixed == "auto":
        mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
    trackers = [name for name in config.report_to if name != "none"]
    return Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available(), log_with=trackers or None,
                       project_dir=str(config.run_dir / "trackers") if trackers else None)


@dataclass
class Data:
    """The run's rows and what reads them, made before any model is loaded."""

    rows: Rows  # the training rows (the demonstration-length policy applied) and their samplers
    eval_examples: list[Example]
    scorer: Scorer  # the reward functions
    tokenizer: Any
    model_path: str  # the policy's local directory (models.resolve_model_path)
    demo_report: dict[str, Any]  # what the demonstration-length policy kept and dropped; {} when none applies


def make_data(config: Config, method: Method, collective: Collective, print: Callable[[str], None]) -> Data:
    """Data first, so that a bad row fails before any model is loaded; then the reward functions, the
    tokenizer, and the demonstration-length policy (rows.kept_rows) for a method that trains on them."""
    examples, eval_examples = load_rows(config, method.needs_demonstrations)
    scorer = Scorer(config)
    model_path = resolve_model_path(config.model)
    tokenizer = load_tokenizer(config.tokenizer or model_path, config.trust_remote_code)
    demo_report: dict[str, Any] = {}
    if method.needs_demonstrations:
        examples, demo_report = kept_rows(examples, tokenizer, config, print)
    return Data(rows=Rows(examples, tokenizer, config, collective), eval_examples=eval_examples, scorer=scorer,
                tokenizer=tokenizer, model_path=model_path, demo_report=demo_report)


def frozen(model, device: torch.device) -> torch.nn.Module:
    """A frozen copy of `model` on `device`: the reference, its snapshots during training, the FSDP replica."""
    copy: torch.nn.Module = frozen_copy(model)
    return copy.to(device)


class Teachers:
    """Frozen models (teachers: OPSD's, OPD's) loaded as the policy is (models.load_frozen: a local directory
    or hub id, the run's dtype; their tokenizer must have the policy's vocabulary), on `device`, each loaded
    once per run."""

    def __init__(self, config: Config, tokenizer, device: torch.device):
        self.config, self.tokenizer, self.device = config, tokenizer, device
        self.loaded: dict[str, Any] = {}

    def get(self, name: str, what: str) -> Any:
        """The model `name`; `what` names the config field in errors."""
        if name not in self.loaded:
            cfg = self.config
            model: Any = load_frozen(name, what, self.tokenizer, cfg.dtype, cfg.trust_remote_code)
            self.loaded[name] = model.to(self.device)
        return self.loaded[name]


def adamw(parameters: list, config: Config, weight_decay: float) -> torch.optim.AdamW:
    return torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=weight_decay,
                             betas=(config.adam_beta1, config.adam_beta2))


def rollout_engine(config: Config, model_path: str):
    """The engine that samples rollouts (`rollout_backend`); vLLM starts here, once per run."""
    max_model_len = config.max_prompt_length + config.max_completion_length if config.max_prompt_length else None
    try:
        return make_engine(config.rollout_backend, model_path, gpu_memory_utilization=config.vllm_gpu_memory_utilization,
                           sleep_mode=config.vllm_sleep_mode, max_model_len=max_model_len,
                           dtype=config.dtype, seed=config.seed)
    except ImportError as error:
        raise ConfigError(str(error)) from error


@dataclass
class Parts:
    """The policy and what trains and samples it."""

    model: Any  # the policy as accelerate prepared it (DDP, FSDP or DeepSpeed wrapped)
    optimizer: Any
    trainable: list[torch.nn.Parameter]  # LoRA: the adapters only
    reference: Any  # a frozen copy, the LoRA policy with its adapters off, or None
    replica: Any  # FSDP and ZeRO-3: a whole local copy of the sharded policy; else None
    train_module: Any  # what training forwards call (Parallel.forward_module)
    rollout_engine: Any
    extra_optimizer: torch.optim.AdamW | None  # Method.extra_optimizer's (ReLIFT)
    extra_max_grad_norm: float


def make_parts(config: Config, method: Method, model_path: str, accelerator: Accelerator,
               parallel: Parallel) -> Parts:
    model = load_model(model_path, config.dtype, config.trust_remote_code)
    if config.gradient_checkpointing:
        set_activation_checkpointing(model, True)
    if config.use_peft:
        model = add_lora(model, config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    wants_reference = method.needs_reference(config)
    # A LoRA run's reference is its own base (adapters off, set up below); otherwise a frozen copy.
    reference: Any = frozen(model, accelerator.device) if wants_reference and not config.use_peft else None
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(trainable, config, config.weight_decay)
    # Under FSDP and ZeRO-3 each process holds a shard: generation, evaluation and saving use this
    # whole local copy, refreshed after each update (Trainer.whole_policy).
    replica = frozen(model, accelerator.device) if parallel.needs_replica else None
    parallel.configure(config)
    model, optimizer = accelerator.prepare(model, optimizer)
    policy = accelerator.unwrap_model(model)
    if wants_reference and config.use_peft:
        reference = AdapterFreeReference(policy)
    engine = rollout_engine(config, model_path) if method.needs_rollouts else None
    spec = method.extra_optimizer(config)
    return Parts(model=model, optimizer=optimizer, trainable=trainable, reference=reference, replica=replica,
                 train_module=parallel.forward_module(model, policy), rollout_engine=engine,
                 extra_optimizer=None if spec is None else adamw(trainable, config, spec.weight_decay),
                 extra_max_grad_norm=0.0 if spec is None else spec.max_grad_norm)


def kl_base(config: Config, whole_policy: Callable[[], Any], tokenizer, eval_examples: list[Example],
            accelerator: Accelerator) -> BaseLogprobs | None:
    """What kl_from_base compares the policy with at each evaluation: the base model's (the policy before
    any update) top-K log-probs on the first kl_from_base_examples evaluation rows' demonstrations, computed
    once (evaluate.base_logprobs); None when kl_from_base_examples is 0, there are no evaluation rows, or
    none has a demonstration. `whole_policy` is called only then (collective under FSDP and ZeRO-3)."""
    if not (config.kl_from_base_examples and eval_examples):
        return None
    with accelerator.autocast():
        return base_logprobs(whole_policy(), tokenizer, eval_examples, config.kl_from_base_examples,
                             config.max_completion_length, config.chat_template_kwargs)
