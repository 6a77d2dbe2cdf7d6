"""OPSD, on-policy self-distillation (arXiv 2601.18734; SDFT, arXiv 2601.19897, is the same recipe): the
student samples from the prompt alone; the teacher is the same model with the demonstration in its context.

- Rollouts: G per prompt from the policy, as GRPO's. Teacher context: the prompt's user message rewritten
  by `opsd_teacher_template` ({prompt} and {demonstration} filled in), rendered like every prompt; the
  teacher scores the student's tokens after it, without gradient and at the rollout temperature (TRL's
  SDFTTrainer divides both logits by the temperature).
- Teacher weights (`opsd_teacher`): `live`, the current policy (OPSD's p_T(·|x, y*) = p_θ(·|x, y*), shared
  parameters, gradient through the student only), or `base`, the model as loaded, frozen (TRL's
  SDFTConfig default teacher_model_kind="base", loaded from the model path as TRL does).
- Loss per token (`losses.distillation_token_loss`): advantage A_t = log π_T(y_t) - log π_θ(y_t) (+ w·A with
  w = `distill_reward_coef` and A the task reward's group advantage), in the clipped surrogate. Its gradient
  is TRL's distillation_mode="sampled_token" loss, (log π_θ - log π_T).detach()·log π_θ (reverse KL on the
  student's own tokens); its value, at ρ = 1, the k1 estimate log π_θ - log π_T, logged as `distill/reverse_kl`.
- Normalisation: `loss_type` over the whole step; the preset `grpo` (each sequence's token mean, then
  the mean over sequences) is TRL SDFT's `(per_token_loss·mask).sum(-1)/mask.sum(-1)` then `.mean()`,
  which TRL takes per micro-batch and divides by the accumulation steps.
"""

import re

from .. import losses
from ..data import Example

from .base import Method, Metrics, State, StepContext, StepKind, always, only

PRESET = {"loss_type": "grpo"}
PLACEHOLDER = re.compile(r"\{(prompt|demonstration)\}")


def fill_template(template: str, prompt: str, demonstration: str) -> str:
    """The template with {prompt} and {demonstration} replaced in one pass (braces elsewhere, as in
    \\boxed{}, stay as they are)."""
    return PLACEHOLDER.sub(lambda m: prompt if m.group(1) == "prompt" else demonstration, template)


def teacher_prompt(prompt: str | list[dict], demonstration: str, template: str) -> str | list[dict]:
    """The teacher's prompt: a text prompt through the template; chat messages with their last user message's
    content through it and the other messages kept (TRL SDFT's DemonstrationTeacherContextBuilder)."""
    if isinstance(prompt, str):
        return fill_template(template, prompt, demonstration)
    messages = [dict(m) for m in prompt]
    last = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    messages[last]["content"] = fill_template(template, str(messages[last]["content"]), demonstration)
    return messages


def distill_backward(trainer: StepContext, examples: list[Example], teacher=None,
                     contexts: list[list[int]] | None = None) -> Metrics:
    """Sample the step's rollouts, score their tokens under `teacher` (None: the current policy) after
    `contexts[p]` (None: each row's own prompt), and accumulate the distillation loss."""
    cfg = trainer.config
    rollouts = trainer.rollouts(examples)
    group = rollouts.group_size
    rows = range(len(rollouts.target_ids))
    prompts = rollouts.prompt_ids if contexts is None else [contexts[i // group] for i in rows]
    rollouts.token_inputs["teacher_logps"] = trainer.score_rows(prompts, rollouts.target_ids, model=teacher,
                                                                temperature=cfg.temperature)

    def distill_loss(*, logps, old_logps, entropy, advantages, is_demo, **inputs):
        return losses.distillation_token_loss(logps, old_logps, inputs["teacher_logps"], advantages,
                                              cfg.distill_reward_coef, cfg.epsilon, cfg.epsilon_high,
                                              clip=cfg.clip_ratio)

    metrics = trainer.policy_backward(rollouts, distill_loss)
    if "reverse_kl" in metrics:
        metrics["distill/reverse_kl"] = metrics.pop("reverse_kl")
    return metrics


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    contexts = []
    for e in examples:
        assert e.demonstration is not None  # needs_demonstrations: every row was loaded with one
        contexts.append(trainer.context_ids(teacher_prompt(e.prompt, e.demonstration, cfg.opsd_teacher_template)))
    teacher = trainer.frozen_model(cfg.model, "model") if cfg.opsd_teacher == "base" else None
    return distill_backward(trainer, examples, teacher, contexts)


METHOD = Method(name="opsd", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, preset=PRESET)
