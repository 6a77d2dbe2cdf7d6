"""CHORD (arXiv 2508.11408): one loss, L = (1-μ_t)·L_GRPO + μ_t·L_SFT-φ (as Trinity-RFT's MIXCHORDPolicyLossFn).

- L_GRPO: the on-policy term over the step's rollouts (token-level, std-scaled advantages, ε = 0.2 and
  no KL are the defaults), normalised over its own rows by `loss_type`.
- L_SFT-φ = -Σ_t φ_t log p_t / (demonstration tokens of the step), φ_t = sg(p_t(1-p_t)) (`chord_phi`;
  CHORD-μ uses φ ≡ 1). The demonstrations are expert rows drawn apart from the RL prompts, a share
  ρ = `expert_data_ratio` of the step's rows (32 prompts × 8 + 64 demonstrations: ρ = 0.2).
- μ_k: linear from 0 to μ_p over W steps, then μ_v + (μ_p-μ_v)·½(1+cos(π(k-W)/T_d)), then μ_v
  (Trinity-RFT's `mu_schedule_function`), at k = the number of this update counted from 1, as Trinity's
  trainer passes it (`sample_strategy.sample(self.train_step_num + 1)`). CHORD-μ: W = 0, 0.9 → 0.05
  over T_d = 200; CHORD-φ (the defaults): μ = 0.1 fixed.
- Both terms are scored at the rollout temperature (Trinity's actor runs every row, expert rows
  included, through one forward at `meta_info["temperature"]`); the advantages' std ε is verl's 1e-6.
"""

import math

from .. import losses
from ..data import Example

from .base import (VERL_STD_EPS, Method, Metrics, Observer, Rollouts, State, StepContext, StepKind, always, grpo_loss,
                   only)


def mu_schedule(step: int, warmup_steps: int, decay_steps: int, peak: float, valley: float) -> float:
    """CHORD's μ at `step` as Trinity-RFT's mu_schedule_function computes it (the caller chooses the
    count: `update_number` says which)."""
    if step < warmup_steps:
        return step / warmup_steps * peak
    if step >= warmup_steps + decay_steps:
        return valley
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))


def update_number(finished_steps: int) -> int:
    """The step count the references pass to their schedules: this update's number counted from 1
    (Trinity-RFT's trainer samples update k with step = train_step_num + 1; verl's global_steps
    starts at 1), where sftrl's trainer.step counts the updates finished before this one."""
    return finished_steps + 1


def chord_mu(config, finished_steps: int) -> float:
    """μ of the update after `finished_steps` finished ones."""
    return mu_schedule(update_number(finished_steps), config.chord_mu_warmup_steps, config.chord_mu_decay_steps,
                       config.chord_mu_peak, config.chord_mu_valley)


def expert_rows(config) -> int:
    """Demonstrations per step: a share ρ of all rows, round(ρ/(1-ρ) · batch_size · num_generations)."""
    rho = config.expert_data_ratio
    return round(rho / (1.0 - rho) * config.batch_size * config.num_generations)


def sample(trainer: StepContext, examples: list[Example]) -> tuple[Rollouts, list[Example]]:
    """The step's rows: the prompts' rollouts and the separately drawn demonstrations."""
    return trainer.rollouts(examples), trainer.draw_demonstrations(expert_rows(trainer.config))


def mixed_backward(trainer: StepContext, rollouts: Rollouts, demos: list[Example], mu: float,
                   observe: Observer | None = None) -> Metrics:
    """(1-μ)·L_GRPO on the rollouts + μ·L_SFT(-φ) on the demonstrations, both at the rollout temperature."""
    cfg = trainer.config


    rl = trainer.policy_backward(rollouts, grpo_loss(cfg), weight=1.0 - mu, observe=observe)
    phi = (lambda logps, entropy: losses.chord_phi_weights(logps)) if cfg.chord_phi else None
    sft = trainer.sft_backward(demos, weight=mu, token_weights=phi, observe=observe, temperature=cfg.temperature)
    if "sft/mean_weight" in sft:
        sft["chord/phi_mean"] = sft.pop("sft/mean_weight")
    return {**rl, **sft, "chord/mu": mu, "chord/expert_rows": expert_rows(cfg)}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    rollouts, demos = sample(trainer, examples)
    return mixed_backward(trainer, rollouts, demos, chord_mu(trainer.config, trainer.step))


# One loss every step, with a policy-gradient term: learning_rate, batch_size prompts.
METHOD = Method(name="chord", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, advantage_std_eps=VERL_STD_EPS)
