"""Training methods: one short module each, saying what one optimizer step does.

A method module defines:
- ``NEEDS_DEMONSTRATIONS`` / ``NEEDS_ROLLOUTS``: what data the method uses (checked before training);
- ``LEARNING_RATES``: the config fields of the peak rates its steps use (``learning_rate`` for steps
  with a policy-gradient term, ``sft_learning_rate`` for SFT-only steps); `sftrl compare --tune` tunes these;
- ``step(trainer, state, examples) -> dict``: the backward passes of one optimizer step, built from the
  trainer's primitives ``sft_backward`` and ``grpo_backward``; returns metrics. The trainer then clips,
  steps the optimizer, logs and checkpoints;
- optionally ``init_state(config) -> dict`` (method state that goes into checkpoints),
  ``needs_reference(config) -> bool`` (default: GRPO with ``beta > 0``), ``after_step(trainer, state,
  metrics)`` (runs after the optimizer step, with ``metrics["grad_norm"]``) and ``PRESET`` (config
  values the method defaults to; a recipe or override still wins).

Adding a method = one new module here plus one line in ``METHODS``.
"""

from types import ModuleType

from . import grpo, grpo_then_sft, luffy, sasr, sft, sft_then_grpo, srft, static

METHODS: dict[str, ModuleType] = {
    "sasr": sasr,
    "srft": srft,
    "luffy": luffy,
    "sft": sft,
    "grpo": grpo,
    "sft-then-grpo": sft_then_grpo,
    "grpo-then-sft": grpo_then_sft,
    "static": static,
}


def learning_rate_fields(config) -> tuple[str, ...]:
    """The learning-rate fields a run of `config.method` uses (what `sftrl compare --tune` tunes)."""
    return METHODS[config.method].LEARNING_RATES
