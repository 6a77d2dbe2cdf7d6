"""The method interface: what a method tells the trainer, and when the trainer asks.

Each optimizer step the trainer
1. asks ``plan(config, step, state) -> StepKind``: what kind of step comes next (SASR draws its coin
   here). The kind picks the step's data and learning rate: an ``SFT`` step draws ``sft_batch_size``
   demonstrations and uses ``sft_learning_rate``; a ``POLICY`` step (any step with a
   policy-gradient term, with or without SFT terms) draws ``batch_size`` prompts and uses
   ``learning_rate``;
2. calls ``step(trainer, state, examples, kind) -> metrics``, which runs the step's backward passes
   through the trainer's primitives (``sft_backward``, ``rollouts``, ``policy_backward``,
   ``grpo_backward``, ``snapshot_reference``) and returns its metrics;
3. clips, steps the optimizer (or skips a non-finite step), then calls ``after_step(trainer, state,
   metrics)`` with ``metrics["grad_norm"]`` (SASR reads its gradient norms there).

``state`` is the method's own dict, made by ``init_state(config)``; it must hold only picklable
values, and it is saved in every checkpoint and restored on resume, so a resumed run makes the
same choices. Every method module defines ``METHOD = Method(...)``; ``sftrl.methods.METHODS`` lists
them by name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class StepKind(str, Enum):
    """What an optimizer step trains on, which decides its batch and its learning rate."""

    SFT = "sft"  # SFT terms only: sft_batch_size demonstrations, sft_learning_rate
    POLICY = "policy"  # a policy-gradient term (and maybe SFT terms): batch_size prompts, learning_rate


class Placement(str, Enum):
    """Where a prompt's demonstration goes in its group of rollouts."""

    NONE = "none"  # G rollouts, no demonstration (GRPO)
    REPLACE = "replace"  # G-1 rollouts + the demonstration (LUFFY)
    APPEND = "append"  # G rollouts + the demonstration (SRFT)


LEARNING_RATE_FIELDS = {StepKind.SFT: "sft_learning_rate", StepKind.POLICY: "learning_rate"}


def _no_state(config) -> dict[str, Any]:
    return {}


def _reference_for_kl(config) -> bool:
    return config.beta > 0  # the policy-gradient term's β·KL(π_θ‖π_ref) needs π_ref


def _nothing(trainer, state: dict[str, Any], metrics: dict[str, Any]) -> None:
    return None


@dataclass(frozen=True)
class Method:
    """A training method, as the trainer sees it (see the module docstring for the call order).

    kinds(config) lists every StepKind the method can take with this config: `sftrl compare --tune`
    tunes the learning rates of exactly those kinds.
    """

    name: str
    plan: Callable[[Any, int, dict[str, Any]], StepKind]
    step: Callable[[Any, dict[str, Any], list, StepKind], dict[str, Any]]
    kinds: Callable[[Any], frozenset[StepKind]]
    needs_demonstrations: bool
    needs_rollouts: bool
    init_state: Callable[[Any], dict[str, Any]] = _no_state
    needs_reference: Callable[[Any], bool] = _reference_for_kl
    after_step: Callable[[Any, dict[str, Any], dict[str, Any]], None] = _nothing
    preset: dict[str, Any] = field(default_factory=dict)  # config defaults; a recipe or override wins

    def learning_rate_fields(self, config) -> tuple[str, ...]:
        """The config fields of the peak learning rates this method's steps use."""
        return tuple(LEARNING_RATE_FIELDS[kind] for kind in StepKind if kind in self.kinds(config))


def always(kind: StepKind) -> Callable[[Any, int, dict[str, Any]], StepKind]:
    """A plan for methods whose every step is of one kind."""
    return lambda config, step, state: kind


def only(*kinds: StepKind) -> Callable[[Any], frozenset[StepKind]]:
    return lambda config: frozenset(kinds)
