"""The sandbox's base model: a tiny Llama pretrained from scratch so that SFT and RL each have a job.

The pretraining mixture plays the role of a real LM's pretraining data, and is built so that the
base model starts in the regime the papers study (see README, "The sandbox"):

- **A latent strategy that RL can amplify.** Multi-step ``chain`` problems appear both solved step
  by step and answered with a bare ``\\boxed{N}`` (a shortcut: the answer with no working), the
  shortcut more often (``shortcut_share``). Greedy decoding therefore prefers the shortcut, which is
  usually wrong, while step-by-step solving is known and often correct when sampled. A verifier
  reward makes RL pick the step-by-step strategy; the demonstrations (always step by step) teach
  the same thing to SFT.
- **A skill only the demonstrations carry.** Pretraining never shows a bracket or a ``*``, so the
  base model cannot solve ``double`` problems and practically never samples a correct answer: RL
  has nothing to amplify there, while SFT on the demonstrations can teach the procedure (work out
  the bracket, then one line ``x*2=2x``).

The shipped base model (``sftrl/sandbox/base-v2``, loaded for ``model: sandbox``) was made by
:func:`prepare_base_model` with the default :class:`PretrainSettings`; ``sftrl sandbox prepare
--rebuild`` makes it again from this recipe (floats differ slightly across CPUs and thread counts,
so a rebuilt model is close to, not bit-identical with, the shipped one). Its ``sandbox.json``
records the settings and the measured accuracies.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sftrl.formatting import number
from sftrl.progress import Progress
from sftrl.sandbox.model import build_model
from sftrl.sandbox.task import (
    FAMILIES,
    IN_DISTRIBUTION,
    Difficulty,
    chain_problem,
    is_held_out,
    make_split,
    verify,
)
from sftrl.sandbox.tokenizer import build_tokenizer

BASE_MODEL_NAME = "base-v2"
METADATA_FILE = "sandbox.json"
# Files that must all be present for a base-model directory to count as complete.
REQUIRED_FILES = (METADATA_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
SHIPPED_DIR = Path(__file__).resolve().parent / BASE_MODEL_NAME


@dataclass(frozen=True)
class Pool:
    """One source of pretraining examples: chains of a difficulty, a share of them as the bare shortcut.

    ``max_first`` widens the first operand's range (single-step facts such as ``73+18=91`` that the
    running totals of longer chains need). A chain with a single step is always written out: the
    shortcut is only ever a way to skip several steps.
    """

    weight: float
    difficulty: Difficulty
    shortcut_share: float = 0.0
    max_first: int | None = None


@dataclass(frozen=True)
class PretrainSettings:
    """Everything that determines the base model; recorded in ``sandbox.json``."""

    steps: int = 2000
    batch_size: int = 64
    learning_rate: float = 3e-3
    warmup_steps: int = 50
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0
    pools: tuple[Pool, ...] = field(default_factory=lambda: (
        # Single-step facts: every sum and difference the target chains' running totals need.
        Pool(0.3, Difficulty(2, 2, 1, 19), max_first=99),
        # Short chains with small operands: the step format.
        Pool(0.2, Difficulty(3, 5, 0, 9), shortcut_share=0.6),
        # Chains of the target difficulty (never a held-out problem), mostly answered by the shortcut.
        Pool(0.5, IN_DISTRIBUTION, shortcut_share=0.6),
    ))

    def to_json(self) -> dict:
        """The settings as plain JSON types (tuples become lists), as stored in ``sandbox.json``."""
        return json.loads(json.dumps(asdict(self)))


def default_cache_dir() -> Path:
    """Where ``--rebuild`` writes: ``$SFTRL_CACHE/sandbox/base-v2`` or ``~/.cache/sftrl/sandbox/base-v2``."""
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


def _fact(rng: random.Random, pool: Pool):
    """A one-step problem whose first operand may be as large as ``pool.max_first``."""
    low, high = pool.difficulty.min_operand, pool.difficulty.max_operand
    return chain_problem(rng, Difficulty(2, 2, low, max(high, pool.max_first or high)))


def sample_pretraining_example(rng: random.Random, settings: PretrainSettings) -> tuple[str, str]:
    """One (prompt, completion) pair from the mixture, never a held-out (val or test) problem."""
    pool = rng.choices(settings.pools, weights=[p.weight for p in settings.pools])[0]
    while True:
        problem = _fact(rng, pool) if pool.max_first is not None else chain_problem(rng, pool.difficulty)
        if not is_held_out(problem.prompt):
            break
    shortcut = len(problem.lines) > 1 and rng.random() < pool.shortcut_share
    return problem.prompt, f"\\boxed{{{problem.answer}}}" if shortcut else problem.demonstration()


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
    """Teacher-forced training on the mixture; returns the loss of every step.

    AdamW with linear warmup then cosine decay to zero over ``settings.steps``. Examples come from a
    ``random.Random`` stream keyed by the seed and the torch RNG is seeded too, so the run is
    deterministic on a given machine and thread count.
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
    bar = Progress(settings.steps, "sandbox pretraining", enabled=progress)
    for _ in range(settings.steps):
        pairs = [sample_pretraining_example(rng, settings) for _ in range(settings.batch_size)]
        batch = completion_batch(tokenizer, [p for p, _ in pairs], [d for _, d in pairs])
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        bar.update(1, loss=number(losses[-1], ".3f"))
    bar.close()
    model.eval()
    return losses


@torch.no_grad()
def sample_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    batch_size: int = 100,
    max_new_tokens: int = 96,
    temperature: float = 0.0,
    seed: int = 0,
) -> list[str]:
    """One completion per raw task prompt (chat template applied): greedy at temperature 0, else
    sampled (top-k off, seeded), batched with left padding."""
    was_training = model.training
    model.eval()
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "left"  # generation appends on the right, so pad on the left
    completions: list[str] = []
    sampling = {"do_sample": False} if temperature == 0 else {"do_sample": True, "temperature": temperature,
                                                               "top_k": 0, "top_p": 1.0}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                texts = [prompt_text(tokenizer, p) for p in prompts[start : start + batch_size]]
                inputs = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
                outputs = model.generate(
                    **inputs,
                    **sampling,
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


def greedy_completions(model, tokenizer, prompts: list[str], batch_size: int = 100, max_new_tokens: int = 96) -> list[str]:
    """Greedy completions for raw task prompts (chat template applied)."""
    return sample_completions(model, tokenizer, prompts, batch_size, max_new_tokens)


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


def describe(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, split: str, samples: int = 4) -> dict:
    """What the model does on a split, overall and per family: greedy accuracy, sampled (temperature 1)
    accuracy over ``samples`` draws per prompt, and how often each answers with the bare shortcut."""
    rows = make_split(split)
    prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
    greedy = greedy_completions(model, tokenizer, prompts)
    sampled = [sample_completions(model, tokenizer, prompts, temperature=1.0, seed=k) for k in range(samples)]

    def shortcut(text: str) -> bool:
        return text.lstrip().startswith("\\boxed")

    out: dict[str, dict[str, float]] = {}
    for family in ("all", *FAMILIES):
        chosen = [i for i, r in enumerate(rows) if family == "all" or r["data_source"].endswith(f"-{family}")]
        if not chosen:
            continue
        draws = [(draw[i], answers[i]) for draw in sampled for i in chosen]
        out[family] = {
            "greedy_accuracy": sum(verify(greedy[i], answers[i]) for i in chosen) / len(chosen),
            "greedy_shortcut": sum(shortcut(greedy[i]) for i in chosen) / len(chosen),
            "sampled_accuracy": sum(verify(text, answer) for text, answer in draws) / len(draws),
            "sampled_shortcut": sum(shortcut(text) for text, _ in draws) / len(draws),
        }
    return out


def prepare_base_model(
    cache_dir: str | Path | None = None,
    force: bool = False,
    progress: bool = True,
    settings: PretrainSettings | None = None,
) -> Path:
    """Pretrain a base model from the recipe into ``cache_dir`` (default :func:`default_cache_dir`).

    A complete existing directory made with the same ``settings`` is returned as-is unless
    ``force``; one made with other settings is stale and rebuilt. ``settings`` overrides the recipe
    (tests use a handful of steps); the default (2000 steps) took 1877 s on one CPU thread. The model
    is built in a temporary sibling directory and renamed into place, so an interrupted run never
    leaves a half-written model where a complete one is expected.
    """
    target = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    settings = settings or PretrainSettings()
    metadata = read_metadata(target)
    # A directory made with other settings (an older recipe, or a test's tiny budget) is stale.
    if metadata is not None and metadata.get("settings") == settings.to_json() and not force:
        return target

    started = time.perf_counter()
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed=settings.seed)
    losses = pretrain(model, tokenizer, settings, progress=progress)
    train_seconds = time.perf_counter() - started
    metadata = {
        "name": BASE_MODEL_NAME,
        "description": "sftrl sandbox base model: pretrained from scratch; prefers the bare-answer shortcut "
        "on chains though it can solve them step by step, and has never seen brackets or '*'",
        "settings": settings.to_json(),
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "final_loss": losses[-1] if losses else None,
        "test": describe(model, tokenizer, "test"),
        "ood": describe(model, tokenizer, "ood"),
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


def base_model_dir() -> Path:
    """The shipped base model's directory (the same weights on every machine)."""
    if read_metadata(SHIPPED_DIR) is None:
        raise FileNotFoundError(f"the sandbox base model is missing from {SHIPPED_DIR}; reinstall sftrl, or "
                                f"rebuild it with `sftrl sandbox prepare --rebuild` and pass its directory as model")
    return SHIPPED_DIR


def load_base_model(directory: str | Path | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a base model (default: the shipped one) in float32 with its tokenizer."""
    directory = Path(directory) if directory is not None else base_model_dir()
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer
