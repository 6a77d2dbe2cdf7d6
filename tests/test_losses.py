"""Each loss against a naive per-token loop, and the normalisation that makes accumulation exact."""

import math

import pytest
import torch

from sftrl import losses


def naive_logprob_entropy(logits, tokens, temperature):
    B, T, V = logits.shape
    logps = torch.zeros(B, T)
    ent = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            z = [float(logits[b, t, v]) / temperature for v in range(V)]
            m = max(z)
            log_norm = m + math.log(sum(math.exp(x - m) for x in z))
            logps[b, t] = z[int(tokens[b, t])] - log_norm
            ent[b, t] = -sum(math.exp(x - log_norm) * (x - log_norm) for x in z)
    return logps, ent


@pytest.mark.float_sensitive
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_and_entropy_match_naive(temperature):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g) * 3
    tokens = torch.randint(0, 7, (3, 5), generator=g)
    logps, ent = losses.token_logprobs_and_entropy(logits, tokens, temperature)
    ref_logps, ref_ent = naive_logprob_entropy(logits, tokens, temperature)
    torch.testing.assert_close(logps, ref_logps, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent, ref_ent, atol=1e-5, rtol=1e-5)
    # uniform logits: entropy is log V exactly
    _, uniform = losses.token_logprobs_and_entropy(torch.zeros(1, 1, 7), torch.zeros(1, 1, dtype=torch.long))
    assert float(uniform) == pytest.approx(math.log(7), abs=1e-6)


@pytest.mark.float_sensitive
def test_group_advantages_match_naive():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.5])
    G = 4
    adv, std = losses.group_advantages(rewards, G, "group")
    for g in range(2):
        group = [float(r) for r in rewards[g * G:(g + 1) * G]]
        mean = sum(group) / G
        sd = math.sqrt(sum((r - mean) ** 2 for r in group) / (G - 1))
        assert float(std[g]) == pytest.approx(sd, abs=1e-6)
        for i, r in enumerate(group):
            assert float(adv[g * G + i]) == pytest.approx((r - mean) / (sd + 1e-4), abs=1e-5)
    # the first group [1,0,0,1]: mean .5, sample std 0.57735
    assert float(adv[0]) == pytest.approx(0.5 / (0.5773503 + 1e-4), abs=1e-5)
    none, _ = losses.group_advantages(rewards, G, "none")
    assert none.tolist() == pytest.approx([0.5, -0.5, -0.5, 0.5, 0.375, 0.375, -0.625, -0.125])
    batch, _ = losses.group_advantages(rewards, G, "batch")
    torch.testing.assert_close(batch, none / (rewards.std() + 1e-4))
    # an all-equal group gives zero advantages, not NaN
    flat, flat_std = losses.group_advantages(torch.ones(4), 4, "group")
    assert flat.tolist() == [0.0] * 4 and float(flat_std[0]) == 0.0
    with pytest.raises(ValueError, match="groups of 3"):
        losses.group_advantages(rewards, 3)
    with pytest.raises(ValueError, match="scale_rewards"):
        losses.group_advantages(rewards, 4, "std")


@pytest.mark.float_sensitive
def test_k3_kl_matches_formula_and_is_nonnegative():
    logps = torch.tensor([[-1.0, -2.0, -0.1]])
    ref = torch.tensor([[-1.5, -2.0, -3.0]])
    kl = losses.k3_kl(logps, ref)
    for t in range(3):
        d = float(ref[0, t] - logps[0, t])
        assert float(kl[0, t]) == pytest.approx(math.exp(d) - d - 1, rel=1e-6)
    assert float(kl[0, 1]) == 0.0 and bool((kl >= 0).all())


def naive_grpo(logps, old, adv, eps_lo, eps_hi, ref, beta):
    B, T = logps.shape
    out = torch.zeros(B, T)
    for b in range(B):
        for t in range(T):
            ratio = math.exp(float(logps[b, t] - old[b, t]))
            a = float(adv[b])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            loss = -min(ratio * a, clipped * a)
            if beta:
                d = float(ref[b, t] - logps[b, t])
                loss += beta * (math.exp(d) - d - 1)
            out[b, t] = loss
    return out


@pytest.mark.float_sensitive
@pytest.mark.parametrize("eps_hi,beta", [(None, 0.0), (0.28, 0.0), (0.28, 0.04)])
def test_grpo_token_loss_matches_naive(eps_hi, beta):
    g = torch.Generator().manual_seed(1)
    old = -torch.rand(4, 6, generator=g) * 3
    logps = old + torch.randn(4, 6, generator=g) * 0.4  # ratios well outside [0.8, 1.28]: clipping happens
    ref = old + torch.randn(4, 6, generator=g) * 0.2
    adv = torch.tensor([1.5, -0.7, 0.0, -2.0])
    loss, stats = losses.grpo_token_loss(logps, old, adv, 0.2, eps_hi, ref, beta)
    expected = naive_grpo(logps, old, adv, 0.2, eps_hi if eps_hi is not None else 0.2, ref, beta)
    torch.testing.assert_close(loss, expected, atol=1e-5, rtol=1e-5)
    hi = eps_hi if eps_hi is not None else 0.2
    ratio = torch.exp(logps - old)
    assert stats["low_clipped"].sum() == ((ratio < 0.8) & (adv[:, None] < 0)).sum() > 0
    assert stats["high_clipped"].sum() == ((ratio > 1 + hi) & (adv[:, None] > 0)).sum() > 0
    assert ("kl" in stats) == (beta > 0)


@pytest.mark.float_sensitive
def test_grpo_gradient_on_policy_is_minus_advantage():
    """With π_old = π_θ (one update per batch) d l_t / d logp_t = -A: the REINFORCE gradient."""
    logps = torch.tensor([[-0.5, -1.0], [-2.0, -0.3]], requires_grad=True)
    adv = torch.tensor([0.8, -1.2])
    loss, _ = losses.grpo_token_loss(logps, logps.detach(), adv)
    loss.sum().backward()
    torch.testing.assert_close(logps.grad, -adv[:, None].expand(2, 2))


def naive_reduce(token_loss, mask, loss_type, L):
    B, T = token_loss.shape
    if loss_type == "grpo":
        total = 0.0
        for b in range(B):
            n = sum(float(mask[b, t]) for t in range(T))
            total += sum(float(token_loss[b, t] * mask[b, t]) for t in range(T)) / max(n, 1)
        return total / B
    s = sum(float(token_loss[b, t] * mask[b, t]) for b in range(B) for t in range(T))
    if loss_type in ("dapo", "bnpo"):
        return s / sum(float(m) for m in mask.flatten())
    return s / (B * L)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "bnpo", "dr_grpo"])
def test_reduce_matches_naive_and_micro_batches_sum_to_big_batch(loss_type):
    g = torch.Generator().manual_seed(2)
    token_loss = torch.randn(6, 5, generator=g)
    lengths = [5, 1, 3, 4, 2, 5]
    mask = torch.tensor([[1.0] * n + [0.0] * (5 - n) for n in lengths])
    n_tokens = int(mask.sum())
    full = losses.reduce_token_loss(token_loss, mask, loss_type, 6, n_tokens, 8)
    assert float(full) == pytest.approx(naive_reduce(token_loss, mask, loss_type, 8), rel=1e-6)
    parts = sum(losses.reduce_token_loss(token_loss[i:i + 2], mask[i:i + 2], loss_type, 6, n_tokens, 8)
                for i in range(0, 6, 2))
    assert float(parts) == pytest.approx(float(full), rel=1e-6)


def test_reduce_rejects_unknown_type_and_dr_grpo_without_length():
    with pytest.raises(ValueError, match="loss_type"):
        losses.reduce_token_loss(torch.ones(1, 1), torch.ones(1, 1), "ppo", 1, 1)
    with pytest.raises(ValueError, match="max_completion_length"):
        losses.reduce_token_loss(torch.ones(1, 1), torch.ones(1, 1), "dr_grpo", 1, 1)


def test_sft_loss_is_token_mean_nll():
    logps = torch.tensor([[-1.0, -2.0, -9.0], [-0.5, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(losses.sft_loss(logps, mask, 3)) == pytest.approx((1.0 + 2.0 + 0.5) / 3)
    # a micro-batch's share uses the step's token count, so shares add up
    share = losses.sft_loss(logps[:1], mask[:1], 3) + losses.sft_loss(logps[1:], mask[1:], 3)
    assert float(share) == pytest.approx(3.5 / 3)


@pytest.mark.float_sensitive
def test_entropy_bonus_is_the_step_token_mean_and_micro_batches_sum_to_it():
    g = torch.Generator().manual_seed(4)
    entropy = (torch.rand(5, 6, generator=g) * 2).requires_grad_()
    mask = (torch.rand(5, 6, generator=g) > 0.3).float()
    step_tokens = int(mask.sum())
    naive = sum(float(entropy[b, t].detach()) for b in range(5) for t in range(6) if mask[b, t]) / step_tokens
    whole = losses.entropy_bonus(entropy, mask, step_tokens)
    assert float(whole) == pytest.approx(naive, rel=1e-6)
    parts = losses.entropy_bonus(entropy[:2], mask[:2], step_tokens) + losses.entropy_bonus(entropy[2:], mask[2:], step_tokens)
    assert float(parts) == pytest.approx(naive, rel=1e-6)
    whole.backward()
    torch.testing.assert_close(entropy.grad, mask / step_tokens)  # every counted token weighs the same


def test_bnpo_is_the_step_token_mean_where_trl_takes_a_mean_of_micro_batch_means():
    """Documented difference (ALGORITHMS.md): TRL's bnpo divides each micro-batch by its own token count
    and averages over accumulation steps; sftrl's divides by the whole step's count (= dapo)."""
    token_loss = torch.tensor([[1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0]])  # 4 tokens, then 1 token
    ours = sum(losses.reduce_token_loss(token_loss[i:i + 1], mask[i:i + 1], "bnpo", 2, 5) for i in range(2))
    assert float(ours) == pytest.approx((4 * 1.0 + 3.0) / 5)  # token mean over the step: 1.4
    assert float(ours) == pytest.approx(float(losses.reduce_token_loss(token_loss, mask, "dapo", 2, 5)), rel=1e-6)
    trl = sum(float((token_loss[i] * mask[i]).sum() / mask[i].sum()) / 2 for i in range(2))  # TRL, 2 accumulation steps
    assert trl == pytest.approx((1.0 + 3.0) / 2) and trl != pytest.approx(float(ours))
