"""HPT (arXiv 2509.04419; SuperRL, arXiv 2506.01096, is γ = 0): a per-prompt gate between SFT and GRPO.

Each step samples G rollouts per prompt. A prompt with k ≤ γ = `hpt_gate` correct rollouts (reward ≥ 1)
gets SFT on its demonstration and its rollouts are dropped; the others get GRPO with advantages over
their G rollouts only (the demonstration is never in the group). Both kinds share one optimizer step:
  L = (|B_RL|/|B|)·L_GRPO + c·(|B_SFT|/|B|)·L_SFT,
the mean over prompts of the paper's Eq. 13, αL_RL + βL_SFT with (α, β) ∈ {(1, 0), (0, 1)} (the authors
confirmed the coefficients are 0/1 in practice); c = `hpt_sft_coef`. Each term is normalised as its
paradigm is, over its own rows of the whole step (L_SFT: token mean over the SFT prompts'
demonstrations; L_GRPO: `loss_type` over the RL prompts' rollouts). The released code instead adds
c × (demonstration token mean) in every micro-batch that holds one; not copied. If every prompt goes one
way the step is pure SFT or plain GRPO (the rollouts are still sampled, for the gate).
"""

import torch

from .. import losses

from .base import Method, StepKind, always, only

# The released scripts' settings (a recipe or override wins); lr 5e-6 constant is in recipes/paper-hpt.yaml.
PRESET = {"loss_type": "dr_grpo", "scale_rewards": "none", "clip_ratio": False, "beta": 0.0, "entropy_coef": 0.001,
          "max_grad_norm": 1.0, "skip_update_grad_norm": 80.0}


def correct_counts(
    rewards: torch.Tensor,  # (P·G,) rewards, groups contiguous; NaN = unscorable
    group_size: int,
) -> torch.Tensor:
    """k per prompt: how many of its G rollouts are correct, reward ≥ 1 (a binary verifier's 1; the public
    code counts reward == 1); an unscorable rollout is not correct. (P,) int."""
    return (rewards >= 1.0).view(-1, group_size).sum(-1)


def hpt_gate(
    correct: torch.Tensor,  # (P,) correct rollouts per prompt
    gate: int,
) -> torch.Tensor:
    """True where the prompt goes to SFT: k ≤ γ (the 'switch' branch of the public
    `select_on_off_ada_balance` with switch_gate = switch_gate_off = γ). (P,) bool."""
    return correct <= gate


def step(trainer, state, examples, kind):
    cfg = trainer.config
    rollouts = trainer.rollouts(examples)
    group = rollouts.group_size
    correct = correct_counts(rollouts.rewards, group)  # (P,)
    to_sft = hpt_gate(correct, cfg.hpt_gate).tolist()
    n_sft, k_zero, k_all, n_correct = trainer.global_sums(
        [sum(to_sft), float((correct == 0).sum()), float((correct == group).sum()), float(correct.sum())])
    n = cfg.batch_size  # prompts of the step, over every process
    n_rl = n - n_sft
    sft_weight, rl_weight = cfg.hpt_sft_coef * n_sft / n, n_rl / n
    metrics = {"hpt/sft_prompts": n_sft, "hpt/rl_prompts": n_rl, "hpt/k0_prompts": k_zero, "hpt/kG_prompts": k_all,
               "hpt/accuracy": n_correct / (n * group), "hpt/sft_weight": sft_weight, "hpt/rl_weight": rl_weight,
               **rollouts.metrics}
    # The decisions below are on global counts, so every process runs the same collectives.
    if n_sft > 0:
        metrics.update(trainer.sft_backward([e for e, sft in zip(examples, to_sft) if sft], weight=sft_weight))
    if n_rl > 0:
        def grpo_loss(logps, old_logps, entropy, advantages, is_demo):
            return losses.grpo_token_loss(logps, old_logps, advantages, cfg.epsilon, cfg.epsilon_high,
                                          clip=cfg.clip_ratio)

        kept = rollouts.select([i for i, sft in enumerate(to_sft) if not sft])
        metrics.update(trainer.policy_backward(kept, grpo_loss, weight=rl_weight))
    return metrics


# Rollouts every step, one optimizer step at learning_rate.
METHOD = Method(name="hpt", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, preset=PRESET)
