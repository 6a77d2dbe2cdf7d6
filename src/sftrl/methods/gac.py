"""GAC (arXiv 2605.26184): CHORD-φ's loss, L = (1-μ_t)·L_GRPO + μ_t·L_SFT-φ, with μ_t set each step by a
closed-form, noise-aware controller (the public `gac/controller.py`, in the order of the author's loop
template in its README: `compute_hybrid_loss` updates the statistics with step t's batch, then computes μ_t).

Statistics, measured every f = `gac_update_every` steps from the first on (no gradient flows through them):
- σ_r²: population variance of each rollout row's token-mean advantage, over every process;
- σ_s²: population variance of the demonstrations' token-mean NLL after dropping the ⌊0.1n⌋ lowest and
  highest (no trimming below n = 4), at least 1e-8;
- Δg²: mean over all rows of the token-mean of (A_t - φ_t)², A_t = 0 on demonstration rows (φ ≡ 1
  without `chord_phi`): the squared mismatch of the SFT and RL gradient coefficients;
each tracked by an EMA with weight b on the old value, starting from its first value (before it:
Δg² = 0, σ_s² = σ_r² = 1). Every step:
  μ* = (α·Δg² + σ_r²)/(Δg² + σ_s² + σ_r² + 1e-8)               (the MSE-optimal closed form, paper Sec. 3)
  μ_a = clip(b·μ_{t-1} + (1-b)·μ*, μ_min, μ_max)                (EMA, prior blend and change cap: Sec. 3.4)
  μ_c = (1-λ)·prior(t) + λ·μ_a                                    (prior: CHORD's schedule)
  μ_t = clip(μ_{t-1} + clip(μ_c - μ_{t-1}, ±c̄), μ_min, μ_max)
On a measuring step the statistics of step t's own rows enter the EMAs before μ_t is computed, so they
act on μ_t: sftrl measures them in a pass of weight 0 over the same rollouts and demonstrations (one
extra forward and backward every f steps; nothing is added to the gradient), then weighs the step's
terms with μ_t. The step count t (the prior's argument, and the measuring cadence) counts updates from 1,
as verl's global_steps and CHORD's schedule do. Advantages use verl's std ε, 1e-6.
"""

from __future__ import annotations

import math

import torch

from ..data import Example

from .base import VERL_STD_EPS, Method, Metrics, Rollouts, State, StepContext, StepKind, TokenView, always, only
from .chord import mixed_backward, mu_schedule, sample, update_number

EPS = 1e-8  # the public controller's eps: floor of the variances and of the denominator


def trimmed_variance(values: list[float], trim_ratio: float) -> float:
    """Population variance after dropping the int(n·trim_ratio) lowest and highest values (none when
    n < 4), at least EPS; 0.0 for no values (the public controller's `_trimmed_variance`)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = int(len(ordered) * trim_ratio)
    if trim_ratio > 0 and len(ordered) >= 4 and k > 0 and 2 * k < len(ordered):
        ordered = ordered[k:-k]
    mean = sum(ordered) / len(ordered)
    return max(sum((v - mean) ** 2 for v in ordered) / len(ordered), EPS)


def row_statistics(view: TokenView, use_phi: bool) -> dict[str, torch.Tensor]:
    """Per row of a micro-batch: token-mean NLL (demonstration rows), token-mean advantage (rollout
    rows) and the token-mean of (A_t - φ_t)², A_t = 0 on demonstration rows; each (B,). An empty row's
    token means are 0 (the public code's masked means divide by the count + 1e-8)."""
    tokens = view.mask.sum(-1) + EPS  # (B,)
    phi = view.logps.exp() * (1.0 - view.logps.exp()) if use_phi else torch.ones_like(view.logps)  # (B, T)
    advantage = torch.zeros(view.logps.shape[0], device=view.logps.device) if view.advantages is None \
        else view.advantages * (~view.is_demo).float()  # (B,)
    mismatch = ((advantage.unsqueeze(1) - phi) ** 2 * view.mask).sum(-1) / tokens  # (B,)
    return {"nll": (-view.logps * view.mask).sum(-1) / tokens,  # (B,)
            "advantage": (advantage.unsqueeze(1) * view.mask).sum(-1) / tokens,  # (B,)
            "mismatch": mismatch}


def controller_mu(state: dict, config, step: int) -> dict[str, float]:
    """Advance μ by one step from the EMA statistics in `state` (updating state["mu"]); `step` is the
    template's global_step (counted from 1), the prior's argument. Returns what to log."""
    ema = state["ema"]
    delta_g2 = ema["delta_g2"] if ema["delta_g2"] is not None else 0.0
    sigma_s2 = ema["sigma_s2"] if ema["sigma_s2"] is not None else 1.0
    sigma_r2 = ema["sigma_r2"] if ema["sigma_r2"] is not None else 1.0
    capped = delta_g2
    if config.gac_delta_g2_cap > 0:
        capped = min(capped, config.gac_delta_g2_cap * (sigma_s2 + sigma_r2 + EPS))
    mu_star = (config.gac_alpha * capped + sigma_r2) / (capped + sigma_s2 + sigma_r2 + EPS)
    b, lo, hi = config.gac_ema, config.gac_mu_min, config.gac_mu_max
    mu_adaptive = min(max(b * state["mu"] + (1.0 - b) * mu_star, lo), hi)
    prior = mu_schedule(step, config.chord_mu_warmup_steps, config.chord_mu_decay_steps, config.chord_mu_peak,
                        config.chord_mu_valley)
    blend = config.gac_prior_weight
    candidate = (1.0 - blend) * prior + blend * mu_adaptive
    change = candidate - state["mu"]
    if abs(change) > config.gac_mu_change_cap:
        candidate = state["mu"] + math.copysign(config.gac_mu_change_cap, change)
    state["mu"] = min(max(candidate, lo), hi)
    return {"gac/mu": state["mu"], "gac/mu_star": mu_star, "gac/mu_adaptive": mu_adaptive, "gac/prior": prior,
            "gac/alpha": config.gac_alpha, "gac/delta_g2": delta_g2, "gac/sigma_s2": sigma_s2, "gac/sigma_r2": sigma_r2}


def update_ema(ema: dict, measured: dict[str, float], b: float) -> None:
    for key, value in measured.items():
        ema[key] = value if ema[key] is None else b * ema[key] + (1.0 - b) * value


def init_state(config, train_size: int) -> dict:
    return {"mu": config.gac_mu_init, "last_update": None,
            "ema": {"delta_g2": None, "sigma_s2": None, "sigma_r2": None}}


def measure(trainer: StepContext, rollouts: Rollouts, demos: list[Example]) -> dict[str, float]:
    """σ_r², σ_s² and Δg² of the step's rows, from a pass of weight 0 through both terms (the same
    forward as the weighted pass: no update comes between them); collective."""
    cfg = trainer.config
    rows: dict[str, list[float]] = {"demo_nll": [], "advantage": [], "mismatch": []}

    def observe(view: TokenView) -> None:
        stats = row_statistics(view, cfg.chord_phi)
        sft_rows = view.advantages is None
        rows["mismatch"] += stats["mismatch"].tolist()
        rows["demo_nll" if sft_rows else "advantage"] += stats["nll" if sft_rows else "advantage"].tolist()

    def no_loss(*, logps, old_logps, entropy, advantages, is_demo, **inputs):
        return logps * 0.0, {}

    trainer.policy_backward(rollouts, no_loss, weight=0.0, observe=observe, entropy_coef=0.0)
    trainer.sft_backward(demos, weight=0.0, observe=observe, temperature=cfg.temperature)
    a_count, a_sum, a_sq, m_count, m_sum = trainer.global_sums(
        [len(rows["advantage"]), sum(rows["advantage"]), sum(a * a for a in rows["advantage"]),
         len(rows["mismatch"]), sum(rows["mismatch"])])
    mean = a_sum / max(a_count, 1.0)
    return {"sigma_r2": max(a_sq / max(a_count, 1.0) - mean * mean, EPS) if a_count else 0.0,
            "sigma_s2": trimmed_variance(trainer.gather_rows(rows["demo_nll"]), cfg.gac_trim_ratio),
            "delta_g2": m_sum / m_count if m_count else 0.0}


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config
    global_step = update_number(trainer.step)
    due = state["last_update"] is None or global_step - state["last_update"] >= cfg.gac_update_every
    rollouts, demos = sample(trainer, examples)
    measured = {}
    if due:  # collective on every process alike: `due` depends on the step only
        # The template's order: update_stats with step t's batch, then compute_mu gives μ_t.
        measured = measure(trainer, rollouts, demos)
        update_ema(state["ema"], measured, cfg.gac_ema)
        state["last_update"] = global_step
    log = controller_mu(state, cfg, global_step)
    log.update({f"gac/measured_{key}": value for key, value in measured.items()})
    metrics = mixed_backward(trainer, rollouts, demos, state["mu"])
    return {**metrics, **log, "gac/updated": float(due)}


# CHORD-φ's loss every step: learning_rate, batch_size prompts (+ expert rows).
METHOD = Method(name="gac", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, init_state=init_state,
                advantage_std_eps=VERL_STD_EPS)
