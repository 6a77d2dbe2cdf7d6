"""The one training loop, shared by every method.

Each optimizer step: draw `batch_size` prompts -> the method runs its backward passes through
`sft_backward` / `grpo_backward` -> global gradient norm, clipping, AdamW and scheduler step ->
metrics.jsonl (TRL's metric names) -> periodic evaluation and atomic checkpoints.
Runs on `accelerate` (single process, or `accelerate launch` for data parallelism).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from tqdm.auto import tqdm

from . import losses
from .config import Config
from .data import Example, PromptSampler, load_examples, render_prompt
from .evaluate import evaluate_accuracy, reward_columns
from .methods import METHODS
from .models import frozen_copy, load_model, load_tokenizer, resolve_model_path
from .rewards import load_rewards, score_completions
from .rollout import generate_completions

BAR_METRICS = {"loss": "loss", "reward": "reward", "sft/loss": "sft", "entropy": "H", "grad_norm": "|g|"}


@dataclass
class TokenBatch:
    """Left-padded prompts followed by right-padded targets (completions or demonstrations)."""

    input_ids: torch.Tensor  # (B, P + T)
    attention_mask: torch.Tensor  # (B, P + T)
    targets: torch.Tensor  # (B, T) target tokens
    target_mask: torch.Tensor  # (B, T) 1.0 on real target tokens


def pack(prompts: list[list[int]], targets: list[list[int]], pad_id: int, device: torch.device) -> TokenBatch:
    """Lay sequences out so every target starts at the same column (TRL's layout): then the last
    T+1 logits predict the targets and `logits_to_keep` spares the prompt's vocabulary projections."""
    width_p = max(len(p) for p in prompts)
    width_t = max(1, max(len(t) for t in targets))
    n = len(prompts)
    ids = torch.full((n, width_p + width_t), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width_p + width_t), dtype=torch.long)
    tmask = torch.zeros((n, width_t), dtype=torch.float32)
    for i, (p, t) in enumerate(zip(prompts, targets)):
        ids[i, width_p - len(p):width_p] = torch.tensor(p, dtype=torch.long)
        attn[i, width_p - len(p):width_p + len(t)] = 1
        if t:
            ids[i, width_p:width_p + len(t)] = torch.tensor(t, dtype=torch.long)
            tmask[i, :len(t)] = 1.0
    return TokenBatch(ids.to(device), attn.to(device), ids[:, width_p:].to(device), tmask.to(device))


def target_logprobs(model, batch: TokenBatch, temperature: float = 1.0, with_entropy: bool = True):
    """log π(target_t | prefix) and entropy H_t for every target position: two (B, T) tensors."""
    # Positions count real tokens only, so left padding does not shift them (as generate() does).
    position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
    width_t = batch.targets.shape[1]
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids, logits_to_keep=width_t + 1, use_cache=False).logits
    logits = logits[:, :-1]  # (B, T, V): logit at column j predicts the token at column j+1
    return losses.token_logprobs_and_entropy(logits, batch.targets, temperature, with_entropy)


def lr_lambda(config: Config):
    """Linear warm-up to the peak, then constant or cosine decay to 0 at max_steps."""
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / (config.warmup_steps + 1)
        if config.lr_scheduler == "constant":
            return 1.0
        progress = (step - config.warmup_steps) / max(1, config.max_steps - config.warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


class Trainer:
    """Sets up model, data, rewards and optimizer from a Config, then runs `train()`."""

    def __init__(self, config: Config):
        self.config = config
        self.method = METHODS[config.method]
        self.run_dir = config.run_dir
        mixed = config.mixed_precision
        if mixed == "auto":
            mixed = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
        self.accelerator = Accelerator(mixed_precision=mixed, cpu=not torch.cuda.is_available())
        self.world = self.accelerator.num_processes
        if config.batch_size % self.world:
            raise ValueError(f"batch_size {config.batch_size} must be divisible by the {self.world} processes")
        _seed_everything(config.seed)

        # Data first: a bad row fails here, before any model is loaded.
        is_sandbox = config.train_data.split(":")[0] == "sandbox"
        needs_demo = self.method.NEEDS_DEMONSTRATIONS
        self.train_examples = load_examples(
            config.train_data, config.train_split, prompt_field=config.prompt_field,
            answer_field=config.answer_field, demo_field=config.demo_field, require_demo=needs_demo,
            system_prompt=config.system_prompt, limit=config.max_train_examples,
            sandbox_demo_error_rate=config.sandbox_demo_error_rate)
        eval_source = ("sandbox:test" if is_sandbox else None) if config.eval_data == "auto" else config.eval_data
        self.eval_examples: list[Example] = []
        if eval_source:
            self.eval_examples = load_examples(
                eval_source, config.eval_split, prompt_field=config.prompt_field,
                answer_field=config.answer_field, demo_field=config.demo_field, require_demo=False,
                system_prompt=config.system_prompt, limit=config.max_eval_examples)
        specs = [("sandbox" if is_sandbox else "math") if s == "auto" else s for s in config.reward_funcs]
        self.reward_fns = load_rewards(specs)
        self.reward_weights = config.reward_weights

        model_path = resolve_model_path(config.model, progress=config.progress)
        self.tokenizer = load_tokenizer(config.tokenizer or model_path, config.trust_remote_code)
        model = load_model(model_path, config.dtype, config.trust_remote_code)
        needs_reference = getattr(self.method, "needs_reference", None)
        wants_ref = needs_reference(config) if needs_reference else (self.method.NEEDS_ROLLOUTS and config.beta > 0)
        self.reference = frozen_copy(model).to(self.accelerator.device) if wants_ref else None
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay,
                                      betas=(config.adam_beta1, config.adam_beta2))
        self.model, self.optimizer = self.accelerator.prepare(model, optimizer)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(config))
        self.sampler = PromptSampler(len(self.train_examples), config.batch_size, config.seed)
        self.method_state: dict[str, Any] = self.method.init_state(config) if hasattr(self.method, "init_state") else {}
        self.step = 0
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self._prompt_cache: dict[int, list[int]] = {}

    # ------------------------------------------------------------------ primitives for methods
    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    def prompt_ids(self, example: Example) -> list[int]:
        key = id(example)
        if key not in self._prompt_cache:
            text = render_prompt(self.tokenizer, example.prompt)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            if self.config.max_prompt_length:
                ids = ids[-self.config.max_prompt_length:]
            self._prompt_cache[key] = ids
        return self._prompt_cache[key]

    def _global_sum(self, value: float) -> float:
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.accelerator.device)
        return float(self.accelerator.reduce(tensor, reduction="sum").item())

    def _micro_batches(self, n: int):
        size = self.config.micro_batch_size
        return [range(i, min(n, i + size)) for i in range(0, n, size)]

    def _backward(self, loss: torch.Tensor) -> None:
        # DDP averages gradients over ranks; our losses are already global sums / global counts.
        with self.accelerator.no_sync(self.model):
            self.accelerator.backward(loss * self.world)

    def sft_backward(self, examples: list[Example], weight: float = 1.0) -> dict[str, float]:
        """Accumulate weight · (token-mean NLL of the demonstrations); returns `sft/*` metrics."""
        cfg = self.config
        prompts = [self.prompt_ids(e) for e in examples]
        demos = []
        for e in examples:
            ids = self.tokenizer(e.demonstration, add_special_tokens=False)["input_ids"] + [self.eos_id]
            demos.append(ids[:cfg.max_completion_length])
        step_tokens = self._global_sum(sum(len(d) for d in demos))
        nll_sum, entropy_sum = 0.0, 0.0
        for rows in self._micro_batches(len(examples)):
            batch = pack([prompts[i] for i in rows], [demos[i] for i in rows], self.pad_id, self.accelerator.device)
            logps, entropy = target_logprobs(self.model, batch, 1.0)
            loss = losses.sft_loss(logps, batch.target_mask, step_tokens)
            self._backward(weight * loss)
            nll_sum += float(-(logps.detach() * batch.target_mask).sum())
            entropy_sum += float((entropy.detach() * batch.target_mask).sum())
        tokens = sum(len(d) for d in demos)
        return {"sft/loss": nll_sum / tokens, "sft/entropy": entropy_sum / tokens,
                "sft/mean_length": tokens / len(demos)}

    def generate(self, examples: list[Example], num_generations: int, greedy: bool = False):
        cfg = self.config
        texts = [render_prompt(self.tokenizer, e.prompt) for e in examples]
        with self.accelerator.autocast():
            return generate_completions(
                self.policy, self.tokenizer, texts, num_generations=num_generations,
                max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                batch_size=cfg.generation_batch_size, max_prompt_length=cfg.max_prompt_length, greedy=greedy)

    def score(self, examples: list[Example], texts: list[str], repeat: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Rewards of completions (prompt i's `repeat` samples contiguous), TRL reward signature."""
        prompts = [e.prompt for e in examples for _ in range(repeat)]
        rewards, metrics = score_completions(self.reward_fns, prompts, texts, reward_columns(examples, repeat),
                                             self.reward_weights)
        return torch.nan_to_num(rewards, nan=0.0), metrics

    def grpo_backward(self, examples: list[Example], weight: float = 1.0) -> dict[str, float]:
        """Roll out G completions per prompt, score, group advantages, accumulate weight · GRPO loss."""
        cfg = self.config
        G = cfg.num_generations
        t0 = time.perf_counter()
        completions = self.generate(examples, G)
        t_gen = time.perf_counter() - t0
        rewards, reward_metrics = self.score(examples, completions.texts, G)
        advantages, group_std = self._advantages(rewards)
        t_score = time.perf_counter() - t0 - t_gen

        lengths = torch.tensor([len(c) for c in completions.completion_ids], dtype=torch.float32)
        truncated = torch.tensor(completions.truncated)
        counted = [0 if (cfg.mask_truncated_completions and tr) else len(c)
                   for c, tr in zip(completions.completion_ids, completions.truncated)]
        step_tokens = self._global_sum(sum(counted))
        step_sequences = self._global_sum(len(counted))
        sums = {"entropy": 0.0, "kl": 0.0, "low_clipped": 0.0, "high_clipped": 0.0}
        loss_total = 0.0
        for rows in self._micro_batches(len(counted)):
            batch = pack([completions.prompt_ids[i] for i in rows], [completions.completion_ids[i] for i in rows],
                         self.pad_id, self.accelerator.device)
            mask = batch.target_mask
            if cfg.mask_truncated_completions:
                mask = mask * (~truncated[list(rows)]).float().unsqueeze(1).to(mask.device)
            logps, entropy = target_logprobs(self.model, batch, cfg.temperature)
            ref_logps = None
            if cfg.beta > 0:
                with torch.no_grad():
                    ref_logps, _ = target_logprobs(self.reference, batch, cfg.temperature, with_entropy=False)
            # One policy update per generation batch (TRL num_iterations=1): π_old = π_θ, detached.
            token_loss, stats = losses.grpo_token_loss(
                logps, logps.detach(), advantages[list(rows)].to(logps.device), cfg.epsilon, cfg.epsilon_high,
                ref_logps, cfg.beta)
            loss = losses.reduce_token_loss(token_loss, mask, cfg.loss_type, step_sequences, step_tokens,
                                            cfg.max_completion_length)
            self._backward(weight * loss)
            loss_total += float(loss.detach())
            real = batch.target_mask
            sums["entropy"] += float((entropy.detach() * real).sum())
            for key in ("kl", "low_clipped", "high_clipped"):
                if key in stats:
                    sums[key] += float((stats[key] * real).sum())
        n_tokens = max(1.0, float(lengths.sum()))
        terminated = lengths[~truncated]
        metrics = {
            "grpo/loss": loss_total,
            "reward": float(rewards.mean()),
            "reward_std": float(group_std.mean()),
            "frac_reward_zero_std": float((group_std < 1e-6).float().mean()),
            "completions/mean_length": float(lengths.mean()),
            "completions/min_length": float(lengths.min()),
            "completions/max_length": float(lengths.max()),
            "completions/clipped_ratio": float(truncated.float().mean()),
            "completions/mean_terminated_length": float(terminated.mean()) if len(terminated) else 0.0,
            "entropy": sums["entropy"] / n_tokens,
            "clip_ratio/low_mean": sums["low_clipped"] / n_tokens,
            "clip_ratio/high_mean": sums["high_clipped"] / n_tokens,
            "clip_ratio/region_mean": (sums["low_clipped"] + sums["high_clipped"]) / n_tokens,
            "time/generate": t_gen,
            "time/score": t_score,
            "time/backward": time.perf_counter() - t0 - t_gen - t_score,
        }
        if cfg.beta > 0:
            metrics["kl"] = sums["kl"] / n_tokens
        metrics.update(reward_metrics)
        return metrics

    def _advantages(self, rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Group advantages; with several processes, batch-std scaling uses every rank's rewards."""
        cfg = self.config
        if self.world == 1 or cfg.scale_rewards != "batch":
            return losses.group_advantages(rewards, cfg.num_generations, cfg.scale_rewards)
        everyone = self.accelerator.gather(rewards.to(self.accelerator.device)).cpu()
        advantages, group_std = losses.group_advantages(everyone, cfg.num_generations, "batch")
        start = self.accelerator.process_index * len(rewards)
        groups = len(rewards) // cfg.num_generations
        return advantages[start:start + len(rewards)], group_std[start // cfg.num_generations:][:groups]

    # ------------------------------------------------------------------ the loop
    def optimizer_step(self) -> float:
        """Average gradients over ranks, clip the global norm, step; returns the norm before clipping."""
        if self.world > 1:
            for p in self.model.parameters():
                if p.grad is not None:
                    torch.distributed.all_reduce(p.grad)
                    p.grad /= self.world
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm > 0 else float("inf")
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def evaluate(self) -> dict[str, float]:
        if not self.eval_examples:
            return {}
        with self.accelerator.autocast():
            result = evaluate_accuracy(self.policy, self.tokenizer, self.eval_examples, self.reward_fns,
                                       max_new_tokens=self.config.max_completion_length,
                                       batch_size=self.config.eval_batch_size)
        return {"eval/accuracy": result["accuracy"], "eval/mean_length": result["mean_length"]}

    def train(self) -> dict[str, Any]:
        cfg = self.config
        main = self.accelerator.is_main_process
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume:
            self._resume()
        elif (self.run_dir / "metrics.jsonl").exists() or (self.run_dir / "checkpoints").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; pass resume=true to continue it, "
                                  f"or choose another output_dir")
        if main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        summary: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "eval_before": self._logged_eval(0)}
        if self.step == 0:
            summary["eval_before"] = self.evaluate()
            if summary["eval_before"]:
                self._log({"step": 0, **summary["eval_before"]})
                self._print(f"accuracy before training: {summary['eval_before']['eval/accuracy']:.1%} "
                            f"on {len(self.eval_examples)} eval prompts")
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc=f"{cfg.method}", disable=not (cfg.progress and main),
                   dynamic_ncols=True)
        start = time.perf_counter()
        while self.step < cfg.max_steps:
            t0 = time.perf_counter()
            indices = self.sampler.next_batch()[self.accelerator.process_index::self.world]
            examples = [self.train_examples[i] for i in indices]
            self.model.train()
            metrics = self.method.step(self, self.method_state, examples)
            t_opt = time.perf_counter()
            metrics["grad_norm"] = self.optimizer_step()
            metrics["time/optimizer"] = time.perf_counter() - t_opt
            metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
            metrics.setdefault("loss", metrics.get("sft/loss", 0.0) + metrics.get("grpo/loss", 0.0))
            self.step += 1
            metrics["epoch"] = self.step * cfg.batch_size / len(self.train_examples)
            metrics["time/step"] = time.perf_counter() - t0
            if cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps:
                metrics.update(self.evaluate())
            if self.step % cfg.logging_steps == 0:
                self._log({"step": self.step, **metrics})
            bar.set_postfix({short: f"{metrics[k]:.3g}" for k, short in BAR_METRICS.items() if k in metrics})
            bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.save_checkpoint()
        bar.close()
        summary["train_seconds"] = time.perf_counter() - start
        summary["eval_after"] = self.evaluate()
        if summary["eval_after"]:
            self._log({"step": self.step, **summary["eval_after"]})
        self.save_final()
        if main:
            (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            if summary["eval_after"]:
                before = summary.get("eval_before", {}).get("eval/accuracy")
                after = summary["eval_after"]["eval/accuracy"]
                self._print((f"accuracy before training: {before:.1%}\n" if before is not None else "")
                            + f"accuracy after training:  {after:.1%} ({cfg.method}, {self.step} steps, "
                            f"{summary['train_seconds']:.0f} s)")
            self._print(f"model saved to {self.run_dir / 'model'}")
        return summary

    # ------------------------------------------------------------------ logging and checkpoints
    def _print(self, text: str) -> None:
        if self.accelerator.is_main_process:
            tqdm.write(text)

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def _logged_eval(self, step: int) -> dict[str, float]:
        """Evaluation metrics already in metrics.jsonl for `step` (a resumed run does not repeat them)."""
        path = self.run_dir / "metrics.jsonl"
        records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
        return {k: v for r in records if r["step"] == step for k, v in r.items() if k.startswith("eval/")}

    def _trainer_state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "method_state": self.method_state,
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }

    def save_checkpoint(self) -> Path:
        """checkpoints/step-NNNNNN with model, tokenizer and trainer state, written to a temporary
        directory and renamed into place, so a crash never leaves a half-written checkpoint."""
        root = self.run_dir / "checkpoints"
        final = root / f"step-{self.step:06d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp = root / f".tmp-step-{self.step:06d}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            self.policy.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            torch.save(self._trainer_state(), tmp / "trainer_state.pt")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
            for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-self.config.save_total_limit]:
                shutil.rmtree(old)
        self.accelerator.wait_for_everyone()
        return final

    def save_final(self) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp, final = self.run_dir / ".tmp-model", self.run_dir / "model"
            shutil.rmtree(tmp, ignore_errors=True)
            self.policy.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)

    def _resume(self) -> None:
        checkpoints = sorted(p for p in (self.run_dir / "checkpoints").glob("step-*") if p.is_dir())
        if not checkpoints:
            raise FileNotFoundError(f"resume=true but {self.run_dir / 'checkpoints'} holds no checkpoint")
        latest = checkpoints[-1]
        state = torch.load(latest / "trainer_state.pt", map_location="cpu", weights_only=False)
        weights = load_model(str(latest), self.config.dtype, self.config.trust_remote_code).state_dict()
        self.policy.load_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.method_state = state["method_state"]
        self.step = state["step"]
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.exists() and self.accelerator.is_main_process:
            # Drop records past the checkpoint: those steps run again and are logged again.
            kept = [line for line in metrics.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= self.step]
            metrics.write_text("".join(line + "\n" for line in kept))
        self._print(f"resumed from {latest} at step {self.step}")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(config: Config) -> dict[str, Any]:
    """Build a Trainer from `config` and run it; returns the run summary."""
    return Trainer(config).train()
