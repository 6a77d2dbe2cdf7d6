"""The one training loop, shared by every method.

Each optimizer step: the method plans the step's kind -> draw `batch_size` prompts (or `sft_batch_size`
demonstrations) -> the method runs its backward passes through the primitives of
`methods.base.StepContext` -> `loss` = the sum of what was back-propagated -> global gradient norm,
clipping, AdamW step at the method's rate -> the method's after_step -> metrics.jsonl (TRL's metric
names) -> periodic evaluation and atomic checkpoints.
A step whose loss or gradient is not finite is skipped (no update, counted in `skipped_steps`);
`max_nonfinite_steps` of them in a row stop the run with the last good checkpoint kept.
Runs on `accelerate` (single process, or `accelerate launch` / `torchrun` for DDP, FSDP or DeepSpeed
data parallelism): the step's rows are sharded global[rank::world], and :mod:`sftrl.parallel` averages
the gradients once per update in one synchronised backward that every process runs, so processes whose
rows decided differently stay in step.
Its parts: build (the policy, reference, optimizers, engine; kl_from_base's base log-probs), rows,
experience (rollouts), terms (the SFT and policy-gradient terms' accumulation), rewards.scorer, parallel,
checkpoint and runlog.
"""

from __future__ import annotations

import functools
import json
import math
import time
from collections.abc import Callable
from typing import Any

import torch
import yaml

from . import build, checkpoint, experience, hub, runlog
from .config import Config
from .data import Example, render_prompt
from .errors import RunError
from .evaluate import evaluate_accuracy, kl_from_base
from .formatting import number
from .methods import METHODS, Placement, StepKind
from .methods.base import Observer, Rollouts, SFTTokenLoss, TokenLoss, grpo_loss
from .models import import_peft, load_frozen, load_model, load_tokenizer, resolve_model_path
from .parallel import Parallel
from .rewards.scorer import Scorer, trainer_state
from .rows import Rows, kept_rows, load_rows
from .terms import Terms
from .rollout import Completions, generate_completions
from .validate import check_processes

EVAL_SEED_OFFSET = 7919  # evaluation samples draw from torch seeded with this + the run's seed


class Trainer:
    """Sets up model, data, rewards and optimizer from a Config, then runs `train()`."""

    def __init__(self, config: Config):
        self.config = config
        self.method = METHODS[config.method]
        self.run_dir = config.run_dir
        self.accelerator = build.make_accelerator(config)
        self.world = self.accelerator.num_processes
        self.logger = runlog.RunLogger(self.run_dir, self.accelerator)
        self.parallel = Parallel(self.accelerator)
        self.collective = self.parallel.collective
        plugin = self.accelerator.state.deepspeed_plugin if self.parallel.backend == "deepspeed" else None
        check_processes(config, self.world, self.parallel.backend,
                        deepspeed_config=plugin.deepspeed_config if plugin is not None else None)
        # What the run directory allows (finished, other settings, resume): decided before anything loads.
        self.plan = checkpoint.plan_run(config)
        build.seed_everything(config.seed)

        # Data first: a bad row fails here, before any model is loaded.
        needs_demo = self.method.needs_demonstrations
        examples, self.eval_examples = load_rows(config, needs_demo)
        self.scorer = Scorer(config)

        model_path = resolve_model_path(config.model)
        self.tokenizer = load_tokenizer(config.tokenizer or model_path, config.trust_remote_code)
        self.eos_id = self.tokenizer.eos_token_id
        self.pad_id = self.tokenizer.pad_token_id
        self.demo_report: dict[str, Any] = {}
        if needs_demo:
            examples, self.demo_report = kept_rows(examples, self.tokenizer, config, self.logger.print)
        self.rows = Rows(examples, self.tokenizer, config, self.collective)
        parts = build.make_parts(config, self.method, model_path, self.accelerator, self.parallel)
        self.model, self.optimizer = parts.model, parts.optimizer
        self.reference_step: int | None = None  # set when the reference is a snapshot taken during training
        self._replica, self._replica_updates = parts.replica, -1
        self._idle_token = self.pad_id if self.pad_id is not None else self.eos_id
        self.terms = Terms(config, self.model, parts.train_module, parts.reference, self.parallel, self.rows,
                           self.pad_id, self._idle_token, self.accelerator.device)
        self.rollout_engine = parts.rollout_engine
        self.extra_optimizer, self.extra_max_grad_norm = parts.extra_optimizer, parts.extra_max_grad_norm
        self.method_state: dict[str, Any] = self.method.init_state(config, len(examples))
        self.total_steps = self.method.total_steps(config, self.method_state)
        # Token passes (this process's, since the step began): generated tokens here, and the training
        # forwards' in self.terms.
        self._step_generated_tokens = 0
        self.total_token_passes = 0  # every process's, over the run (checkpointed)
        self.total_train_sequences = 0
        self._last_step_finite = True
        self.step = 0
        self.skipped_steps = 0  # steps skipped for a non-finite loss or gradient, in all
        self.nonfinite_in_a_row = 0
        self.warned_unscorable = False
        self._frozen_models: dict[str, Any] = {}  # teachers loaded by frozen_model, once per run
        # RL's Razor: the base's log-probs on held-out demonstrations, for kl_from_base at each evaluation
        # (collective under FSDP and ZeRO-3: whole_policy).
        self.kl_base = build.kl_base(config, self.whole_policy, self.tokenizer, self.eval_examples, self.accelerator)

    # ------------------------------------------------------------------ primitives for methods
    @property
    def policy(self):
        return self.accelerator.unwrap_model(self.model)

    @property
    def reference(self):
        """π_ref: None, a frozen model, or the LoRA policy with its adapters off (Terms.reference)."""
        return self.terms.reference

    def prompt_ids(self, example: Example) -> list[int]:
        return self.rows.prompt_ids(example)

    def global_sum(self, value: float) -> float:
        """`value` summed over every process (collective: every process must call it)."""
        return self.collective.sum(value)

    def global_sums(self, values: list[float]) -> list[float]:
        """Each value summed over every process, in one all-reduce (collective)."""
        return self.collective.sums(values)

    def gather_rows(self, values: list) -> list:
        """Every process's per-row values of a list sharded as global[rank::world] (the step's prompts,
        drawn demonstrations), put back in the global order; collective."""
        return self.collective.gather_rows(values)

    def local_rows(self, values: list) -> list:
        """This process's share of a global per-row list: values[rank::world], as the step's prompts are sharded."""
        return self.collective.local_rows(values)

    def draw_demonstrations(self, count: int) -> list[Example]:
        """This process's share of `count` training rows drawn for their demonstrations from a sampler of
        their own (seeded, checkpointed), independent of the step's prompts (CHORD's expert rows)."""
        return self.rows.draw_demonstrations(count)

    def example_position(self, example: Example) -> int:
        """The example's position in the training set (what train_example takes back; ReLIFT's buffer)."""
        return self.rows.position(example)

    def train_example(self, position: int) -> Example:
        return self.rows.examples[position]

    def take_loss(self) -> float:
        """The loss back-propagated since the last call, summed over processes (each process's share is
        normalised by whole-step counts, so the sum is the step's loss); collective."""
        value, self.terms.loss = self.terms.loss, 0.0
        return self.collective.sum(value)

    def whole_policy(self):
        """The policy with all its weights on this process, for generation, evaluation and saving: the
        policy itself, or under FSDP / ZeRO-3 a local copy refreshed from the shards after each update
        (collective there: every process calls it at the same points)."""
        if self._replica is None:
            return self.policy
        if self._replica_updates != self.parallel.updates:
            self._replica.load_state_dict(self.parallel.full_state_dict(self.model, self.policy))
            self._replica_updates = self.parallel.updates
        return self._replica

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a piece of target text, no special tokens (UFT's hints)."""
        return self.rows.text_ids(text)

    def demonstration_ids(self, example: Example) -> tuple[list[int], bool]:
        return self.rows.demonstration_ids(example)

    def context_ids(self, prompt: str | list[dict]) -> list[int]:
        return self.rows.context_ids(prompt)

    def frozen_model(self, name: str, what: str):
        """A frozen model (a teacher) loaded as the policy is (models.load_frozen: a local directory or hub id,
        the run's dtype; its tokenizer must have the policy's vocabulary), on this process's device, loaded
        once per run; `what` names the config field in errors."""
        if name not in self._frozen_models:
            cfg = self.config
            self._frozen_models[name] = load_frozen(name, what, self.tokenizer, cfg.dtype,
                                                    cfg.trust_remote_code).to(self.accelerator.device)
        return self._frozen_models[name]

    def score_rows(self, prompt_ids: list[list[int]], target_ids: list[list[int]], model=None,
                   temperature: float = 1.0) -> list[torch.Tensor]:
        """Terms.score_rows under `model` (None: the current policy). Collective under FSDP and ZeRO-3 when
        model is None (whole_policy)."""
        model = self.whole_policy() if model is None else model
        with self.accelerator.autocast():
            return self.terms.score_rows(prompt_ids, target_ids, model, temperature)

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (Prefix-RFT's demonstration prefix)."""
        text = self.tokenizer.decode(ids)
        assert isinstance(text, str)  # one sequence of ids decodes to one text
        return text

    def sft_backward(self, examples: list[Example], weight: float = 1.0,
                     token_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     kl_coef: float = 0.0, targets: list[list[int]] | None = None, entropy_coef: float = 0.0,
                     observe: Observer | None = None, temperature: float = 1.0,
                     entropy_tokens: int | None = None, token_loss: SFTTokenLoss | None = None) -> dict[str, float]:
        """The SFT term (Terms.sft)."""
        return self.terms.sft(examples, weight, token_weights, kl_coef, targets, entropy_coef, observe, temperature,
                              entropy_tokens, token_loss)

    def generate(self, examples: list[Example], num_generations: int, greedy: bool = False,
                 continuations: list[str] | None = None) -> Completions:
        """Sample completions; `continuations` (one text per example) are appended to the rendered
        prompts, so the samples continue them (UFT's hints)."""
        cfg = self.config
        texts = [render_prompt(self.tokenizer, e.prompt, cfg.chat_template_kwargs) for e in examples]
        if continuations is not None:
            texts = [text + extra for text, extra in zip(texts, continuations)]
        with self.accelerator.autocast():
            completions = generate_completions(
                self.whole_policy(), self.tokenizer, texts, num_generations=num_generations,
                max_new_tokens=cfg.max_completion_length, temperature=cfg.temperature, top_p=cfg.top_p,
                batch_size=cfg.generation_batch_size, max_prompt_length=cfg.max_prompt_length, greedy=greedy,
                min_new_tokens=cfg.min_completion_length, engine=self.rollout_engine)
        self._step_generated_tokens += sum(len(ids) for ids in completions.completion_ids)
        return completions

    def rollouts(self, examples: list[Example], placement: Placement = Placement.NONE,
                 hints: list[str] | None = None) -> Rollouts:
        """Sample, place demonstrations in the groups, score, and compute group advantages
        (:func:`sftrl.experience.collect`; `placement` as in :func:`sftrl.experience.sample_groups`)."""
        cfg = self.config
        rollouts = experience.collect(
            examples, Placement(placement), hints, config=cfg, std_eps=self.method.std_eps(cfg),
            generate=lambda rows, n, hints: self.generate(rows, n, continuations=hints), rows=self.rows,
            scorer=self.scorer, collective=self.collective, trainer_state=self._reward_trainer_state())
        warning = experience.unscorable_warning(rollouts.rewards, rollouts.is_demo, self.step + 1)
        if warning is not None and not self.warned_unscorable:
            self.warned_unscorable = True
            self.logger.print(warning)
        return rollouts

    def score(self, examples: list[Example], texts: list[str], target_ids: list[list[int]], group_size: int,
              is_demo: list[bool]) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Each reward function's rewards, (N, F), NaN for None, and what they logged with log_metric, by name
        (Scorer.score, called as TRL calls them; row i belongs to examples[i // group_size]). Not collective:
        for targets sampled outside `rollouts` (uft's Prefix-RFT schedule)."""
        return self.scorer.score(examples, texts, target_ids, group_size, is_demo, self._reward_trainer_state())

    def _reward_trainer_state(self):
        return trainer_state(self.config, self.step, self.total_steps, self.rows.sampler.epochs_done)

    def policy_backward(self, rollouts: Rollouts, token_loss: TokenLoss, weight: float = 1.0,
                        observe: Observer | None = None, entropy_tokens: int | None = None,
                        entropy_coef: float | None = None) -> dict[str, float]:
        """A policy-gradient term over rollouts and demonstrations (Terms.policy)."""
        return self.terms.policy(rollouts, token_loss, weight, observe, entropy_tokens, entropy_coef)

    def grpo_backward(self, examples: list[Example], weight: float = 1.0) -> dict[str, float]:
        """Roll out G completions per prompt, score, group advantages, accumulate weight · GRPO loss."""
        return self.policy_backward(self.rollouts(examples), grpo_loss(self.config), weight)

    def snapshot_reference(self) -> None:
        """Make the current policy the frozen reference (SASR after warm-up; the end of RL in RL→SFT_KL).
        Checkpoints then carry its weights, so a resumed run measures against the same model."""
        if self.config.use_peft:  # validate.check_config refuses such configs before training
            raise RuntimeError("snapshot_reference: a LoRA run's reference is its base model")
        self.terms.reference = build.frozen(self.whole_policy(), self.accelerator.device)
        self.reference_step = self.step

    # ------------------------------------------------------------------ the loop
    def step_learning_rate(self, kind: StepKind) -> float:
        """This step's learning rate, as the method says (by default sft_learning_rate for an SFT step,
        learning_rate for a step with a policy-gradient term, times the run's schedule)."""
        return self.method.learning_rate(self.config, self.step, kind, self.method_state)

    def _update(self, optimizer, learning_rate: float, max_grad_norm: float, loss: float | None = None,
                skip_above: float = 0.0) -> tuple[float, bool, bool]:
        """The one update of both optimizers: average the step's gradients over processes (one
        synchronised backward on every process, sftrl.parallel), clip their global norm at max_grad_norm,
        and step `optimizer` at `learning_rate` unless the norm (or the loss summed over processes, when
        given) is not finite or the norm is above skip_above (when set); the gradients are zeroed either
        way. Returns the norm before clipping, whether it (and the loss) was finite, and whether the
        update was made. Collective."""
        self.parallel.sync(self.model, self._idle_token)
        max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        grad_norm = float(self.accelerator.clip_grad_norm_(self.model.parameters(), max_norm))
        finite = math.isfinite(grad_norm) and (loss is None or math.isfinite(self.collective.sum(loss)))
        taken = finite and not (skip_above > 0 and grad_norm > skip_above)
        if taken:
            for group in optimizer.param_groups:
                group["lr"] = learning_rate
            optimizer.step()
            self.parallel.updates += 1
        optimizer.zero_grad(set_to_none=True)
        self.optimizer.zero_grad(set_to_none=True)  # both optimizers hold the policy's parameters
        return grad_norm, finite, taken

    def optimizer_step(self, learning_rate: float, loss: float = 0.0) -> tuple[float, bool]:
        """Update the policy with the run's optimizer (see _update); returns the norm before clipping
        and whether the step was taken. A non-finite loss (on any rank) or gradient norm skips it, as
        does a norm above `skip_update_grad_norm` when that is set: neither the weights nor AdamW's
        moments change. Under DeepSpeed the engine clips and steps (validate refuses
        skip_update_grad_norm there), and only a non-finite loss skips."""
        if self.parallel.backend == "deepspeed":
            finite = math.isfinite(self.collective.sum(loss))
            self.parallel.sync(self.model, self._idle_token)
            grad_norm = self.parallel.deepspeed_step(self.model, self.optimizer, learning_rate, finite)
            self.parallel.updates += finite
            self._last_step_finite = finite
            return grad_norm, finite
        grad_norm, self._last_step_finite, taken = self._update(
            self.optimizer, learning_rate, self.config.max_grad_norm, loss, self.config.skip_update_grad_norm)
        return grad_norm, taken

    def extra_optimizer_step(self, learning_rate: float) -> tuple[float, bool]:
        """Step the method's own optimizer (Method.extra_optimizer) on the gradients accumulated since the
        last update, clipped at its own max_grad_norm (see _update); returns the norm before clipping and
        whether the update was made (a non-finite norm makes none). Collective."""
        if self.extra_optimizer is None:
            raise RuntimeError(f"method {self.config.method} declares no extra optimizer")
        grad_norm, _, taken = self._update(self.extra_optimizer, learning_rate, self.extra_max_grad_norm)
        return grad_norm, taken

    def reset_optimizer_state(self) -> None:
        """Forget AdamW's moments and step counts, as a new training job would start (SFT→RL's RL stage)."""
        self.optimizer.state.clear()

    def _parameters_finite(self) -> bool:
        norms = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in self.whole_policy().parameters()])
        return bool(torch.isfinite(norms).all())

    def budget_spent(self) -> bool:
        """Whether max_token_passes or max_train_sequences is set and the run has reached it."""
        cfg = self.config
        return (0 < cfg.max_token_passes <= self.total_token_passes
                or 0 < cfg.max_train_sequences <= self.total_train_sequences)

    def evaluate(self) -> dict[str, float]:
        """Greedy accuracy (`eval/accuracy`) and, with eval_samples, the mean accuracy of that many samples
        per prompt at eval_temperature (`eval/sampled_accuracy`, avg@k: the headline)."""
        cfg = self.config
        if not self.eval_examples:
            return {}
        run = functools.partial(evaluate_accuracy, self.whole_policy(), self.tokenizer, self.eval_examples,
                                cfg.eval_reward, max_new_tokens=cfg.max_completion_length,
                                batch_size=cfg.eval_batch_size, engine=self.rollout_engine,
                                chat_template_kwargs=cfg.chat_template_kwargs)
        with self.accelerator.autocast():
            result = run()
            metrics = {"eval/accuracy": result["accuracy"], "eval/mean_length": result["mean_length"],
                       **{f"eval/accuracy/{source}": value for source, value in result["by_source"].items()}}
            if cfg.eval_samples:
                # A generator of its own, the same at every evaluation: training's random draws are untouched.
                devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
                with torch.random.fork_rng(devices=devices):
                    torch.manual_seed(EVAL_SEED_OFFSET + cfg.seed)
                    sampled = run(temperature=cfg.eval_temperature, num_samples=cfg.eval_samples)
                metrics.update({"eval/sampled_accuracy": sampled["accuracy"],
                                **{f"eval/sampled_accuracy/{source}": value
                                   for source, value in sampled["by_source"].items()}})
            if self.kl_base is not None:
                metrics["kl_from_base"] = kl_from_base(self.whole_policy(), self.tokenizer, self.kl_base)
        return metrics

    def _accuracy_text(self, metrics: dict[str, float]) -> str:
        return runlog.accuracy_text(metrics, self.config.eval_samples, self.config.eval_temperature)

    def _start(self) -> None:
        """Set up the run directory as planned: resume from a checkpoint, or start (again)."""
        main = self.accelerator.is_main_process
        if main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self.plan.restart:
                self.logger.print(f"{self.run_dir} holds a run with these settings that stopped before its first "
                                  "checkpoint: starting it again from step 0")
                self.logger.clear()
        self.collective.barrier()
        if self.plan.checkpoints:
            self._resume(self.plan.checkpoints)
        if main:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.logger.start_trackers(self.config.to_dict())

    def train(self) -> dict[str, Any]:
        try:
            return self._train()
        finally:
            self.logger.close()

    def _train(self) -> dict[str, Any]:
        cfg = self.config
        main = self.accelerator.is_main_process
        self._start()
        summary: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "eval_before": self.logger.logged_eval(0)}
        if self.demo_report:
            summary["demonstrations"] = self.demo_report
        if self.step == 0:
            summary["eval_before"] = self.evaluate()
            if summary["eval_before"]:
                self.logger.log({"step": 0, **summary["eval_before"]})
                self.logger.print(f"accuracy before training: {self._accuracy_text(summary['eval_before'])} "
                                  f"on {len(self.eval_examples)} eval prompts")
        self.logger.open_bar(self.total_steps, cfg.method, enabled=cfg.progress, initial=self.step)
        start = time.perf_counter()
        try:
            while self.step < self.total_steps and not self.budget_spent():
                self._train_step()
        finally:
            self.logger.close_bar()
        summary["train_seconds"] = time.perf_counter() - start
        summary["skipped_steps"] = self.skipped_steps
        summary["steps"] = self.step
        summary["total_token_passes"] = self.total_token_passes
        summary["total_train_sequences"] = self.total_train_sequences
        summary["eval_after"] = self.evaluate()
        if summary["eval_after"]:
            self.logger.log({"step": self.step, **summary["eval_after"]})
        self.save_final()
        if main:
            (self.run_dir / "summary.json").write_text(json.dumps(runlog.finite_or_none(summary), indent=2))
            if summary["eval_after"]:
                before = summary.get("eval_before") or {}
                self.logger.print((f"accuracy before training: {self._accuracy_text(before)}\n" if before else "")
                                  + f"accuracy after training:  {self._accuracy_text(summary['eval_after'])} "
                                  f"({cfg.method}, {self.step} steps, {number(summary['train_seconds'], '.0f')} s)")
            self.logger.print(f"model saved to {self.run_dir / 'model'}"
                              + (f" (LoRA adapter; merged model in {self.run_dir / 'model-merged'})"
                                 if cfg.use_peft and cfg.merge_lora_on_save else " (LoRA adapter)" if cfg.use_peft else ""))
            if cfg.push_to_hub:
                folder = self.run_dir / ("model-merged" if cfg.use_peft and cfg.merge_lora_on_save else "model")
                url = hub.push_model(folder, cfg.hub_model_id or self.run_dir.name,
                                     f"sftrl {cfg.method}, {self.step} steps")
                self.logger.print(f"pushed {folder} to {url}")
        return summary

    def _train_step(self) -> None:
        """One optimizer step: the method's backward passes, the update (or a skip), logging, checkpoints."""
        cfg = self.config
        t0 = time.perf_counter()
        kind = self.method.plan(cfg, self.step, self.method_state)
        size = cfg.sft_batch if kind is StepKind.SFT else cfg.batch_size
        examples = self.rows.step_rows(size)
        self.model.train()
        self.terms.loss = 0.0
        self.terms.token_passes = self.terms.sequences = self._step_generated_tokens = 0
        metrics = self.method.step(self, self.method_state, examples, kind)
        # The loss logged is the loss optimised: the sum of everything the step back-propagated, with
        # the weights the method gave each term (SRFT's w_SFT, a weighted mixture's μ, ...).
        metrics["loss"] = self.take_loss()
        t_opt = time.perf_counter()
        metrics["learning_rate"] = self.step_learning_rate(kind)
        metrics["grad_norm"], stepped = self.optimizer_step(metrics["learning_rate"], metrics["loss"])
        finite = self._last_step_finite
        self.skipped_steps += not stepped
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        metrics["skipped_steps"] = self.skipped_steps
        metrics["time/optimizer"] = time.perf_counter() - t_opt
        self.step += 1
        if not finite:
            self.logger.print(f"warning: step {self.step} skipped: its loss or gradient norm is not finite (loss "
                              f"{number(metrics['loss'], '.4g')}, grad_norm {number(metrics['grad_norm'], '.4g')}); "
                              "no update was made")
        elif not stepped:
            self.logger.print(f"warning: step {self.step} skipped: its gradient norm {number(metrics['grad_norm'], '.4g')} "
                              f"is above skip_update_grad_norm={number(cfg.skip_update_grad_norm, 'g')}; "
                              "no update was made")
        # e.g. SASR reads this step's gradient norm; ReLIFT takes its SFT update
        self.method.after_step(self, self.method_state, metrics)
        # What the step cost (ReLIFT's SFT update included), for budgets in tokens or sequences.
        tokens, sequences = self.collective.sums([self._step_generated_tokens + self.terms.token_passes,
                                                  self.terms.sequences])
        metrics["token_passes"], metrics["train_sequences"] = int(tokens), int(sequences)
        self.total_token_passes += int(tokens)
        self.total_train_sequences += int(sequences)
        metrics["total_token_passes"] = self.total_token_passes
        metrics["total_train_sequences"] = self.total_train_sequences
        metrics["step_type"] = "+".join(name for name in ("sft", "grpo") if f"{name}/loss" in metrics)
        metrics["epoch"] = self.rows.sampler.epochs_done
        metrics["time/step"] = time.perf_counter() - t0
        last = self.step >= self.total_steps or self.budget_spent()  # the final evaluation and save follow
        if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
            metrics.update(self.evaluate())
        if self.step % cfg.logging_steps == 0 or not stepped:
            self.logger.log({"step": self.step, **metrics})
        if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            kept = checkpoint.checkpoint_dirs(self.run_dir)
            raise RunError(f"stopped at step {self.step}: {self.nonfinite_in_a_row} steps in a row had a non-finite "
                           f"loss or gradient (max_nonfinite_steps={cfg.max_nonfinite_steps}); no model was written, "
                           f"the last good checkpoint is {kept[-1] if kept else 'none'}. Lower learning_rate, or check "
                           "the data and reward functions")
        self.logger.advance(metrics)
        if cfg.save_every and self.step % cfg.save_every == 0 and not last:
            self.save_checkpoint()

    # ------------------------------------------------------------------ logging and checkpoints
    def run_state(self) -> checkpoint.RunState:
        """What a checkpoint holds besides the weights (collective under FSDP: the optimizer's shards)."""
        return checkpoint.RunState(
            **{name: getattr(self, name) for name in checkpoint.RunState.COUNTERS},
            optimizer=self.parallel.optimizer_state(self.model, self.optimizer),
            sampler=self.rows.sampler.state_dict(), demo_sampler=self.rows.demo_sampler.state_dict(),
            extra_optimizer=self.extra_optimizer.state_dict() if self.extra_optimizer is not None else None,
            method_state=self.method_state, rng=checkpoint.capture_rng())

    def restore(self, state: checkpoint.RunState) -> None:
        """Continue from `state` (the weights are loaded apart): optimizers, samplers, method state,
        counters, and last the random generators."""
        self.parallel.load_optimizer_state(self.model, self.optimizer, state.optimizer)
        self.parallel.updates += 1  # the weights changed: whole_policy refreshes its copy
        self.rows.sampler.load_state_dict(state.sampler)
        if state.demo_sampler is not None:
            self.rows.demo_sampler.load_state_dict(state.demo_sampler)
        if self.extra_optimizer is not None:
            if state.extra_optimizer is None:
                raise RunError(f"the checkpoint at step {state.step} holds no state of {self.config.method}'s "
                               "extra optimizer, so it cannot be resumed as this method")
            self.extra_optimizer.load_state_dict(state.extra_optimizer)
        self.method_state = state.method_state
        self.total_steps = self.method.total_steps(self.config, self.method_state)
        for name in checkpoint.RunState.COUNTERS:
            setattr(self, name, getattr(state, name))
        checkpoint.restore_rng(state.rng)

    def _refuse_nonfinite_weights(self, what: str) -> None:
        if not self._parameters_finite():
            kept = checkpoint.checkpoint_dirs(self.run_dir)
            raise RunError(f"not writing {what} at step {self.step}: the model's weights are not finite (NaN or "
                           f"inf); the last good checkpoint is {kept[-1] if kept else 'none'}. Lower learning_rate")

    def save_checkpoint(self):
        """checkpoints/step-NNNNNN (see :mod:`sftrl.checkpoint`), written by the main process; never
        with non-finite weights, so the older checkpoints it would rotate out stay."""
        self._refuse_nonfinite_weights("a checkpoint")
        self.collective.barrier()
        path = self.run_dir / "checkpoints" / f"step-{self.step:06d}"
        state = self.run_state()  # collective under FSDP (the optimizer's shards), so on every process
        if self.accelerator.is_main_process:
            reference = self.reference if self.reference_step is not None else None
            path = checkpoint.save_checkpoint(self.run_dir, self.step, self.whole_policy(), self.tokenizer,
                                              state, reference, self.config.save_total_limit)
        self.collective.barrier()
        return path

    def save_final(self) -> None:
        self._refuse_nonfinite_weights("the final model")
        self.collective.barrier()
        if self.accelerator.is_main_process:
            checkpoint.save_model(self.run_dir, self.whole_policy(), self.tokenizer)  # a LoRA run: the adapter
            if self.config.use_peft and self.config.merge_lora_on_save:
                # In place (no second copy of the weights): the last thing a run does with its policy.
                merged = self.policy.merge_and_unload()
                checkpoint.save_model(self.run_dir, merged, self.tokenizer, name="model-merged")

    def _resume(self, checkpoints: list) -> None:
        """Continue from the newest checkpoint that loads (newest first in `checkpoints`); a damaged
        one is reported and the one before it is used."""
        cfg = self.config
        def model_at(path: str):
            return load_model(path, cfg.dtype, cfg.trust_remote_code)

        if cfg.use_peft:  # a checkpoint holds the adapter only
            peft = import_peft("resuming a use_peft run")
            weights_at = lambda path: peft.utils.load_peft_weights(path, device="cpu")  # noqa: E731
        else:
            weights_at = lambda path: model_at(path).state_dict()  # noqa: E731
        latest, (state, weights, reference) = checkpoint.load_newest_readable(checkpoints, weights_at, model_at,
                                                                             self.logger.print)
        if cfg.use_peft:
            peft.set_peft_model_state_dict(self.policy, weights)
        else:
            self.parallel.load_full_state_dict(self.model, self.policy, weights)
        if reference is not None:
            self.terms.reference = build.frozen(reference, self.accelerator.device)
        self.restore(state)
        self.logger.keep_until(self.step)
        self.logger.print(f"resumed from {latest} at step {self.step}")


def train(config: Config) -> dict[str, Any]:
    """Build a Trainer from `config` and run it; returns the run summary."""
    return Trainer(config).train()
