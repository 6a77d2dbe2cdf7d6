"""Loading models and tokenizers through the transformers Auto classes (hub ids or local paths)."""

from __future__ import annotations

import copy
import hashlib
import inspect
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import registry
from .errors import ConfigError

log = logging.getLogger(__name__)
# A local tokenizer directory holds at least one of these (saved by save_pretrained).
TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")

ADAPTER_CONFIG = "adapter_config.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str, what: str = "model") -> str:
    """A model name as `transformers` loads it: a registered name ('sandbox' -> the shipped sandbox
    base model's directory), a hub id, or a local directory, checked to hold a model (`what` names the
    field or option in errors)."""
    resolve = registry.model(name)
    if resolve is not None:
        return resolve()
    if _looks_local(name):
        check_model_dir(name, what)
    return name


def check_model_dir(name: str, what: str = "model") -> None:
    """A local model directory exists and holds a model (config.json) or a LoRA adapter
    (adapter_config.json, loaded onto its base model); one line otherwise."""
    path = Path(name).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{what}: model path not found: {name}")
    if not path.is_dir():
        raise ConfigError(f"{what}: {name} is a file, not a model directory (one written by save_pretrained)")
    if not (path / "config.json").is_file() and not is_adapter_dir(path):
        raise ConfigError(f"{what}: {name} is not a model directory: it has no config.json "
                          "(expected a directory written by save_pretrained, or a hub id)")


def is_adapter_dir(path: str | Path) -> bool:
    """A local directory holding a PEFT adapter only (what a use_peft run saves), not a full model."""
    path = Path(path).expanduser()
    return (path / ADAPTER_CONFIG).is_file() and not (path / "config.json").is_file()


def adapter_base(path: str | Path) -> str:
    """The base model an adapter directory was trained on (PEFT's base_model_name_or_path)."""
    config_file = Path(path).expanduser() / ADAPTER_CONFIG
    base = json.loads(config_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise ConfigError(f"{config_file}: names no base_model_name_or_path, so the adapter cannot be loaded")
    return base


# Files whose content decides what a model generates: weights, configs, tokenizer, remote code.
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".py")
NOT_MODEL_FILES = ("trainer_state.pt", "trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth")


def model_fingerprint(path: str) -> str | None:
    """SHA-256 over the names and contents of a model directory's weight, config and tokenizer files
    (what evaluation caches are keyed by, so a model retrained in place is never served old samples).
    A hub id is fingerprinted from its local snapshot when there is one; otherwise None."""
    directory = Path(path).expanduser()
    if not directory.is_dir():
        try:
            from huggingface_hub import snapshot_download

            directory = Path(snapshot_download(path, local_files_only=True))
        except Exception:  # noqa: BLE001: not cached (or not a hub id): nothing to fingerprint
            return None
    digest = hashlib.sha256()
    if is_adapter_dir(directory):  # an adapter's outputs depend on its base model too
        digest.update(f"base:{model_fingerprint(adapter_base(directory))}".encode() + b"\0")
    for file in sorted(directory.iterdir()):
        if file.is_file() and file.suffix in MODEL_FILE_SUFFIXES and file.name not in NOT_MODEL_FILES:
            digest.update(file.name.encode() + b"\0")
            with file.open("rb") as stream:
                for block in iter(lambda: stream.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_failure(name: str, error: BaseException) -> ConfigError | None:
    """One line for a hub id that cannot be fetched (not found, offline, no access), or None when
    `error` is something else. transformers re-raises huggingface_hub's errors as OSError with the
    original as the cause, so the whole chain is looked at, the types first, the wording as a fallback."""
    from huggingface_hub import errors as hub_errors

    chain, seen = [], error
    while seen is not None and len(chain) < 8:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    text = " ".join(str(e) for e in chain)
    kinds = tuple(type(e) for e in chain)

    def has(*types) -> bool:
        return any(issubclass(k, types) for k in kinds)

    where = f"{name}: cannot be loaded from the Hugging Face Hub"
    if has(hub_errors.GatedRepoError) or "gated repo" in text:
        why = ("no access: it is a gated repository; accept its conditions on https://huggingface.co/" + name
               + " and log in with the account that did (hf auth login, or HF_TOKEN)")
    elif has(hub_errors.RepositoryNotFoundError) or "is not a valid model identifier" in text:
        why = ("not found: no such repository (or it is private and no token that can read it is set: "
               "hf auth login, or HF_TOKEN); check the id, or pass a local directory")
    elif has(hub_errors.OfflineModeIsEnabled) or (_hub_offline() and (
            has(hub_errors.LocalEntryNotFoundError) or "couldn't connect" in text or "offline" in text.lower())):
        why = ("offline (HF_HUB_OFFLINE=1) and it is not in the local cache; fetch it once with network access "
               "(unset HF_HUB_OFFLINE), or pass a local directory")
    elif has(hub_errors.LocalEntryNotFoundError, ConnectionError, TimeoutError) or "couldn't connect" in text:
        why = ("the Hub cannot be reached (no network?) and it is not in the local cache; fetch it once with "
               "network access, or pass a local directory")
    else:
        return None
    return ConfigError(f"{where}: {why}")


def _from_hub(name: str, load):
    """`load()` (a from_pretrained call), with a hub id that cannot be fetched said in one line."""
    try:
        return load()
    except Exception as exc:
        failure = None if _looks_local(name) else hub_failure(name, exc)
        if failure is None:
            raise
        raise failure from None  # the hub's and transformers' tracebacks say nothing the line does not


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (the EOS token when the checkpoint defines none, as TRL does)."""
    if _looks_local(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"tokenizer path not found: {name}")
        if not path.is_dir() or not any((path / f).is_file() for f in TOKENIZER_FILES):
            raise ConfigError(f"tokenizer: {name} is not a tokenizer directory (it has none of "
                              f"{', '.join(TOKENIZER_FILES)}); the tokenizer comes from the model directory "
                              "unless the tokenizer is set")
    tokenizer = _from_hub(name, lambda: AutoTokenizer.from_pretrained(
        str(Path(name).expanduser()) if _looks_local(name) else name, trust_remote_code=trust_remote_code))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "auto", trust_remote_code: bool = False,
               device: torch.device | str | None = None) -> PreTrainedModel:
    """A causal LM in the asked dtype; "auto" is float32 (bf16 compute comes from autocast, and
    transformers 5 would otherwise keep a bf16 checkpoint in bf16, ~150x slower on CPUs).
    An adapter directory (a use_peft run's model or checkpoint) is its base model with the adapter
    merged in, so evaluation and analysis see one plain model."""
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path not found: {name}")
    if _looks_local(name) and is_adapter_dir(name):
        peft = import_peft(f"loading the adapter in {name}")
        base = load_model(adapter_base(name), dtype, trust_remote_code)
        model = peft.PeftModel.from_pretrained(base, str(Path(name).expanduser())).merge_and_unload()
        return model.to(device) if device is not None else model
    torch_dtype = torch.float32 if dtype == "auto" else DTYPES[dtype]
    model = _from_hub(name, lambda: AutoModelForCausalLM.from_pretrained(
        str(Path(name).expanduser()) if _looks_local(name) else name, dtype=torch_dtype,
        trust_remote_code=trust_remote_code))
    if device is not None:
        model.to(device)
    return model


def import_peft(why: str):
    """The peft module, or one line saying how to install it."""
    try:
        import peft
    except ImportError as error:
        raise ImportError(f"{why} needs PEFT: pip install 'sftrl[peft]'") from error
    return peft


def add_lora(model: PreTrainedModel, r: int, alpha: int, dropout: float, target_modules: list[str] | None):
    """The model wrapped by PEFT with fresh LoRA adapters; only the adapters train, the base is frozen.
    target_modules None = PEFT's default for the architecture (q_proj, v_proj for Llama and Qwen), as TRL."""
    peft = import_peft("use_peft")
    targets = target_modules[0] if target_modules == ["all-linear"] else target_modules
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets,
                             task_type="CAUSAL_LM", bias="none")
    return peft.get_peft_model(model, config)


def is_peft(model) -> bool:
    return hasattr(getattr(model, "module", model), "disable_adapter")


def base_model(model) -> PreTrainedModel:
    """The transformers model under any DDP and PEFT wrapping (PEFT's LoRA layers stay inside it)."""
    model = getattr(model, "module", model)
    return model.get_base_model() if is_peft(model) else model


class AdapterFreeReference:
    """π_ref of a LoRA run: the policy itself with its adapters switched off (and in eval mode), so
    the KL needs no second copy of the model. Callable like a model; `backbone` and `head` give the
    pieces the chunked log-probabilities use, each running with the adapters off."""

    def __init__(self, policy):
        self.policy = policy

    @contextmanager
    def adapters_off(self):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with self.policy.disable_adapter():
                yield base_model(self.policy)
        finally:
            self.policy.train(was_training)

    def __call__(self, **kwargs):
        with self.adapters_off() as model:
            return model(**kwargs)

    def backbone(self, **kwargs):
        with self.adapters_off() as model:
            return model.get_decoder()(**kwargs)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        with self.adapters_off() as model:
            return model.get_output_embeddings()(hidden)

    @property
    def forward(self):  # what cache_keyword inspects
        return base_model(self.policy).forward


def cache_keyword(model: PreTrainedModel) -> str:
    """The forward's name for the KV cache argument (transformers 5 renamed past_key_values to cache);
    a DDP- or PEFT-wrapped model is asked through the model it wraps."""
    model = model if isinstance(model, AdapterFreeReference) else base_model(model)
    forward = inspect.signature(model.forward).parameters
    return "cache" if "cache" in forward else "past_key_values"


def set_activation_checkpointing(model: PreTrainedModel, on: bool) -> None:
    """Recompute each layer's activations in backward (non-reentrant: it needs no input that requires a
    gradient, which a LoRA model's frozen embeddings would not give), or stop; transformers 5 name first."""
    model = base_model(model)
    if hasattr(model, "activation_checkpointing_enable"):
        if on:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.activation_checkpointing_disable()
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_disable()


def activation_checkpointing(model: PreTrainedModel) -> bool:
    """Whether the model recomputes activations in backward (transformers 5 name, then the older one)."""
    if isinstance(model, AdapterFreeReference):
        return False  # it runs in eval mode, where nothing is recomputed
    model = base_model(model)
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen reference copy (for KL terms), in eval mode with no gradients."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference


def load_frozen(name: str, what: str, tokenizer: PreTrainedTokenizerBase, dtype: str = "auto",
                trust_remote_code: bool = False) -> PreTrainedModel:
    """A frozen model (a distillation teacher) from a local directory or hub id, loaded as the policy is
    (`load_model`), in eval mode with no gradients. It scores the policy's token ids, so its tokenizer
    must have the same vocabulary as `tokenizer`; `what` names the config field in errors (one line)."""
    path = resolve_model_path(name, what)
    own = load_tokenizer(path, trust_remote_code)
    if own.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(f"{what}: {name} has another tokenizer vocabulary than the policy's ({len(own.get_vocab())} "
                          f"against {len(tokenizer.get_vocab())} tokens); the teacher scores the policy's token ids, "
                          "so both must share one tokenizer")
    model = load_model(path, dtype, trust_remote_code)
    model.eval()
    model.requires_grad_(False)
    return model
