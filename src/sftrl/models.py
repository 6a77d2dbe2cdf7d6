"""Loading models and tokenizers through the transformers Auto classes (hub ids or local paths)."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_model_path(name: str) -> str:
    """'sandbox' -> the directory of the sandbox base model shipped with sftrl."""
    if name == "sandbox":
        from .sandbox.prepare import base_model_dir

        return str(base_model_dir())
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path not found: {name}")
    return name


def _looks_local(name: str) -> bool:
    return name.startswith((".", "/", "~")) or Path(name).expanduser().exists() or name.count("/") > 1


def load_tokenizer(name: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """A tokenizer with a pad token (the EOS token when the checkpoint defines none, as TRL does)."""
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"tokenizer path not found: {name}")
    tokenizer = AutoTokenizer.from_pretrained(str(Path(name).expanduser()) if _looks_local(name) else name,
                                              trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str, dtype: str = "auto", trust_remote_code: bool = False,
               device: torch.device | str | None = None) -> PreTrainedModel:
    """A causal LM in the asked dtype; "auto" is float32 (bf16 compute comes from autocast, and
    transformers 5 would otherwise keep a bf16 checkpoint in bf16, ~150x slower on CPUs)."""
    if _looks_local(name) and not Path(name).expanduser().exists():
        raise FileNotFoundError(f"model path not found: {name}")
    torch_dtype = torch.float32 if dtype == "auto" else DTYPES[dtype]
    model = AutoModelForCausalLM.from_pretrained(str(Path(name).expanduser()) if _looks_local(name) else name,
                                                 dtype=torch_dtype, trust_remote_code=trust_remote_code)
    if device is not None:
        model.to(device)
    return model


def frozen_copy(model: PreTrainedModel) -> PreTrainedModel:
    """A frozen reference copy (for KL terms), in eval mode with no gradients."""
    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
