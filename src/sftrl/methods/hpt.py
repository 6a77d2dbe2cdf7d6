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
As in the released actor (hpt/verl/verl/mix_src/mix_actor.py, lines 133 and 436), every row is scored
at the rollout temperature, demonstrations included, and the entropy bonus is one token mean over
every row the step trains on, the SFT prompts' demonstrations and the RL prompts' rollouts alike:
  L -= entropy_coef · (Σ_demo H_t + Σ_rollout H_t) / (demonstration + rollout tokens),
not scaled by either term's weight. The std ε of the advantages is verl's, 1e-6.
"""

import torch

from ..batching import counted_tokens
from ..data import Example

from .base import VERL_STD_EPS, Method, Metrics, State, StepContext, StepKind, always, grpo_loss, only

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


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
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
    sft_rows = [e for e, sft in zip(examples, to_sft) if sft]
    kept = rollouts.select([i for i, sft in enumerate(to_sft) if not sft])
    # The entropy bonus's normaliser: every token the step trains on, as the released actor's
    # masked_mean(entropy, response_mask) over the whole (micro-)batch.
    excluded = kept.truncated.tolist() if cfg.mask_truncated_completions else [False] * len(kept.target_ids)
    demo_tokens, rollout_tokens = trainer.global_sums(
        [sum(len(trainer.demonstration_ids(e)[0]) for e in sft_rows), counted_tokens(kept.target_ids, excluded)])
    entropy_tokens = int(demo_tokens + rollout_tokens)
    if n_sft > 0:
        metrics.update(trainer.sft_backward(sft_rows, weight=sft_weight, entropy_coef=cfg.entropy_coef,
                                            temperature=cfg.temperature, entropy_tokens=entropy_tokens))
    if n_rl > 0:

        metrics.update(trainer.policy_backward(kept, grpo_loss(cfg), weight=rl_weight, entropy_tokens=entropy_tokens))
    return metrics


# Rollouts every step, one optimizer step at learning_rate.
METHOD = Method(name="hpt", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True, preset=PRESET, advantage_std_eps=VERL_STD_EPS)
