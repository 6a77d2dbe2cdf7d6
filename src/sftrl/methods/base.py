"""The method interface: what a method tells the trainer, what it may ask of it, and when.

Each optimizer step the trainer
1. asks ``plan(config, step, state) -> StepKind``: what kind of step comes next (SASR draws its coin
   here). The kind picks the step's data: an ``SFT`` step draws ``sft_batch_size`` demonstrations, a
   ``POLICY`` step (any step with a policy-gradient term, with or without SFT terms) draws
   ``batch_size`` prompts; and its learning rate, ``learning_rate(config, step, kind, state)``
   (by default ``sft_learning_rate`` for SFT steps and ``learning_rate`` for policy steps, times the
   run's schedule);
2. calls ``step(trainer, state, examples, kind) -> metrics``, which runs the step's backward passes
   through the primitives of :class:`StepContext` (all it may touch) and returns its metrics (floats or strings,
   logged as they are; ``loss`` is not the method's to set: the trainer logs the sum of every loss
   it back-propagated, which is the loss optimised);
3. clips, steps the optimizer (or skips a non-finite step), then calls ``after_step(trainer, state,
   metrics)`` with ``metrics["grad_norm"]`` (SASR reads its gradient norms there; ReLIFT takes its
   extra SFT update there); what it adds to ``metrics`` is logged.

Several processes: the step's prompts (and demonstrations) are sharded ``global[rank::world]``, so
``examples`` holds this process's share. A method must make every process call the same collective
primitives in the same order, whatever its own rows decided (``sft_backward``, ``policy_backward``,
``rollouts``, ``global_sum``, ``gather_rows``, ``draw_demonstrations`` and ``score_rows`` are
collective, and ``generate`` is under FSDP and ZeRO-3); a process with no rows of a term still calls it
with an empty list, and the term's normaliser counts every process's rows. Decisions that skip a term must be taken on global counts, the same on every process.

``state`` is the method's own dict, made by ``init_state(config, train_size)``; it must hold only
picklable values, and it is saved in every checkpoint and restored on resume, so a resumed run makes
the same choices. A method that needs an optimizer of its own declares it with ``extra_optimizer``;
the trainer builds it, checkpoints its state with the run's and steps it on request. Every method
module defines ``METHOD = Method(...)``; ``sftrl.methods.METHODS`` lists them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

import torch

from .. import losses
from ..config import Config
from ..data import Example
from ..rollout import Completions
from ..schedules import lr_factor


class StepKind(str, Enum):
    """What an optimizer step trains on, which decides its batch and its learning rate."""

    SFT = "sft"  # SFT terms only: sft_batch_size demonstrations, sft_learning_rate
    POLICY = "policy"  # a policy-gradient term (and maybe SFT terms): batch_size prompts, learning_rate


class Placement(str, Enum):
    """Where a prompt's demonstration goes in its group of rollouts."""

    NONE = "none"  # G rollouts, no demonstration (GRPO)
    REPLACE = "replace"  # G-1 rollouts + the demonstration (LUFFY)
    APPEND = "append"  # G rollouts + the demonstration (SRFT)
    PREFIX = "prefix"  # G rollouts, each continuing a prefix (hint) of the demonstration the method gives (UFT)


@dataclass(frozen=True)
class TokenView:
    """One micro-batch as a method's observer sees it (detached: no gradient flows through what it
    computes). Rows with ``advantages`` None are demonstrations trained by an SFT term."""

    logps: torch.Tensor  # (B, T) log π_θ of the target tokens, at the temperature the term scores at
    entropy: torch.Tensor  # (B, T) full-vocabulary entropy at each target position
    mask: torch.Tensor  # (B, T) 1.0 on tokens the loss counts
    is_demo: torch.Tensor  # (B,) bool: a demonstration row
    advantages: torch.Tensor | None  # (B,) for policy-gradient rows; None in an SFT term


Observer = Callable[[TokenView], None]


@dataclass
class Rollouts:
    """One step's sequences for a policy-gradient loss: each prompt's group of rollouts, with its
    demonstration inside the group for LUFFY and SRFT. Groups are contiguous, `group_size` long."""

    prompt_ids: list[list[int]]
    target_ids: list[list[int]]  # completions (or demonstrations), EOS included when there is one
    is_demo: torch.Tensor  # (N,) bool
    truncated: torch.Tensor  # (N,) bool: no EOS within max_completion_length
    rewards: torch.Tensor  # (N,) weighted total; NaN where every reward function returned None
    advantages: torch.Tensor  # (N,) over each group, demonstration included
    group_size: int
    metrics: dict[str, float]
    # Per-row, per-token values the method's token loss takes by name (OPSD's and OPD's teacher log-probs,
    # Prefix-RFT's prefix tokens and their advantage), each row's (len(target),) tensor; policy_backward
    # pads them with 0 to the micro-batch's (B, T).
    token_inputs: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def select(self, groups: list[int]) -> Rollouts:
        """The rollouts of the given groups only (HPT drops the groups its gate sends to SFT); the
        advantages stay as computed over each whole group, and `metrics` describe every rollout sampled."""
        rows = [g * self.group_size + j for g in groups for j in range(self.group_size)]
        index = torch.tensor(rows, dtype=torch.long)
        return Rollouts([self.prompt_ids[i] for i in rows], [self.target_ids[i] for i in rows], self.is_demo[index],
                        self.truncated[index], self.rewards[index], self.advantages[index], self.group_size,
                        self.metrics, {name: [values[i] for i in rows] for name, values in self.token_inputs.items()})


@dataclass(frozen=True)
class OptimizerSpec:
    """A second AdamW over the policy's parameters that a method steps itself (ReLIFT's SFT optimizer).
    Its betas are the run's (`adam_beta1`, `adam_beta2`); its state is checkpointed with the run's."""

    weight_decay: float
    max_grad_norm: float  # clip of the global gradient norm of its updates; 0 = none


class TokenLoss(Protocol):
    """A method's per-token policy-gradient loss (a function of `losses`), called with named arguments on
    each micro-batch, `inputs` being the rollouts' token_inputs, each (B, T); returns the loss (B, T) and
    per-token stats logged as their means over rollout tokens."""

    def __call__(self, *, logps: torch.Tensor, old_logps: torch.Tensor, entropy: torch.Tensor,
                 advantages: torch.Tensor, is_demo: torch.Tensor,
                 **inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


# (log-probs with gradient, the reference's log-probs or None) -> (B, T) per-token loss replacing the NLL
SFTTokenLoss = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def grpo_loss(config: Config) -> TokenLoss:
    """The clipped-surrogate GRPO term with the run's ε, ε_high and clip_ratio (losses.grpo_token_loss):
    GRPO's loss and the policy-gradient term of the hybrids built on it. β·KL is added by policy_backward."""

    def loss(*, logps: torch.Tensor, old_logps: torch.Tensor, entropy: torch.Tensor, advantages: torch.Tensor,
             is_demo: torch.Tensor, **inputs: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return losses.grpo_token_loss(logps, old_logps, advantages, config.epsilon, config.epsilon_high,
                                      clip=config.clip_ratio)

    return loss


State = dict[str, Any]  # a method's own state: picklable values only (checkpointed)
Metrics = dict[str, Any]  # what a step logs: floats or strings


class StepContext(Protocol):
    """All a method may touch of the trainer (``sftrl.trainer.Trainer`` implements it)."""

    config: Config
    step: int  # optimizer steps finished before this one

    def sft_backward(self, examples: list[Example], weight: float = 1.0,
                     token_weights: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                     kl_coef: float = 0.0, targets: list[list[int]] | None = None, entropy_coef: float = 0.0,
                     observe: Observer | None = None, temperature: float = 1.0,
                     entropy_tokens: int | None = None,
                     token_loss: SFTTokenLoss | None = None,
                     ) -> dict[str, float]:
        """The SFT term (Terms.sft)."""

    def rollouts(self, examples: list[Example], placement: Placement = Placement.NONE,
                 hints: list[str] | None = None) -> Rollouts:
        """Sample, place demonstrations in the groups, score, and compute group advantages
        (:func:`sftrl.experience.collect`; `placement` as in :func:`sftrl.experience.sample_groups`)."""

    def policy_backward(self, rollouts: Rollouts, token_loss: TokenLoss, weight: float = 1.0,
                        observe: Observer | None = None, entropy_tokens: int | None = None,
                        entropy_coef: float | None = None) -> dict[str, float]:
        """A policy-gradient term over rollouts and demonstrations (Terms.policy)."""

    def grpo_backward(self, examples: list[Example], weight: float = 1.0) -> dict[str, float]:
        """Roll out G completions per prompt, score, group advantages, accumulate weight · GRPO loss."""

    def snapshot_reference(self) -> None:
        """Make the current policy the frozen reference (SASR after warm-up; the end of RL in RL→SFT_KL).
        Checkpoints then carry its weights, so a resumed run measures against the same model."""

    def reset_optimizer_state(self) -> None:
        """Forget AdamW's moments and step counts, as a new training job would start (SFT→RL's RL stage)."""

    def extra_optimizer_step(self, learning_rate: float) -> tuple[float, bool]:
        """Step the method's own optimizer (Method.extra_optimizer) on the gradients accumulated since the
        last update, clipped at its own max_grad_norm (Parallel.update); returns the norm before clipping
        and whether the update was made (a non-finite norm makes none). Collective."""

    def take_loss(self) -> float:
        """The loss back-propagated since the last call, summed over processes (each process's share is
        normalised by whole-step counts, so the sum is the step's loss); collective."""

    def global_sum(self, value: float) -> float:
        """`value` summed over every process (collective: every process must call it)."""

    def global_sums(self, values: list[float]) -> list[float]:
        """Each value summed over every process, in one all-reduce (collective)."""

    def gather_rows(self, values: list) -> list:
        """Every process's per-row values of a list sharded as global[rank::world] (the step's prompts,
        drawn demonstrations), put back in the global order; collective."""

    def local_rows(self, values: list) -> list:
        """This process's share of a global per-row list: values[rank::world], as the step's prompts are sharded."""

    def draw_demonstrations(self, count: int) -> list[Example]:
        """This process's share of `count` training rows drawn for their demonstrations from a sampler of
        their own (seeded, checkpointed), independent of the step's prompts (CHORD's expert rows)."""

    def example_position(self, example: Example) -> int:
        """The example's position in the training set (what train_example takes back; ReLIFT's buffer)."""

    def train_example(self, position: int) -> Example: ...

    def demonstration_ids(self, example: Example) -> tuple[list[int], bool]: ...

    def text_ids(self, text: str) -> list[int]:
        """Token ids of a piece of target text, no special tokens (UFT's hints)."""

    def context_ids(self, prompt: str | list[dict]) -> list[int]: ...

    def frozen_model(self, name: str, what: str) -> Any:
        """A frozen model (a teacher) loaded as the policy is (models.load_frozen: a local directory or hub id,
        the run's dtype; its tokenizer must have the policy's vocabulary), on this process's device, loaded
        once per run; `what` names the config field in errors."""

    def score_rows(self, prompt_ids: list[list[int]], target_ids: list[list[int]], model=None,
                   temperature: float = 1.0) -> list[torch.Tensor]:
        """Terms.score_rows under `model` (None: the current policy). Collective under FSDP and ZeRO-3 when
        model is None (whole_policy)."""

    def decode(self, ids: list[int]) -> str:
        """The text of token ids (Prefix-RFT's demonstration prefix)."""

    # Sampling and grading outside `rollouts` (uft's Prefix-RFT schedule: one extra prefixed rollout a group).
    def generate(self, examples: list[Example], num_generations: int, greedy: bool = False,
                 continuations: list[str] | None = None) -> Completions:
        """Sample completions; `continuations` (one text per example) are appended to the rendered
        prompts, so the samples continue them (UFT's hints)."""

    def score(self, examples: list[Example], texts: list[str], target_ids: list[list[int]], group_size: int,
              is_demo: list[bool]) -> tuple[torch.Tensor, dict[str, list[float]]]:
        """Each reward function's rewards, (N, F), NaN for None, and what they logged with log_metric, by name
        (Scorer.score, called as TRL calls them; row i belongs to examples[i // group_size]). Not collective:
        for targets sampled outside `rollouts` (uft's Prefix-RFT schedule)."""


LEARNING_RATE_FIELDS = {StepKind.SFT: "sft_learning_rate", StepKind.POLICY: "learning_rate"}


def _no_state(config, train_size: int) -> dict[str, Any]:
    return {}


def _reference_for_kl(config) -> bool:
    return config.beta > 0  # the policy-gradient term's β·KL(π_θ‖π_ref) needs π_ref


def _never(config) -> bool:
    return False


def _nothing(trainer: StepContext, state: State, metrics: Metrics) -> None:
    return None


def _max_steps(config, state: dict[str, Any]) -> int:
    return config.max_steps


def _no_optimizer(config) -> OptimizerSpec | None:
    return None


# The ε of A = (r - mean)/(std + ε), as each method's reference code has it (config advantage_std_eps
# overrides): TRL's GRPOTrainer adds 1e-4 (GRPO and the methods built on TRL's term); verl's
# compute_grpo_outcome_advantage and Trinity-RFT's GRPO advantage add 1e-6 (CHORD, HPT, GAC, LUFFY).
TRL_STD_EPS = 1e-4
VERL_STD_EPS = 1e-6


def peak_learning_rate(config, kind: StepKind) -> float:
    """sft_learning_rate for an SFT step, learning_rate for a step with a policy-gradient term."""
    return config.sft_lr if kind is StepKind.SFT else config.learning_rate


def run_learning_rate(config, step: int, kind: StepKind, state: dict[str, Any]) -> float:
    """The default: the kind's peak rate times one schedule over the whole run (warmup_steps, then
    lr_scheduler to 0 at max_steps)."""
    return peak_learning_rate(config, kind) * lr_factor(step, config.max_steps, config.warmup_steps,
                                                        config.lr_scheduler)


@dataclass(frozen=True)
class Method:
    """A training method, as the trainer sees it (see the module docstring for the call order).

    kinds(config) lists every StepKind whose learning rate the method uses with this config:
    `sftrl compare --tune` tunes the learning rates of exactly those kinds.
    total_steps(config, state) is the run's length (max_steps unless the method derives it).
    """

    name: str
    plan: Callable[[Any, int, dict[str, Any]], StepKind]
    step: Callable[[StepContext, State, list[Example], StepKind], Metrics]
    kinds: Callable[[Any], frozenset[StepKind]]
    needs_demonstrations: bool
    needs_rollouts: bool
    init_state: Callable[[Any, int], dict[str, Any]] = _no_state
    needs_reference: Callable[[Any], bool] = _reference_for_kl
    # Whether the method makes the policy of mid-training its reference (StepContext.snapshot_reference)
    snapshots_reference: Callable[[Any], bool] = _never
    after_step: Callable[[StepContext, State, Metrics], None] = _nothing
    learning_rate: Callable[[Any, int, StepKind, dict[str, Any]], float] = run_learning_rate
    total_steps: Callable[[Any, dict[str, Any]], int] = _max_steps
    extra_optimizer: Callable[[Any], OptimizerSpec | None] = _no_optimizer
    preset: dict[str, Any] = field(default_factory=dict)  # config defaults; a recipe or override wins
    advantage_std_eps: float = TRL_STD_EPS  # ε of (r - mean)/(std + ε) in the method's reference code

    def std_eps(self, config) -> float:
        """The advantages' std ε: config.advantage_std_eps when set, else the method's reference value."""
        return self.advantage_std_eps if config.advantage_std_eps is None else config.advantage_std_eps

    def learning_rate_fields(self, config) -> tuple[str, ...]:
        """The config fields of the peak learning rates this method's steps use."""
        return tuple(LEARNING_RATE_FIELDS[kind] for kind in StepKind if kind in self.kinds(config))


def always(kind: StepKind) -> Callable[[Any, int, dict[str, Any]], StepKind]:
    """A plan for methods whose every step is of one kind."""
    return lambda config, step, state: kind


def only(*kinds: StepKind) -> Callable[[Any], frozenset[StepKind]]:
    return lambda config: frozenset(kinds)
