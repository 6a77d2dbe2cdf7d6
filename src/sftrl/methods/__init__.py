"""Training methods: one short module each, saying what one optimizer step does.

Each module defines ``METHOD``, a :class:`~sftrl.methods.base.Method`: how it plans a step (SFT or
policy-gradient, which picks the step's batch and learning rate), what the step does through the
trainer's primitives, its state (checkpointed) and its config preset. See ``methods/base.py`` for
the contract. Adding a method = one new module here plus its name in the tuple below.
"""

from . import (asft, chord, dft, gac, grpo, grpo_then_sft, hpt, luffy, opd, opsd, relift, sasr, sft, sft_then_grpo,
               srft, static, uft)
from .base import Method, OptimizerSpec, Placement, StepKind, TokenView

METHODS: dict[str, Method] = {module.METHOD.name: module.METHOD for module in (
    sasr, srft, luffy, hpt, relift, chord, gac, uft, dft, asft, opsd, opd, sft, grpo, sft_then_grpo, grpo_then_sft,
    static)}

__all__ = ["METHODS", "Method", "OptimizerSpec", "Placement", "StepKind", "TokenView"]
