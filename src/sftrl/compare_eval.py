"""How `sftrl compare` measures a model: avg@k and pass@k on each sandbox split and problem family
(resumable samples), the learning curve over a run's checkpoints, and the base pass rate the control's coin pays."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from .validate import load_config

SPLITS = {"in-dist": "sandbox:test", "ood": "sandbox:ood"}
FAMILIES = ("chain", "double")


def evaluate_run(model_dir: Path, eval_dir: Path, k: int, temperature: float, limit: int, seed: int,
                 max_new_tokens: int, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None, splits: tuple[str, ...] = tuple(SPLITS)) -> dict[str, dict]:
    """avg@k and pass@k of one model on each split, overall and per family (`<split>/<family>`);
    samples go to eval_dir/<split>.jsonl (resumable). Prompts are rendered as in training."""
    from .data import load_examples
    from .eval_metrics import summarize
    from .evaluate import run_benchmark, sample_with_generate
    from .grading import build_questions
    from .models import load_model, load_tokenizer, model_fingerprint

    tokenizer = load_tokenizer(str(model_dir), trust_remote_code)
    model = load_model(str(model_dir), trust_remote_code=trust_remote_code)
    sampler = functools.partial(sample_with_generate, chat_template_kwargs=chat_template_kwargs)
    fingerprint = model_fingerprint(str(model_dir))  # a retrained model is evaluated again, never served old samples
    results = {}
    for name in splits:
        source = SPLITS[name]
        questions = build_questions(load_examples(source, limit=limit), source, k=k)
        settings = {"model": str(model_dir), "k": k, "shuffle_choices": False, "model_sha256": fingerprint,
                    "chat_template_kwargs": chat_template_kwargs}
        records = run_benchmark(model, tokenizer, questions, eval_dir / f"{name}.jsonl", settings,
                                max_new_tokens=max_new_tokens, temperature=temperature, seed=seed, sampler=sampler)
        summary = summarize(records)
        results[name] = summary["overall"]
        for source_name, stats in summary["by_source"].items():
            family = source_name.rsplit("-", 1)[-1]
            if family in FAMILIES:
                results[f"{name}/{family}"] = stats
    return results


def measure_pass_rate(shared: dict[str, Any], prompts: int = 256, samples: int = 4, seed: int = 0) -> float:
    """The base model's pass rate on the run's training prompts at the rollout temperature: what GRPO's
    reward pays at its first step, and so the chance the negative control's coin pays."""
    import torch

    from .data import load_examples
    from .evaluate import evaluate_accuracy
    from .models import load_model, load_tokenizer, resolve_model_path

    config = load_config(None, {"method": "grpo", **shared})
    path = resolve_model_path(config.model)
    examples = load_examples(config.train_data, config.train_split, limit=prompts,
                             sandbox_demo_error_rate=config.sandbox_demo_error_rate,
                             sandbox_skill_share=config.sandbox_skill_share, sandbox_train_size=config.sandbox_train_size)
    torch.manual_seed(seed)
    result = evaluate_accuracy(load_model(path), load_tokenizer(path), examples, max_new_tokens=config.max_completion_length,
                               temperature=config.temperature, num_samples=samples,
                               chat_template_kwargs=config.chat_template_kwargs)
    return result["accuracy"]


def control_prob(regime_dir: Path, shared: dict[str, Any]) -> float:
    """The control's coin probability for this regime: measured once, then read from control.json (so a
    resumed comparison uses the same value on any machine)."""
    path = regime_dir / "control.json"
    key = {name: shared.get(name) for name in ("model", "train_data", "temperature", "max_completion_length",
                                               "sandbox_skill_share", "sandbox_train_size")}
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("settings") == key:
            return stored["coin_reward_prob"]
    prob = round(measure_pass_rate(shared), 3)
    regime_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": key, "coin_reward_prob": prob,
                                "how": "base model's pass rate on 256 training prompts x 4 samples at the rollout "
                                       "temperature"}, indent=2))
    return prob


def learning_curve(run_dir: Path, e: dict[str, Any]) -> list[dict[str, Any]]:
    """In-distribution avg@k of each kept checkpoint, with the step and the token passes spent by then."""
    from . import runlog
    from .checkpoint import checkpoint_dirs

    spent = {r["step"]: r.get("total_token_passes") for r in runlog.read(run_dir / "metrics.jsonl")
             if "total_token_passes" in r}
    points = []
    for path in checkpoint_dirs(run_dir):
        step = int(path.name.split("-")[-1])
        evals = evaluate_run(path, run_dir / "eval" / "curve" / path.name, e["k"], e["temperature"], e["limit"],
                             e["seed"], e["max_new_tokens"], e["trust_remote_code"], e["chat_template_kwargs"],
                             splits=("in-dist",))
        points.append({"step": step, "token_passes": spent.get(step), "avg@k": evals["in-dist"]["avg@k"]})
    return points
