"""CHORD (arXiv 2508.11408): one loss, L = (1-μ_t)·L_GRPO + μ_t·L_SFT-φ (as Trinity-RFT's MIXCHORDPolicyLossFn).

- L_GRPO: the on-policy term over the step's rollouts (token-level, std-scaled advantages, ε = 0.2 and
  no KL are the defaults), normalised over its own rows by `loss_type`.
- L_SFT-φ = -Σ_t φ_t log p_t / (demonstration tokens of the step), φ_t = sg(p_t(1-p_t)) (`chord_phi`;
  CHORD-μ uses φ ≡ 1). The demonstrations are expert rows drawn apart from the RL prompts, a share
  ρ = `expert_data_ratio` of the step's rows (32 prompts × 8 + 64 demonstrations: ρ = 0.2).
- μ_t: linear from 0 to μ_p over W steps, then μ_v + (μ_p-μ_v)·½(1+cos(π(t-W)/T_d)), then μ_v
  (Trinity-RFT's `mu_schedule_function`); t counts the steps before this one. CHORD-μ: W = 0,
  0.9 → 0.05 over T_d = 200; CHORD-φ (the defaults): μ = 0.1 fixed.
"""

import math

from .. import losses

from .base import Method, Observer, StepKind, always, only


def mu_schedule(step: int, warmup_steps: int, decay_steps: int, peak: float, valley: float) -> float:
    """CHORD's μ_t for 0-based step t (and GAC's prior)."""
    if step < warmup_steps:
        return step / warmup_steps * peak
    if step >= warmup_steps + decay_steps:
        return valley
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup_steps) / decay_steps))


def expert_rows(config) -> int:
    """Demonstrations per step: a share ρ of all rows, round(ρ/(1-ρ) · batch_size · num_generations)."""
    rho = config.expert_data_ratio
    return round(rho / (1.0 - rho) * config.batch_size * config.num_generations)


def mixed_step(trainer, examples, mu: float, observe: Observer | None = None) -> dict:
    """(1-μ)·L_GRPO on the prompts' rollouts + μ·L_SFT(-φ) on separately drawn demonstrations."""
    cfg = trainer.config

    def grpo_loss(logps, old_logps, entropy, advantages, is_demo):
        return losses.grpo_token_loss(logps, old_logps, advantages, cfg.epsilon, cfg.epsilon_high, clip=cfg.clip_ratio)

    rl = trainer.policy_backward(trainer.rollouts(examples), grpo_loss, weight=1.0 - mu, observe=observe)
    demos = trainer.draw_demonstrations(expert_rows(cfg))
    phi = (lambda logps, entropy: losses.chord_phi_weights(logps)) if cfg.chord_phi else None
    sft = trainer.sft_backward(demos, weight=mu, token_weights=phi, observe=observe)
    if "sft/mean_weight" in sft:
        sft["chord/phi_mean"] = sft.pop("sft/mean_weight")
    return {**rl, **sft, "chord/mu": mu, "chord/expert_rows": expert_rows(cfg)}


def step(trainer, state, examples, kind):
    cfg = trainer.config
    mu = mu_schedule(trainer.step, cfg.chord_mu_warmup_steps, cfg.chord_mu_decay_steps, cfg.chord_mu_peak,
                     cfg.chord_mu_valley)
    return mixed_step(trainer, examples, mu)


# One loss every step, with a policy-gradient term: learning_rate, batch_size prompts.
METHOD = Method(name="chord", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True)
