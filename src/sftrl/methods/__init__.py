"""Training methods: one short module each, saying what one optimizer step does.

Each module defines ``METHOD``, a :class:`~sftrl.methods.base.Method`: how it plans a step (SFT or
policy-gradient, which picks the step's batch and learning rate), what the step does through the
trainer's primitives, its state (checkpointed) and its config preset. See ``methods/base.py`` for
the contract. Adding a method = one new module here plus its name in the tuple below.
"""

from . import grpo, grpo_then_sft, luffy, sasr, sft, sft_then_grpo, srft, static
from .base import Method, Placement, StepKind

METHODS: dict[str, Method] = {module.METHOD.name: module.METHOD for module in (
    sasr, srft, luffy, sft, grpo, sft_then_grpo, grpo_then_sft, static)}

__all__ = ["METHODS", "Method", "Placement", "StepKind"]
