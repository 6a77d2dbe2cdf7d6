"""Prepare the sandbox's base model: a tiny Llama pretrained from scratch to *partly* solve the task.

Post-training methods need a starting point that already knows the output format (step lines and a
final ``\\boxed{}``) but still gets many target problems wrong, so that SFT on the demonstrations
and GRPO on its own attempts both have room to show an effect. This module plays the role of the
pretraining stage of a real LM: a compact teacher-forced loop on a warm-up mixture (mostly easier
problems: 1-digit operands and 2-term chains, plus a small share of target-difficulty ones) that
stops early, leaving the model at roughly 5-40% greedy accuracy on the in-distribution test split
and lower on the harder ood split.

The result is cached (``$SFTRL_CACHE/sandbox/base-v1`` or ``~/.cache/sftrl/sandbox/base-v1``),
written atomically, and described by a ``sandbox.json`` holding the settings and measured accuracy.
Training is deterministic given its seed (on a given machine and thread count).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sftrl.sandbox.model import build_model
from sftrl.sandbox.task import (
    IN_DISTRIBUTION,
    Difficulty,
    is_held_out,
    make_split,
    sample_problem,
    verify,
)
from sftrl.sandbox.tokenizer import build_tokenizer

BASE_MODEL_NAME = "base-v1"
METADATA_FILE = "sandbox.json"
# Files that must all be present for a cached base model to count as complete.
REQUIRED_FILES = (METADATA_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the base model; recorded in ``sandbox.json``.

    The mixture is a list of ``(weight, Difficulty)``: each pretraining example is drawn from one
    pool with probability proportional to its weight. The step budget is what leaves the model
    only partly trained; it was tuned so the base model lands in the 5-40% test-accuracy band.
    """

    steps: int = 250
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 30
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    mixture: tuple[tuple[float, Difficulty], ...] = (
        # Format and chaining with easy arithmetic: up to as many steps as the target, 1-digit operands.
        (0.5, Difficulty(min_terms=2, max_terms=5, min_operand=0, max_operand=9)),
        # The target's single-step arithmetic: one addition or subtraction of operands up to 19.
        (0.35, Difficulty(min_terms=2, max_terms=2, min_operand=1, max_operand=19)),
        # A little of the target itself (held-out test problems are never drawn).
        (0.15, IN_DISTRIBUTION),
    )

    def to_json(self) -> dict:
        """The settings as plain JSON types (tuples become lists), as stored in ``sandbox.json``."""
        return json.loads(json.dumps(asdict(self)))


def default_cache_dir() -> Path:
    """``$SFTRL_CACHE/sandbox/base-v1`` if ``SFTRL_CACHE`` is set, else ``~/.cache/sftrl/sandbox/base-v1``."""
    root = os.environ.get("SFTRL_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "sftrl"
    return base / "sandbox" / BASE_MODEL_NAME


def read_metadata(directory: Path) -> dict | None:
    """The ``sandbox.json`` of a complete base-model directory; None if a file is missing or unreadable."""
    if not all((directory / name).is_file() for name in REQUIRED_FILES):
        return None
    try:
        metadata = json.loads((directory / METADATA_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return metadata if isinstance(metadata, dict) else None


def prompt_text(tokenizer: PreTrainedTokenizerBase, prompt: str) -> str:
    """The chat-formatted prompt the model is asked (and trained) to continue."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def _sample_pretraining_example(rng: random.Random, settings: PretrainSettings) -> tuple[str, str]:
    """One (prompt, demonstration) pair from the warm-up mixture, never a held-out test problem."""
    weights = [weight for weight, _ in settings.mixture]
    difficulty = rng.choices([pool for _, pool in settings.mixture], weights=weights)[0]
    while True:
        problem = sample_problem(rng, difficulty)
        if not is_held_out(problem.prompt):
            return problem.prompt, problem.demonstration()


def completion_batch(
    tokenizer: PreTrainedTokenizerBase, prompts: list[str], completions: list[str]
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids``/``attention_mask``/``labels`` for teacher forcing.

    Each sequence is the chat prompt, then the completion and eos; labels are -100 on the prompt
    and padding so the loss covers only what the model is meant to produce.
    """
    prompt_ids = tokenizer([prompt_text(tokenizer, p) for p in prompts], add_special_tokens=False)["input_ids"]
    completion_ids = tokenizer(
        [c + tokenizer.eos_token for c in completions], add_special_tokens=False
    )["input_ids"]
    length = max(len(p) + len(c) for p, c in zip(prompt_ids, completion_ids))
    input_ids = torch.full((len(prompts), length), tokenizer.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    labels = torch.full((len(prompts), length), -100, dtype=torch.long)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        sequence = torch.tensor(p + c, dtype=torch.long)
        input_ids[row, : len(sequence)] = sequence
        attention_mask[row, : len(sequence)] = 1
        labels[row, len(p) : len(sequence)] = sequence[len(p) :]
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def pretrain(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    settings: PretrainSettings,
    progress: bool = True,
) -> list[float]:
    """Teacher-forced training on the warm-up mixture; returns the loss of every step.

    AdamW with linear warmup then cosine decay to zero over ``settings.steps``. Examples come from a
    ``random.Random(seed)`` stream and the torch RNG is seeded too, so the run is deterministic.
    """
    rng = random.Random(f"sandbox-pretrain-{settings.seed}")
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay, betas=(0.9, 0.98)
    )

    def learning_rate_factor(step: int) -> float:
        if step < settings.warmup_steps:
            return (step + 1) / settings.warmup_steps
        progress_fraction = (step - settings.warmup_steps) / max(1, settings.steps - settings.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress_fraction))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, learning_rate_factor)
    model.train()
    losses = []
    bar = tqdm(range(settings.steps), desc="sandbox pretraining", disable=not progress)
    for _ in bar:
        pairs = [_sample_pretraining_example(rng, settings) for _ in range(settings.batch_size)]
        batch = completion_batch(tokenizer, [p for p, _ in pairs], [d for _, d in pairs])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def greedy_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int = 100,
    max_new_tokens: int = 96,
) -> list[str]:
    """Greedy completions for raw task prompts (chat template applied), batched with left padding."""
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    completions: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [prompt_text(tokenizer, p) for p in prompts[start : start + batch_size]]
            inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
            outputs = model.generate(
                **inputs,
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
            new_tokens = outputs[:, inputs["input_ids"].shape[1] :]
            completions.extend(tokenizer.batch_decode(new_tokens, skip_special_tokens=True))
    finally:
        tokenizer.padding_side = padding_side
        model.train(was_training)
    return completions


def greedy_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: list[dict],
    batch_size: int = 100,
    max_new_tokens: int = 96,
) -> float:
    """Fraction of ``rows`` (``{"prompt", "answer"}``) the model solves with greedy decoding."""
    if not rows:
        raise ValueError("greedy_accuracy needs at least one row")
    completions = greedy_completions(
        model, tokenizer, [row["prompt"] for row in rows], batch_size=batch_size, max_new_tokens=max_new_tokens
    )
    return sum(verify(c, row["answer"]) for c, row in zip(completions, rows)) / len(rows)


def prepare_base_model(
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    settings: PretrainSettings | None = None,
) -> Path:
    """Return the directory of the sandbox base model, training and caching it first if needed.

    ``cache_dir`` is the model directory itself (default: :func:`default_cache_dir`). A complete
    existing directory made with the same ``settings`` is returned as-is unless ``force``; one
    made with other settings is stale and rebuilt. ``settings`` overrides the pretraining
    recipe (tests use a handful of steps); the default takes about two minutes on two CPU cores.
    The model is built in a temporary sibling directory and renamed into place, so an interrupted
    run never leaves a half-written model where a complete one is expected.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings = settings or PretrainSettings()
    metadata = read_metadata(target)
    # A cache made with other settings (an older recipe, or a test's tiny budget) is stale.
    if metadata is not None and metadata.get("settings") == settings.to_json() and not force:
        return target

    started = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=settings.seed)
    losses = pretrain(model, tokenizer, settings, progress=progress)
    train_seconds = time.perf_counter() - started
    test_accuracy = greedy_accuracy(model, tokenizer, make_split("test"))
    ood_accuracy = greedy_accuracy(model, tokenizer, make_split("ood"))

    metadata = {
        "name": BASE_MODEL_NAME,
        "description": "sftrl sandbox base model: pretrained from scratch on a warm-up mixture, "
        "stopped early so post-training has room to improve it",
        "settings": settings.to_json(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": losses[-1] if losses else None,
        "test_accuracy": test_accuracy,
        "ood_accuracy": ood_accuracy,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
        if target.exists():
            # os.replace cannot overwrite a non-empty directory: move the old one aside first.
            retired = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
            os.replace(target, retired / target.name)
            shutil.rmtree(retired, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def load_base_model(
    cache_dir: str | Path | None = None, progress: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Prepare the base model if needed and load it (float32) with its tokenizer."""
    directory = prepare_base_model(cache_dir, progress=progress)
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
