"""Loss functions: pure, shape-commented, each parity-tested against a naive per-token loop.

Shapes: ``B`` sequences in a micro-batch, ``T`` completion (or demonstration) tokens, ``V`` vocabulary.
``mask`` is 1.0 on tokens that count and 0.0 on padding (and on truncated completions when
``mask_truncated_completions`` is on).

Normalisation is never "per micro-batch": every reducer takes the counts of the *whole optimizer
step* (all micro-batches, all data-parallel ranks), so accumulating micro-batch gradients gives
exactly the gradient of one big batch (ALGORITHMS.md; arXiv 2604.23747 shows what goes wrong otherwise).
"""

from __future__ import annotations

import torch

from .config import LOSS_TYPES, SCALE_REWARDS, SRFT_VARIANTS


def token_logprobs_and_entropy(
    logits: torch.Tensor,  # (B, T, V) logits that predict `tokens`
    tokens: torch.Tensor,  # (B, T) the tokens whose log-probabilities we want
    temperature: float = 1.0,
    with_entropy: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log π(token) and full-vocabulary entropy H_t from the same (temperature-scaled) logits.

    Rollouts are sampled at `temperature`, so the policy being optimised is softmax(logits / T)
    (as in TRL); SFT calls this with temperature 1.
    """
    logits = logits.float() / temperature  # (B, T, V); float32 for a stable logsumexp under bf16
    log_z = torch.logsumexp(logits, dim=-1)  # (B, T)
    logps = logits.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) - log_z  # (B, T)
    if not with_entropy:
        return logps, None
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    entropy = log_z - (probs * logits).sum(-1)  # (B, T): H = log Z - E_p[logit]
    return logps, entropy


def nanstd(values: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Standard deviation ignoring NaNs, Bessel-corrected, NaN below two values (TRL's ``nanstd``)."""
    mean = torch.nanmean(values, dim=dim, keepdim=True)
    variance = torch.nanmean((values - mean) ** 2, dim=dim, keepdim=True)
    count = (~values.isnan()).sum(dim=dim, keepdim=True).to(variance.dtype)  # int / int would be float32
    correction = torch.where(count > 1, count / (count - 1).clamp(min=1), torch.full_like(variance, float("nan")))
    std = torch.sqrt(variance * correction)
    return std.squeeze(dim) if dim is not None else std.reshape(())


def group_advantages(
    rewards: torch.Tensor,  # (N,) with N = num_groups * group_size, groups contiguous; NaN = unscorable
    group_size: int,
    scale_rewards: str = "group",
    eps: float = 1e-4,
) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO advantages A_i = (r_i - mean_group(r)) / (std + eps) (DeepSeekMath Eq. 3; TRL semantics).

    eps: TRL's 1e-4 by default; the trainer passes the method's (verl's and Trinity-RFT's 1e-6 for CHORD,
    HPT, GAC and LUFFY; `Method.std_eps`).

    scale_rewards: "group" divides by the group's std, "batch" by the whole batch's std (PPO-Lite),
    "none" does not divide (Dr. GRPO). Std is the unbiased one, as torch/TRL compute it.
    A NaN reward (every reward function returned None) is left out of the means and stds, and its
    advantage is 0, as in TRL 1.16; so is the advantage in a group with fewer than two scorable rows.
    Returns (advantages (N,), per-group std (num_groups,), NaN where undefined).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards must be one of {SCALE_REWARDS}, got {scale_rewards!r}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    grouped = rewards.view(-1, group_size)  # (G_count, group_size)
    group_mean = torch.nanmean(grouped, dim=1, keepdim=True)  # (G_count, 1)
    group_std = nanstd(grouped, dim=1) if group_size > 1 else torch.zeros(grouped.shape[0])  # (G_count,)
    advantages = (grouped - group_mean).view(-1)  # (N,)
    if scale_rewards == "group":
        advantages = advantages / (group_std.repeat_interleave(group_size) + eps)
    elif scale_rewards == "batch":
        advantages = advantages / (nanstd(rewards) + eps)
    return torch.nan_to_num(advantages, nan=0.0), group_std


def k3_kl(
    logps: torch.Tensor,  # (B, T) log π_θ
    ref_logps: torch.Tensor,  # (B, T) log π_ref
) -> torch.Tensor:
    """Per-token k3 estimator of KL(π_θ ‖ π_ref): exp(ref - logp) - (ref - logp) - 1 ≥ 0 (Schulman 2020)."""
    delta = ref_logps - logps  # (B, T)
    return torch.exp(delta) - delta - 1.0


def grpo_token_loss(
    logps: torch.Tensor,  # (B, T) log π_θ of the sampled tokens (with grad)
    old_logps: torch.Tensor,  # (B, T) log π_old at sampling time (no grad)
    advantages: torch.Tensor,  # (B,) one advantage per sequence, or (B, T) one per token (Prefix-RFT)
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    ref_logps: torch.Tensor | None = None,  # (B, T) log π_ref, needed when beta > 0
    beta: float = 0.0,
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped-surrogate GRPO loss per token, plus β·KL_k3 (DeepSeekMath Eq. 3; TRL's `_compute_loss`).

    l_t = -min(ρ_t A, clip(ρ_t, 1-ε, 1+ε_high) A) + β KL_t, with ρ_t = π_θ/π_old;
    clip=False gives -ρ_t A (LUFFY's released code trains without clipping).
    Returns (per-token loss (B, T), per-token diagnostics: low/high clipped indicators and KL).
    """
    eps_high = epsilon if epsilon_high is None else epsilon_high
    ratio = torch.exp(logps - old_logps)  # (B, T)
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages  # (B, 1) or (B, T)
    if clip:
        clipped = torch.clamp(ratio, 1.0 - epsilon, 1.0 + eps_high)  # (B, T)
        loss = -torch.min(ratio * adv, clipped * adv)  # (B, T)
    else:
        loss = -ratio * adv  # (B, T)
    stats = {
        "low_clipped": ((ratio < 1.0 - epsilon) & (adv < 0) & clip).float(),
        "high_clipped": ((ratio > 1.0 + eps_high) & (adv > 0) & clip).float(),
    }
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta > 0 needs ref_logps")
        kl = k3_kl(logps, ref_logps)  # (B, T)
        loss = loss + beta * kl
        stats["kl"] = kl.detach()
    return loss, stats


def top_entropy_mask(
    entropy: torch.Tensor,  # (B, T) per-token entropy H_t
    candidates: torch.Tensor,  # (B, T) bool: the tokens ranked (Prefix-RFT: the prefix tokens)
    keep: float,  # share of the candidates kept, highest entropy first
) -> torch.Tensor:
    """(B, T) bool: the candidates outside the lowest-entropy int(n·(1 - keep)) of the n candidates, ranked
    together over the whole tensor (Prefix-RFT's `reshape_func` "entropy": sort the micro-batch's prefix
    entropies ascending, zero the advantages of the first int(n · mask_ratio), mask_ratio = 0.8). Ties are
    broken by position, first lowest (a stable sort)."""
    values = entropy[candidates]  # (n,) in row-major order
    dropped = int(values.numel() * (1.0 - keep))
    order = torch.sort(values, stable=True).indices  # ascending
    kept = torch.ones_like(values, dtype=torch.bool)
    kept[order[:dropped]] = False
    out = torch.zeros_like(candidates, dtype=torch.bool)
    out[candidates] = kept
    return out


def prefix_token_advantages(
    advantages: torch.Tensor,  # (B,) each sequence's advantage (its sampled tokens')
    prefix: torch.Tensor,  # (B, T) bool: the target tokens that are a demonstration's prefix (leading ones)
    prefix_advantages: torch.Tensor,  # (B, T) the advantage of those prefix tokens (read on them only)
    entropy: torch.Tensor,  # (B, T) per-token entropy, for the selection
    keep: float,  # Prefix-RFT: 0.2
) -> torch.Tensor:
    """(B, T) per-token advantages for Prefix-RFT: a row's sampled tokens get its advantage; its prefix
    tokens get the prefix advantage when among the top-`keep` entropies of the batch's prefix tokens,
    else 0 (they still count in the loss's normaliser, as in the released code)."""
    selected = top_entropy_mask(entropy.detach(), prefix, keep)  # (B, T)
    out = advantages.unsqueeze(1).expand_as(entropy).clone()  # (B, T)
    out[prefix] = 0.0
    return torch.where(selected, prefix_advantages, out)


def prefix_rft_advantages(
    plain_rewards: torch.Tensor,  # (P, G) the G plain rollouts' rewards of each of P prompts, NaN: unscorable
    prefixed_rewards: torch.Tensor,  # (P,) the reward of each prompt's one prefixed rollout
    eps: float = 1e-6,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantage of the prefixed rollout's sampled tokens, of its prefix tokens), both (P,), as Prefix-RFT's
    `compute_grpo_prefix_outcome_advantage` with one prefixed rollout per prompt: the prefixed rollout is a
    group of one (mean 0, std 1), so its sampled tokens get r/(1 + ε); its prefix tokens get that minus the
    mean reward of the prompt's plain rollouts. An unscorable reward gives 0."""
    scored = (prefixed_rewards - 0.0) / (1.0 + eps)  # (P,)
    plain_mean = torch.nan_to_num(torch.nanmean(plain_rewards, dim=1))  # (P,)
    prefix = torch.nan_to_num(scored - plain_mean)
    return torch.nan_to_num(scored), prefix


def reduce_token_loss(
    token_loss: torch.Tensor,  # (B, T) per-token loss of this micro-batch
    mask: torch.Tensor,  # (B, T) 1.0 where the token counts
    loss_type: str,
    step_sequences: float,  # sequences in the whole optimizer step (all micro-batches, all ranks)
    step_tokens: float,  # mask.sum() over the whole optimizer step
    max_completion_length: int | None = None,
) -> torch.Tensor:
    """This micro-batch's share of the step's loss, normalised by whole-step counts (ALGORITHMS.md).

    grpo: mean over each sequence's tokens, then mean over sequences.
    dapo / bnpo: token mean over the step. TRL's bnpo is different under gradient accumulation: it
        takes each micro-batch's token mean and averages those (a mean of means, which weights a
        token by 1/its micro-batch's token count); sftrl's bnpo is dapo, so that accumulation never
        changes the gradient (ALGORITHMS.md). Without accumulation and on one process they agree.
    dr_grpo: token sum / (sequences · max_completion_length) (Dr. GRPO, arXiv 2503.20783).
    Summing the returned values over all micro-batches gives the big-batch loss exactly.
    """
    masked = token_loss * mask  # (B, T)
    if loss_type == "grpo":
        per_sequence = masked.sum(-1) / mask.sum(-1).clamp(min=1.0)  # (B,)
        return per_sequence.sum() / max(step_sequences, 1)
    if loss_type in ("dapo", "bnpo"):
        return masked.sum() / max(step_tokens, 1)
    if loss_type == "dr_grpo":
        if not max_completion_length:
            raise ValueError("loss_type 'dr_grpo' needs max_completion_length")
        return masked.sum() / (max(step_sequences, 1) * max_completion_length)
    raise ValueError(f"loss_type must be one of {LOSS_TYPES}, got {loss_type!r}")


def entropy_bonus(
    entropy: torch.Tensor,  # (B, T) per-token entropy H_t of π_θ (with grad)
    mask: torch.Tensor,  # (B, T) 1.0 where the token counts
    step_tokens: float,  # mask.sum() over the whole optimizer step
) -> torch.Tensor:
    """This micro-batch's share of the step's mean token entropy, Σ H_t / (step's tokens).

    One normalisation whatever the `loss_type` (TRL 1.16's: the entropy term is a token mean over the
    tokens the policy loss acts on, never the loss type's normaliser); over the whole step, so
    accumulation gives the big-batch value. The loss subtracts entropy_coef times it.
    """
    return (entropy * mask).sum() / max(step_tokens, 1)


def sft_loss(
    logps: torch.Tensor,  # (B, T) log π_θ of demonstration tokens
    mask: torch.Tensor,  # (B, T)
    step_tokens: float,  # demonstration tokens in the whole optimizer step
    weights: torch.Tensor | None = None,  # (B, T) per-token weights, treated as constants (SRFT's w_SFT)
) -> torch.Tensor:
    """Token-mean negative log-likelihood of demonstrations over the whole step: -Σ w_t log π(d_t) / N_tokens."""
    nll = -logps * mask  # (B, T)
    if weights is not None:
        nll = nll * weights.detach()
    return nll.sum() / max(step_tokens, 1)


def exact_kl(
    logits: torch.Tensor,  # (B, T, V) policy logits (temperature already applied)
    ref_logits: torch.Tensor,  # (B, T, V) reference logits, same scaling
) -> torch.Tensor:
    """Full-vocabulary KL(π_θ ‖ π_ref) at every position: Σ_v π_θ(v) (log π_θ(v) - log π_ref(v)), shape (B, T).

    Exact, so it is meaningful on demonstration tokens too (k3 is an estimator that needs tokens
    sampled from π_θ); SASR logs it every step and RL→SFT_KL trains on it.
    """
    logp = torch.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    ref_logp = torch.log_softmax(ref_logits.float(), dim=-1)  # (B, T, V)
    return (logp.exp() * (logp - ref_logp)).sum(-1)  # (B, T)


def off_policy_token_loss(
    logps: torch.Tensor,  # (B, T) log π_θ of demonstration tokens (with grad)
    advantages: torch.Tensor,  # (B,) the demonstrations' advantages inside their groups
    shaping_gamma: float | None = None,
) -> torch.Tensor:
    """Off-policy term on demonstrations, ratio against π_β := 1 and no clipping: -A · f(π_θ(d_t)), (B, T).

    f(p) = p (SRFT Eq. 9-10) or, with shaping_gamma = γ, LUFFY's policy shaping f(p) = p / (p + γ)
    (LUFFY Eq. 6), which boosts the gradient of low-probability demonstration tokens.
    """
    probs = logps.exp()  # (B, T)
    shaped = probs if shaping_gamma is None else probs / (probs + shaping_gamma)  # (B, T)
    return -advantages.unsqueeze(1) * shaped


def srft_sft_weights(
    entropy: torch.Tensor,  # (B, T) per-token entropy H_t of π_θ on the demonstration
    variant: str = "paper",
    scale: float = 0.5,
) -> torch.Tensor:
    """SRFT's w_SFT = 0.5 · sg(exp(-H_t)) (Eq. 8; paper) or 0.5 · sg(exp(+H_t)) (released code), (B, T)."""
    if variant not in SRFT_VARIANTS:
        raise ValueError(f"SRFT variant must be one of {SRFT_VARIANTS}, got {variant!r}")
    sign = -1.0 if variant == "paper" else 1.0
    return scale * torch.exp(sign * entropy.detach())


def srft_rl_weights(
    entropy: torch.Tensor,  # (B, T) per-token entropy H_t of π_θ on the rollouts
    scale: float = 0.1,
) -> torch.Tensor:
    """SRFT's w_RL = 0.1 · sg(exp(H_t)) for positive-advantage rollouts (Eq. 12), (B, T)."""
    return scale * torch.exp(entropy.detach())


def chord_phi_weights(
    logps: torch.Tensor,  # (B, T) log π_θ of demonstration tokens
) -> torch.Tensor:
    """CHORD's per-token weight φ_t = sg(p_t (1 - p_t)), p_t = π_θ(d_t | x, d_<t), (B, T) (CHORD-φ,
    arXiv 2508.11408; Trinity-RFT's `phi_function`): largest at p = 0.5, so tokens the policy already
    predicts (p → 1) or finds implausible (p → 0) pull on it least. A constant: no gradient flows through it."""
    probs = logps.detach().exp()  # (B, T)
    return probs * (1.0 - probs)


def mixed_policy_token_loss(
    logps: torch.Tensor,  # (B, T) log π_θ (with grad) of rollouts and demonstrations
    old_logps: torch.Tensor,  # (B, T) log π_old at sampling time (no grad); unused on demonstration rows
    advantages: torch.Tensor,  # (B,) advantages over each (augmented) group
    is_demo: torch.Tensor,  # (B,) bool, True on demonstration rows
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip: bool = True,
    shaping_gamma: float | None = None,
    positive_weights: torch.Tensor | None = None,  # (B, T) weights on positive-advantage rollouts (SRFT w_RL)
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GRPO with demonstrations inside the groups (LUFFY, SRFT), per token, (B, T).

    Rollout rows: the (clipped) surrogate of `grpo_token_loss`; with `positive_weights`, rows with
    A > 0 are multiplied by them (stop-gradient) and rows with A <= 0 are not (SRFT Eq. 11-12).
    Demonstration rows: `off_policy_token_loss` (no ratio to π_old, no clipping).
    """
    on_policy, stats = grpo_token_loss(logps, old_logps, advantages, epsilon, epsilon_high, clip=clip)  # (B, T)
    if positive_weights is not None:
        positive = (advantages > 0).unsqueeze(1)  # (B, 1)
        on_policy = torch.where(positive, on_policy * positive_weights.detach(), on_policy)
    off_policy = off_policy_token_loss(logps, advantages, shaping_gamma)  # (B, T)
    demo = is_demo.unsqueeze(1)  # (B, 1)
    loss = torch.where(demo, off_policy, on_policy)  # (B, T)
    stats = {key: value * (~demo) for key, value in stats.items()}
    return loss, stats


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> float:
    """Mean of `values` over tokens where mask is 1 (a logging helper; 0.0 when nothing is masked in)."""
    total = mask.sum()
    return float((values * mask).sum() / total) if total > 0 else 0.0


def dft_weights(
    logps: torch.Tensor,  # (B, T) log π_θ of demonstration tokens
) -> torch.Tensor:
    """DFT's per-token weight sg(p_t), p_t = π_θ(d_t | x, d_<t), (B, T) (Dynamic Fine-Tuning, arXiv 2508.05629;
    TRL 1.16's SFTTrainer with loss_type="dft": per_token_loss · log_probs.exp().detach()). With `sft_loss` it
    gives -Σ sg(p_t) log p_t / (the step's demonstration tokens). A constant: no gradient flows through it."""
    return logps.detach().exp()


def clamped_k3_kl(
    logps: torch.Tensor,  # (B, T) log π_θ of the target tokens (with grad)
    ref_logps: torch.Tensor,  # (B, T) log π_ref of the same tokens (no grad)
    input_clamp: float | None = 20.0,
    output_clamp: float | None = 10.0,
) -> torch.Tensor:
    """k3 estimator of KL(π_θ ‖ π_ref) per token with NeMo-RL's clamps (nemo_rl/algorithms/utils.py
    `calculate_kl`): r = clamp(log π_ref - log π_θ, ±input_clamp), k3 = exp(r) - 1 - r, clamped to
    ±output_clamp; None = no clamp. (B, T). Where a clamp binds, the token has no KL gradient."""
    logr = ref_logps - logps  # (B, T)
    if input_clamp is not None:
        logr = logr.clamp(min=-input_clamp, max=input_clamp)
    kl = torch.exp(logr) - 1.0 - logr  # (B, T)
    if output_clamp is not None:
        kl = kl.clamp(min=-output_clamp, max=output_clamp)
    return kl


def asft_token_loss(
    logps: torch.Tensor,  # (B, T) log π_θ of demonstration tokens (with grad)
    ref_logps: torch.Tensor | None,  # (B, T) log π_ref of the same tokens; None when kl_coef is 0
    kl_coef: float = 0.03,
    input_clamp: float | None = 20.0,
    output_clamp: float | None = 10.0,
) -> torch.Tensor:
    """ASFT's per-token loss (Anchored SFT, arXiv 2509.23753; NeMo-RL's ASFTLossFn): the DFT term
    -sg(p_t) log p_t plus λ·k3 KL(π_θ‖π_ref) on the demonstration tokens (`clamped_k3_kl`), (B, T).
    Reduce it with `token_mean` over the step's demonstration tokens."""
    loss = -dft_weights(logps) * logps  # (B, T)
    if kl_coef == 0.0:
        return loss
    if ref_logps is None:
        raise ValueError("asft_token_loss with kl_coef > 0 needs ref_logps")
    return loss + kl_coef * clamped_k3_kl(logps, ref_logps, input_clamp, output_clamp)


def token_mean(
    token_loss: torch.Tensor,  # (B, T) per-token loss of this micro-batch
    mask: torch.Tensor,  # (B, T) 1.0 where the token counts
    step_tokens: float,  # mask.sum() over the whole optimizer step (all micro-batches, all ranks)
) -> torch.Tensor:
    """This micro-batch's share of the step's token mean, Σ l_t / (step's tokens): summed over the
    micro-batches (and ranks) it is the big batch's token mean exactly."""
    return (token_loss * mask).sum() / max(step_tokens, 1)


def distillation_token_loss(
    logps: torch.Tensor,  # (B, T) log π_θ (the student) of its own sampled tokens (with grad)
    old_logps: torch.Tensor,  # (B, T) log π_old at sampling time (no grad)
    teacher_logps: torch.Tensor,  # (B, T) log π_T of the same tokens, in the teacher's context (no grad)
    advantages: torch.Tensor | None = None,  # (B,) the task reward's group advantages; used when reward_coef != 0
    reward_coef: float = 0.0,
    epsilon: float = 0.2,
    epsilon_high: float | None = None,
    clip: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """On-policy distillation per token (OPSD, arXiv 2601.18734; GKD, arXiv 2306.13649, reverse KL on the
    student's samples): the per-token advantage A_t = sg(log π_T(y_t) - log π_old(y_t)) + w·A (w =
    reward_coef, A the sequence's task-reward advantage) in the clipped surrogate of `grpo_token_loss`,
    l_t = -min(ρ_t A_t, clip(ρ_t) A_t). With one update per batch (ρ = 1) its value is the k1 estimate
    log π_θ - log π_T of the reverse KL and its gradient (log π_θ - log π_T)·∇log π_θ: TRL's
    sampled_token self-distillation loss and verl's k1 distillation with use_policy_gradient. (B, T).
    Stats: `reverse_kl` (the k1 estimate, detached) and the clip indicators.
    """
    token_advantages = (teacher_logps - old_logps).detach()  # (B, T)
    if reward_coef != 0.0:
        if advantages is None:
            raise ValueError("distillation_token_loss with reward_coef != 0 needs advantages")
        token_advantages = token_advantages + reward_coef * advantages.unsqueeze(1)
    loss, stats = grpo_token_loss(logps, old_logps, token_advantages, epsilon, epsilon_high, clip=clip)  # (B, T)
    return loss, {"reverse_kl": (logps - teacher_logps).detach(), **stats}
