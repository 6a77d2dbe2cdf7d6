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
Its parts: build (the rows, the policy, reference, optimizers, engine; kl_from_base's base log-probs),
rows, experience (rollouts), terms (the SFT and policy-gradient terms' accumulation), rewards.scorer,
parallel (the collectives and the update), evaluator, checkpoint and runlog. The primitives a method may
call are declared and documented in methods.base.StepContext.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import yaml

from . import build, checkpoint, experience, hub, runlog
from .config import Config
from .data import Example
from .errors import RunError
from .evaluator import Evaluator
from .methods import METHODS, Placement, StepKind
from .methods.base import Observer, Rollouts, SFTTokenLoss, TokenLoss, grpo_loss
from .models import import_peft
from .parallel import Parallel
from .rewards.scorer import trainer_state
from .terms import Terms
from .rollout import Completions
from .validate import check_processes


class Trainer:
    """Sets up model, data, rewards and optimizer from a Config; `train()` runs the loop (`start`, then
    `train_step` until the run's length or budget, then the final evaluation and save)."""

    reference_step: int | None  # the step of the reference snapshot taken during training; None: none

    def __init__(self, config: Config):
        self.config = config
        self.method = METHODS[config.method]
        self.run_dir = config.run_dir
        self.accelerator = build.make_accelerator(config)
        self.logger = runlog.RunLogger(self.run_dir, self.accelerator)
        self.parallel = Parallel(self.accelerator)
        self.collective, self.world = self.parallel.collective, self.parallel.world
        plugin = self.accelerator.state.deepspeed_plugin if self.parallel.backend == "deepspeed" else None
        check_processes(config, self.parallel.world, self.parallel.backend,
                        deepspeed_config=plugin.deepspeed_config if plugin is not None else None)
        # What the run directory allows (finished, other settings, resume): decided before anything loads.
        self.plan = checkpoint.plan_run(config)
        self._lock = None  # the run directory's lock, from `start` to the end of `train`
        build.seed_everything(config.seed)
        data = build.make_data(config, self.method, self.collective, self.logger.print)
        self.rows, self.eval_examples, self.scorer = data.rows, data.eval_examples, data.scorer
        self.tokenizer, self.demo_report = data.tokenizer, data.demo_report
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        parts = build.make_parts(config, self.method, data.model_path, self.accelerator, self.parallel)
        self.model, self.optimizer = parts.model, parts.optimizer
        self._replica = parts.replica
        self._idle_token = self.pad_id if self.pad_id is not None else self.eos_id
        self.terms = Terms(config, self.model, parts.train_module, parts.reference, self.parallel, self.rows,
                           self.pad_id, self._idle_token, self.accelerator.device)
        self.rollout_engine = parts.rollout_engine
        self.extra_optimizer, self.extra_max_grad_norm = parts.extra_optimizer, parts.extra_max_grad_norm
        self.method_state: dict[str, Any] = self.method.init_state(config, len(self.rows.examples))
        self.total_steps = self.method.total_steps(config, self.method_state)
        # The run's counters, checkpointed (checkpoint.RunState.COUNTERS, where each is described).
        self.step = self.skipped_steps = self.nonfinite_in_a_row = self.total_token_passes = self.total_train_sequences = 0
        self.warned_unscorable, self.reference_step = False, None
        # This process's generated tokens since the step began (the training forwards' are in self.terms).
        self._step_generated_tokens, self._last_step_finite = 0, True
        self.teachers = build.Teachers(config, self.tokenizer, self.accelerator.device)  # frozen_model's
        # RL's Razor: the base's log-probs on held-out demonstrations, for kl_from_base at each evaluation
        # (collective under FSDP and ZeRO-3: whole_policy).
        self.evaluator = Evaluator(config, self.tokenizer, self.eval_examples, self.accelerator, self.rollout_engine,
                                   build.kl_base(config, self.whole_policy, self.tokenizer, self.eval_examples,
                                                 self.accelerator))

    # ------------------------------------------------------------------ primitives for methods
    # What methods.base.StepContext declares (and documents), on the run's parts.
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
        return self.collective.sum(value)

    def global_sums(self, values: list[float]) -> list[float]:
        return self.collective.sums(values)

    def gather_rows(self, values: list) -> list:
        return self.collective.gather_rows(values)

    def local_rows(self, values: list) -> list:
        return self.collective.local_rows(values)

    def draw_demonstrations(self, count: int) -> list[Example]:
        return self.rows.draw_demonstrations(count)

    def example_position(self, example: Example) -> int:
        return self.rows.position(example)

    def train_example(self, position: int) -> Example:
        return self.rows.examples[position]

    def take_loss(self) -> float:
        value, self.terms.loss = self.terms.loss, 0.0
        return self.collective.sum(value)

    def whole_policy(self):
        """The policy with all its weights on this process (Parallel.whole_policy; collective under FSDP and ZeRO-3)."""
        return self.parallel.whole_policy(self.model, self.policy, self._replica)

    def text_ids(self, text: str) -> list[int]:
        return self.rows.text_ids(text)

    def demonstration_ids(self, example: Example) -> tuple[list[int], bool]:
        return self.rows.demonstration_ids(example)

    def context_ids(self, prompt: str | list[dict]) -> list[int]:
        return self.rows.context_ids(prompt)

    def frozen_model(self, name: str, what: str):
        return self.teachers.get(name, what)

    def score_rows(self, prompt_ids: list[list[int]], target_ids: list[list[int]], model=None,
                   temperature: float = 1.0) -> list[torch.Tensor]:
        model = self.whole_policy() if model is None else model
        with self.accelerator.autocast():
            return self.terms.score_rows(prompt_ids, target_ids, model, temperature)

    def decode(self, ids: list[int]) -> str:
        text = self.tokenizer.decode(ids)
        assert isinstance(text, str)  # one sequence of ids decodes to one text
        return text

    def sft_backward(self, examples: list[Example], weight: float = 1.0,
                     token_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     kl_coef: float = 0.0, targets: list[list[int]] | None = None, entropy_coef: float = 0.0,
                     observe: Observer | None = None, temperature: float = 1.0,
                     entropy_tokens: int | None = None, token_loss: SFTTokenLoss | None = None) -> dict[str, float]:
        return self.terms.sft(examples, weight, token_weights, kl_coef, targets, entropy_coef, observe, temperature,
                              entropy_tokens, token_loss)

    def generate(self, examples: list[Example], num_generations: int, greedy: bool = False,
                 continuations: list[str] | None = None) -> Completions:
        with self.accelerator.autocast():
            completions = experience.sample(self.whole_policy(), self.tokenizer, examples, num_generations, self.config,
                                            self.rollout_engine, greedy, continuations)
        self._step_generated_tokens += sum(len(ids) for ids in completions.completion_ids)
        return completions

    def rollouts(self, examples: list[Example], placement: Placement = Placement.NONE,
                 hints: list[str] | None = None) -> Rollouts:
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
        return self.scorer.score(examples, texts, target_ids, group_size, is_demo, self._reward_trainer_state())

    def _reward_trainer_state(self):
        return trainer_state(self.config, self.step, self.total_steps, self.rows.sampler.epochs_done)

    def policy_backward(self, rollouts: Rollouts, token_loss: TokenLoss, weight: float = 1.0,
                        observe: Observer | None = None, entropy_tokens: int | None = None,
                        entropy_coef: float | None = None) -> dict[str, float]:
        return self.terms.policy(rollouts, token_loss, weight, observe, entropy_tokens, entropy_coef)

    def grpo_backward(self, examples: list[Example], weight: float = 1.0) -> dict[str, float]:
        return self.policy_backward(self.rollouts(examples), grpo_loss(self.config), weight)

    def snapshot_reference(self) -> None:
        if self.config.use_peft:  # validate.check_config refuses such configs before training
            raise RuntimeError("snapshot_reference: a LoRA run's reference is its base model")
        self.terms.reference = build.frozen(self.whole_policy(), self.accelerator.device)
        self.reference_step = self.step

    # ------------------------------------------------------------------ the loop
    def step_learning_rate(self, kind: StepKind) -> float:
        """This step's learning rate, as the method says (Method.learning_rate)."""
        return self.method.learning_rate(self.config, self.step, kind, self.method_state)

    def optimizer_step(self, learning_rate: float, loss: float = 0.0) -> tuple[float, bool]:
        """Update the policy with the run's optimizer (Parallel.update, Parallel.deepspeed_update: the skips);
        returns the norm before clipping and whether the update was made."""
        if self.parallel.backend == "deepspeed":
            grad_norm, self._last_step_finite = self.parallel.deepspeed_update(
                self.model, self.optimizer, learning_rate, self._idle_token, loss)
            return grad_norm, self._last_step_finite
        grad_norm, self._last_step_finite, taken = self.parallel.update(
            self.model, [self.optimizer], learning_rate, self.config.max_grad_norm, self._idle_token, loss,
            self.config.skip_update_grad_norm)
        return grad_norm, taken

    def extra_optimizer_step(self, learning_rate: float) -> tuple[float, bool]:
        if self.extra_optimizer is None:
            raise RuntimeError(f"method {self.config.method} declares no extra optimizer")
        grad_norm, _, taken = self.parallel.update(self.model, [self.extra_optimizer, self.optimizer], learning_rate,
                                                   self.extra_max_grad_norm, self._idle_token)
        return grad_norm, taken

    def reset_optimizer_state(self) -> None:
        self.optimizer.state.clear()

    def budget_spent(self) -> bool:
        """Whether max_token_passes or max_train_sequences is set and the run has reached it."""
        cfg = self.config
        return (0 < cfg.max_token_passes <= self.total_token_passes
                or 0 < cfg.max_train_sequences <= self.total_train_sequences)

    def evaluate(self) -> dict[str, float]:
        """The run's evaluation metrics now (Evaluator.evaluate; collective under FSDP and ZeRO-3)."""
        return self.evaluator.evaluate(self.whole_policy)

    def start(self) -> None:
        """Set up the run directory as planned (resume, or start again); once, before any `train_step`.
        The main process holds the directory from here to the end of `train` (checkpoint.lock_run_dir)."""
        refused: RunError | None = None
        if self.accelerator.is_main_process and self._lock is None:
            try:
                self._lock = checkpoint.lock_run_dir(self.run_dir)
                if checkpoint.plan_run(self.config) != self.plan:  # written by another process while this one loaded
                    raise RunError(f"output_dir: {self.run_dir} changed while this run was loading (another "
                                   "process wrote to it); run again")
            except RunError as exc:
                refused = exc
        # every process stops together (collective), rather than the others waiting at the barrier below
        if self.collective.max(int(refused is not None)):
            raise refused or RunError(f"output_dir: {self.run_dir} was refused by the main process (see its error)")
        self.logger.prepare(restart=self.plan.restart)
        self.collective.barrier()
        if self.plan.checkpoints:
            self._resume(self.plan.checkpoints)
        if self.accelerator.is_main_process:
            (self.run_dir / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        self.logger.start_trackers(self.config.to_dict())

    def train(self) -> dict[str, Any]:
        """The whole run: start, evaluate, train_step until done, evaluate, save; returns the summary."""
        try:
            return self._train()
        finally:
            self.logger.close()
            if self._lock is not None:
                self._lock.close()
                self._lock = None

    def _train(self) -> dict[str, Any]:
        cfg = self.config
        self.start()
        summary: dict[str, Any] = {"method": cfg.method, "seed": cfg.seed, "eval_before": self.logger.logged_eval(0)}
        if self.demo_report:
            summary["demonstrations"] = self.demo_report
        if self.step == 0:
            summary["eval_before"] = self.evaluate()
            if summary["eval_before"]:
                self.logger.log({"step": 0, **summary["eval_before"]})
                self.logger.print(f"accuracy before training: {self.evaluator.accuracy_text(summary['eval_before'])} "
                                  f"on {len(self.eval_examples)} eval prompts")
        self.logger.open_bar(self.total_steps, cfg.method, enabled=cfg.progress, initial=self.step)
        start = time.perf_counter()
        try:
            while self.step < self.total_steps and not self.budget_spent():
                self.train_step()
        finally:
            self.logger.close_bar()
        summary.update(train_seconds=time.perf_counter() - start, skipped_steps=self.skipped_steps, steps=self.step,
                       total_token_passes=self.total_token_passes, total_train_sequences=self.total_train_sequences,
                       eval_after=self.evaluate())
        if summary["eval_after"]:
            self.logger.log({"step": self.step, **summary["eval_after"]})
        self.save_final()
        self.logger.finish(summary, cfg.use_peft, cfg.use_peft and cfg.merge_lora_on_save, self.evaluator.accuracy_text)
        if cfg.push_to_hub and self.accelerator.is_main_process:
            folder = self.run_dir / ("model-merged" if cfg.use_peft and cfg.merge_lora_on_save else "model")
            url = hub.push_model(folder, cfg.hub_model_id or self.run_dir.name, f"sftrl {cfg.method}, {self.step} steps")
            self.logger.print(f"pushed {folder} to {url}")
        return summary

    def train_step(self) -> None:
        """One optimizer step: plan -> the method's backward passes -> the update (or a skip) -> the
        method's after_step -> the step's costs -> log, evaluate, checkpoint."""
        cfg = self.config
        t0 = time.perf_counter()
        kind = self.method.plan(cfg, self.step, self.method_state)
        examples = self.rows.step_rows(cfg.sft_batch if kind is StepKind.SFT else cfg.batch_size)
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
        if not stepped:
            self.logger.print(runlog.skip_warning(self.step, metrics, finite, cfg.skip_update_grad_norm))
        self.method.after_step(self, self.method_state, metrics)  # SASR reads grad_norm; ReLIFT's SFT update
        self._count_costs(metrics)  # ReLIFT's SFT update included
        metrics["step_type"] = "+".join(name for name in ("sft", "grpo") if f"{name}/loss" in metrics)
        metrics["epoch"] = self.rows.sampler.epochs_done
        metrics["time/step"] = time.perf_counter() - t0
        last = self.step >= self.total_steps or self.budget_spent()  # the final evaluation and save follow
        if cfg.eval_every and self.step % cfg.eval_every == 0 and not last:
            metrics.update(self.evaluate())
        if self.step % cfg.logging_steps == 0 or not stepped:
            self.logger.log({"step": self.step, **metrics})
        if self.nonfinite_in_a_row >= cfg.max_nonfinite_steps:
            raise checkpoint.nonfinite_stop(self.run_dir, self.step, self.nonfinite_in_a_row, cfg.max_nonfinite_steps)
        self.logger.advance(metrics)
        if cfg.save_every and self.step % cfg.save_every == 0 and not last:
            self.save_checkpoint()

    def _count_costs(self, metrics: dict[str, Any]) -> None:
        """What the step cost over every process (collective), for budgets in tokens or sequences."""
        tokens, sequences = (int(total) for total in self.collective.sums(
            [self._step_generated_tokens + self.terms.token_passes, self.terms.sequences]))
        self.total_token_passes += tokens
        self.total_train_sequences += sequences
        metrics.update(token_passes=tokens, train_sequences=sequences, total_token_passes=self.total_token_passes,
                       total_train_sequences=self.total_train_sequences)

    # ------------------------------------------------------------------ checkpoints
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

    def save_checkpoint(self):
        """checkpoints/step-NNNNNN (see :mod:`sftrl.checkpoint`), written by the main process; never
        with non-finite weights, so the older checkpoints it would rotate out stay."""
        return checkpoint.write(self.run_dir, self.step, self.whole_policy, self.tokenizer, self.run_state,
                                self.reference if self.reference_step is not None else None,
                                self.config.save_total_limit, self.collective.barrier, self.accelerator.is_main_process)

    def save_final(self) -> None:
        checkpoint.save_final(self.run_dir, self.step, self.whole_policy, self.policy, self.tokenizer,
                              self.config.use_peft and self.config.merge_lora_on_save, self.collective.barrier,
                              self.accelerator.is_main_process)

    def _resume(self, checkpoints: list) -> None:
        """Continue from the newest checkpoint that loads (newest first in `checkpoints`); a damaged
        one is reported and the one before it is used."""
        latest, state, weights, reference = checkpoint.newest_for_resume(self.config, checkpoints, self.logger.print)
        if self.config.use_peft:
            import_peft("resuming a use_peft run").set_peft_model_state_dict(self.policy, weights)
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
