"""Checkpoints: written atomically, found again, loaded for resuming.

A checkpoint is ``checkpoints/step-NNNNNN`` with the model and tokenizer (``from_pretrained`` loads it),
``trainer_state.pt`` (optimizer, sampler, method state, random generators) and, when the reference
model is a snapshot taken during training, ``reference/``. It is written to a temporary directory and
renamed into place, so a crash never leaves a half-written checkpoint.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

TRAINER_STATE = "trainer_state.pt"


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())


def save_checkpoint(run_dir: Path, step: int, policy, tokenizer, trainer_state: dict[str, Any], reference=None,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNN atomically and keep only the newest `keep` checkpoints."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(trainer_state, tmp / TRAINER_STATE)
    if reference is not None:  # a snapshot taken during training: keep it for resuming
        reference.save_pretrained(tmp / "reference")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def save_model(run_dir: Path, policy, tokenizer) -> Path:
    """Write the final model to run_dir/model atomically."""
    tmp, final = run_dir / ".tmp-model", run_dir / "model"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


def load_checkpoint(path: Path, load_model) -> tuple[dict[str, Any], dict[str, torch.Tensor], Any]:
    """(trainer state, model weights, reference model or None) of one checkpoint; `load_model(path)`
    loads a model directory."""
    state = torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    weights = load_model(str(path)).state_dict()
    reference = load_model(str(path / "reference")) if state.get("reference_step") is not None else None
    return state, weights, reference
