"""Evaluation: greedy accuracy during training, kl_from_base, and the benchmark harness behind `sftrl eval`.

The harness samples k completions per question (temperature 0.6, top_p 1.0: the papers' protocol),
grades them (:mod:`sftrl.grading`: math-verify on the text after ``</think>``, multiple choice by letter,
the sandbox's exact check) and keeps every graded question in a resumable samples file; avg@k and pass@k
per ``data_source`` and overall are :mod:`sftrl.eval_metrics`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .batching import pack, target_logits
from .data import Example, render_prompt
from .eval_metrics import avg_at_k
from .grading import Question, build_questions, grade_samples
from .rollout import Engine, generate_completions

logger = logging.getLogger(__name__)


def evaluate_accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: list[Example],
    grader: str | None = None,
    max_new_tokens: int = 256,
    batch_size: int = 128,
    temperature: float = 0.0,
    progress=None,
    engine: Engine | None = None,
    chat_template_kwargs: dict | None = None,
    num_samples: int = 1,
) -> dict[str, Any]:
    """Share of examples solved by one completion each (greedy at temperature 0), or with
    `num_samples` > 1 the mean share over that many samples per example (avg@k, sampled at `temperature`).

    Each example is graded by the task's own verifier (:func:`~sftrl.grading.grader_for`: the sandbox's check,
    option letters, or math-verify), never by a training reward, which may be shaped or noisy;
    ``grader`` names one reward function to grade them all instead. Returns the accuracy, the
    accuracy per ``data_source`` (when there are several), the mean completion length, the share of
    truncated completions, and the completions themselves under "completions". `engine` samples them
    (the training run's rollout engine; default sftrl's decode loop).
    """
    texts = [render_prompt(tokenizer, e.prompt, chat_template_kwargs) for e in examples]
    if num_samples > 1 and temperature == 0.0:
        raise ValueError("evaluate_accuracy: num_samples > 1 needs a temperature above 0 (greedy samples are identical)")
    k = num_samples
    completions = generate_completions(model, tokenizer, texts, num_generations=k, max_new_tokens=max_new_tokens,
                                       temperature=temperature or 1.0, batch_size=batch_size,
                                       greedy=temperature == 0.0, progress=progress, engine=engine)
    questions = build_questions(examples, "eval", k=k, reward=grader)
    per_question = grade_samples(questions, [completions.texts[i * k:(i + 1) * k] for i in range(len(examples))])
    grades = [avg_at_k(g) for g in per_question]
    by_source: dict[str, list[float]] = {}
    for question, grade in zip(questions, grades):
        by_source.setdefault(question.data_source, []).append(grade)
    lengths = [len(c) for c in completions.completion_ids]
    return {
        "accuracy": sum(grades) / len(grades),
        "by_source": {name: sum(g) / len(g) for name, g in sorted(by_source.items())} if len(by_source) > 1 else {},
        "mean_length": sum(lengths) / len(lengths),
        "truncated": sum(completions.truncated) / len(lengths),
        "completions": completions.texts,
    }


# ---------------------------------------------------------------------------------------- kl_from_base
# RL's Razor (arXiv 2509.04259): forgetting tracks the forward KL from the base model, KL(π_base ‖ π_θ), on
# the new task's data. sftrl measures it at evaluation on a few held-out demonstrations, teacher-forced.
KL_FROM_BASE_TOP_K = 256  # base tokens kept per position; exact when the vocabulary is no larger


def forward_kl_top_k(
    base_logps: torch.Tensor,  # (B, T, K) log π_base of its K most likely tokens at each position
    base_ids: torch.Tensor,  # (B, T, K) long: those tokens
    logps: torch.Tensor,  # (B, T, V) log π_θ over the whole vocabulary
) -> torch.Tensor:  # (B, T)
    """Per-position KL(π_base ‖ π_θ) of the two distributions coarse-grained to the base's K kept tokens plus
    one bucket for the rest: Σ_k p_k (log p_k - log q_k) + p_rest (log p_rest - log q_rest). Exact when the
    K tokens are the whole vocabulary; otherwise a lower bound of the full KL (coarse-graining never raises
    a KL), which lets the base's distribution be kept in K values a position instead of V."""
    q_top = logps.gather(-1, base_ids)  # (B, T, K)
    head = (base_logps.exp() * (base_logps - q_top)).sum(-1)  # (B, T)
    p_rest = (-torch.expm1(torch.logsumexp(base_logps, -1))).clamp(min=0.0)  # (B, T)
    q_rest = (-torch.expm1(torch.logsumexp(q_top, -1))).clamp(min=torch.finfo(logps.dtype).tiny)  # (B, T)
    return head + torch.xlogy(p_rest, p_rest) - torch.xlogy(p_rest, q_rest)


@dataclass
class BaseLogprobs:
    """The base model's top-K log-probs at every position of each held-out demonstration, computed once."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]  # the demonstrations + EOS
    top_logps: list[torch.Tensor]  # (T_i, K) each, float32 on the CPU
    top_ids: list[torch.Tensor]  # (T_i, K) each, long


def held_out_demonstrations(tokenizer, examples: list[Example], count: int, max_length: int,
                            chat_template_kwargs: dict | None = None) -> tuple[list[list[int]], list[list[int]]]:
    """(prompt ids, demonstration ids + EOS cut to max_length) of the first `count` examples with a demonstration."""
    chosen = [e for e in examples if e.demonstration][:count]
    prompts = [tokenizer(render_prompt(tokenizer, e.prompt, chat_template_kwargs), add_special_tokens=False)["input_ids"]
               for e in chosen]
    targets = [(tokenizer(e.demonstration, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])[:max_length]
               for e in chosen]
    return prompts, targets


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


@torch.no_grad()
def _demonstration_logps(model, prompt: list[int], target: list[int], pad_id: int) -> torch.Tensor:
    """(T, V) float32 log π over the vocabulary at each position of one demonstration."""
    device = next(model.parameters()).device
    batch = pack([prompt], [target], pad_id, device)
    return torch.log_softmax(target_logits(model, batch).float(), dim=-1)[0, :len(target)]


def base_logprobs(model, tokenizer, examples: list[Example], count: int, max_length: int,
                  chat_template_kwargs: dict | None = None, top_k: int = KL_FROM_BASE_TOP_K) -> BaseLogprobs | None:
    """The base model's top-K log-probs on the first `count` demonstrations of `examples`, kept on the CPU;
    None when none has a demonstration."""
    prompts, targets = held_out_demonstrations(tokenizer, examples, count, max_length, chat_template_kwargs)
    if not prompts:
        return None
    tops = []
    for prompt, target in zip(prompts, targets):
        logps = _demonstration_logps(model, prompt, target, _pad_id(tokenizer))  # (T, V)
        values, ids = torch.topk(logps, min(top_k, logps.shape[-1]), dim=-1)  # (T, K) each
        tops.append((values.cpu(), ids.cpu()))
    return BaseLogprobs(prompts, targets, [v for v, _ in tops], [i for _, i in tops])


def kl_from_base(model, tokenizer, base: BaseLogprobs) -> float:
    """Token mean over the held-out demonstrations of KL(π_base ‖ π_θ) (forward_kl_top_k)."""
    total, tokens = 0.0, 0
    for prompt, target, top_logps, top_ids in zip(base.prompt_ids, base.target_ids, base.top_logps, base.top_ids):
        logps = _demonstration_logps(model, prompt, target, _pad_id(tokenizer))  # (T, V)
        kl = forward_kl_top_k(top_logps.to(logps.device)[None], top_ids.to(logps.device)[None], logps[None])  # (1, T)
        total, tokens = total + float(kl.sum()), tokens + len(target)
    return total / tokens if tokens else 0.0


# ---------------------------------------------------------------------------------------------------
# The benchmark harness: k samples per question, avg@k and pass@k per data_source
#
# Samples are appended to a JSONL file one question at a time, so an evaluation that stops keeps
# everything already graded and a second run with the same settings picks up where it left off.

DEFAULT_TEMPERATURE = 0.6  # the papers' evaluation protocol (ALGORITHMS.md, "Shared ... protocol")
SETTINGS_KEYS = ("model", "k", "k_by_source", "temperature", "top_p", "max_new_tokens", "shuffle_choices", "seed",
                 "chat_template_kwargs")


def samples_are_stale(path: Path, settings: dict[str, Any]) -> bool:
    """Whether a samples file was made from other model files than ``settings["model_sha256"]`` (a
    model retrained or replaced at the same path); a file from before fingerprints counts as stale."""
    if settings.get("model_sha256") is None or not path.exists():
        return False
    first = path.read_text().split("\n", 1)[0]
    try:
        old = json.loads(first).get("settings", {})
    except (json.JSONDecodeError, AttributeError):
        return False  # not ours to judge: read_samples reports it
    return old.get("model_sha256") != settings["model_sha256"]


def read_samples(path: Path, settings: dict[str, Any]) -> dict[str, dict]:
    """Records already in a samples file, by question id; an error if it was written with other settings."""
    if not path.exists():
        return {}
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        return {}
    header = json.loads(lines[0])
    old = header.get("settings", {})
    keys = SETTINGS_KEYS
    if old.get("model_sha256") is not None and old.get("model_sha256") == settings.get("model_sha256"):
        # The same model files at another path (a moved run directory, another checkout of the shipped
        # sandbox model): the content decides, not where it lies.
        keys = tuple(key for key in SETTINGS_KEYS if key != "model")
    if any(old.get(key) != settings.get(key) for key in keys):
        diff = {key: (old.get(key), settings.get(key)) for key in keys if old.get(key) != settings.get(key)}
        raise FileExistsError(f"{path} holds samples made with other settings {diff} (old, new); "
                              f"choose another --output-dir, or pass --overwrite")
    records = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut off by a crash: that question is evaluated again
            continue
        records[record["id"]] = record
    return records


def sample_with_generate(model, tokenizer, questions: list[Question], temperature: float, top_p: float,
                         max_new_tokens: int, batch_size: int, chat_template_kwargs: dict | None = None
                         ) -> list[tuple[list[str], list[int], list[bool]]]:
    """(texts, lengths, truncated) of each question's k samples with Hugging Face `generate`
    (functools.partial sets chat_template_kwargs for run_benchmark)."""
    results = []
    for k in sorted({q.k for q in questions}):
        group = [q for q in questions if q.k == k]
        texts = [render_prompt(tokenizer, q.example.prompt, chat_template_kwargs) for q in group]
        out = generate_completions(model, tokenizer, texts, num_generations=k, max_new_tokens=max_new_tokens,
                                   temperature=temperature or 1.0, top_p=top_p, batch_size=batch_size,
                                   greedy=temperature == 0.0)
        for j, q in enumerate(group):
            span = range(j * k, (j + 1) * k)
            results.append((q.id, [out.texts[s] for s in span], [len(out.completion_ids[s]) for s in span],
                            [out.truncated[s] for s in span]))
    by_id = {r[0]: r[1:] for r in results}
    return [by_id[q.id] for q in questions]


class VLLMSampler:
    """Samples with vLLM (``pip install sftrl[vllm]``, a GPU): one engine, `n=k` samples per prompt."""

    def __init__(self, model_path: str, dtype: str = "auto", max_model_len: int | None = None,
                 gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False,
                 chat_template_kwargs: dict | None = None):
        try:
            from vllm import LLM
        except ImportError as error:
            raise ImportError("--backend vllm needs vLLM: pip install 'sftrl[vllm]' (on a machine with a GPU)") from error
        self.llm = LLM(model=model_path, dtype=dtype, max_model_len=max_model_len,
                       gpu_memory_utilization=gpu_memory_utilization, trust_remote_code=trust_remote_code)
        self.chat_template_kwargs = chat_template_kwargs

    def __call__(self, model, tokenizer, questions, temperature, top_p, max_new_tokens, batch_size):
        from vllm import SamplingParams

        texts = [render_prompt(tokenizer, q.example.prompt, self.chat_template_kwargs) for q in questions]
        params = [SamplingParams(n=q.k, temperature=temperature, top_p=top_p, max_tokens=max_new_tokens)
                  for q in questions]
        outputs = self.llm.generate(texts, params, use_tqdm=False)
        return [([o.text for o in out.outputs], [len(o.token_ids) for o in out.outputs],
                 [o.finish_reason == "length" for o in out.outputs]) for out in outputs]


def run_benchmark(
    model,
    tokenizer,
    questions: list[Question],
    samples_path: str | Path | None,
    settings: dict[str, Any],
    max_new_tokens: int = 1024,
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = 1.0,
    batch_size: int = 128,
    seed: int = 0,
    sampler=sample_with_generate,
    progress=None,
) -> list[dict]:
    """Sample and grade every question not yet in `samples_path`, appending one JSON line per question
    as soon as it is graded; returns the records of all questions (in question order).

    `settings` says what made the questions (model, k, k_by_source, shuffle_choices, and
    ``model_sha256``, the :func:`~sftrl.models.model_fingerprint` of the model's files); the sampling
    arguments are added to it. A samples file written under other settings is refused; one made from
    other model files at the same path is stale and evaluated again.
    Each chunk of questions is sampled under a seed fixed by its first question, so a resumed
    evaluation draws the same samples as an uninterrupted one.
    """
    settings = {**settings, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens,
                "seed": seed}
    path = Path(samples_path) if samples_path else None
    done = read_samples(path, settings) if path else {}  # other settings than the file's: refused here
    if path and samples_are_stale(path, settings):
        logger.warning("%s: the model's files changed since these samples were made; evaluating it again", path)
        path.unlink()
        done = {}
    if path and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings}) + "\n")
    todo = [q for q in questions if q.id not in done]
    if progress is not None:
        progress.update(len(questions) - len(todo))
    chunk = max(1, batch_size // max(q.k for q in questions)) * 4 if questions else 1
    for start in range(0, len(todo), chunk):
        part = todo[start:start + chunk]
        torch.manual_seed(int(hashlib.sha256(f"{seed}:{part[0].id}".encode()).hexdigest()[:8], 16))
        sampled = sampler(model, tokenizer, part, temperature, top_p, max_new_tokens, batch_size)
        grades = grade_samples(part, [texts for texts, _, _ in sampled])
        lines = []
        for q, (texts, lengths, truncated), g in zip(part, sampled, grades):
            record = {"id": q.id, "data_source": q.data_source, "grader": q.grader, "answer": q.example.answer,
                      "grades": g, "lengths": lengths, "truncated": truncated, "completions": texts}
            done[q.id] = record
            lines.append(json.dumps(record) + "\n")
        if path:
            with open(path, "a") as f:
                f.writelines(lines)
        if progress is not None:
            progress.update(len(part))
    return [done[q.id] for q in questions]
