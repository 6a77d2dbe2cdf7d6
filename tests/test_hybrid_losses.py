"""The hybrid methods' losses (LUFFY, SRFT, RL→SFT_KL) against naive per-token loops, gradients included."""

import math

import pytest
import torch

from sftrl import losses


def make_inputs(seed=0, B=4, T=5):
    g = torch.Generator().manual_seed(seed)
    logps = (-torch.rand(B, T, generator=g) * 3).requires_grad_()
    entropy = torch.rand(B, T, generator=g) * 2
    advantages = torch.tensor([1.5, -0.5, 0.0, -1.0])[:B]
    is_demo = torch.tensor([False, False, False, True])[:B]
    return logps, entropy, advantages, is_demo


def test_exact_kl_matches_naive_sum_over_vocabulary():
    g = torch.Generator().manual_seed(1)
    logits, ref = torch.randn(2, 3, 6, generator=g) * 2, torch.randn(2, 3, 6, generator=g) * 2
    kl = losses.exact_kl(logits, ref)
    for b in range(2):
        for t in range(3):
            p = torch.softmax(logits[b, t], -1).tolist()
            q = torch.softmax(ref[b, t], -1).tolist()
            naive = sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))
            assert float(kl[b, t]) == pytest.approx(naive, abs=1e-5)
    assert torch.allclose(losses.exact_kl(logits, logits), torch.zeros(2, 3), atol=1e-6)
    assert (kl >= 0).all()


@pytest.mark.parametrize("gamma", [None, 0.1])
def test_off_policy_term_and_its_gradient(gamma):
    logps, _, advantages, _ = make_inputs()
    loss = losses.off_policy_token_loss(logps, advantages, gamma)
    loss.sum().backward()
    for b in range(4):
        for t in range(5):
            p = math.exp(float(logps.detach()[b, t]))
            f = p if gamma is None else p / (p + gamma)
            assert float(loss.detach()[b, t]) == pytest.approx(-float(advantages[b]) * f, abs=1e-6)
            # d/dlogp of -A f(p): f(p) = p -> -A p;  p/(p+γ) -> -A γ p / (p+γ)^2
            df = p if gamma is None else gamma * p / (p + gamma) ** 2
            assert float(logps.grad[b, t]) == pytest.approx(-float(advantages[b]) * df, abs=1e-6)


def test_shaping_boosts_low_probability_tokens():
    # LUFFY's point: with f(p) = p/(p+γ) the gradient per unit log-prob is largest near p = γ, not at p = 1.
    logps = torch.log(torch.tensor([[0.01, 0.1, 0.9]])).requires_grad_()
    losses.off_policy_token_loss(logps, torch.tensor([1.0]), 0.1).sum().backward()
    shaped = logps.grad.clone()
    logps.grad = None
    losses.off_policy_token_loss(logps, torch.tensor([1.0]), None).sum().backward()
    assert shaped[0, 0] / logps.grad[0, 0] > shaped[0, 2] / logps.grad[0, 2] * 50


@pytest.mark.parametrize("variant,sign", [("paper", -1.0), ("released-code", 1.0)])
def test_srft_sft_weights(variant, sign):
    entropy = torch.tensor([[0.0, 1.0, 2.0]], requires_grad=True)
    w = losses.srft_sft_weights(entropy, variant)
    torch.testing.assert_close(w, 0.5 * torch.exp(sign * entropy.detach()))
    assert not w.requires_grad  # stop-gradient
    with pytest.raises(ValueError, match="variant"):
        losses.srft_sft_weights(entropy, "mine")


def test_weighted_sft_loss_treats_weights_as_constants():
    logps, entropy, _, _ = make_inputs()
    entropy.requires_grad_()
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    weights = losses.srft_sft_weights(entropy * 1.0, "paper")
    loss = losses.sft_loss(logps, mask, step_tokens=18, weights=weights)
    loss.backward()
    naive = sum(-float(weights[b, t]) * float(logps[b, t]) for b in range(4) for t in range(5) if mask[b, t]) / 18
    assert float(loss) == pytest.approx(naive, rel=1e-6)
    torch.testing.assert_close(logps.grad, -weights * mask / 18)
    assert entropy.grad is None  # no gradient flows into the entropy through the weights


def naive_mixed(logps, advantages, is_demo, eps, clip, gamma, positive_weights):
    """Per-token loop: rollouts -> -min(ρA, clip(ρ)A) (×w if A>0), demonstrations -> -A f(p)."""
    B, T = logps.shape
    out = torch.zeros(B, T)
    for b in range(B):
        A = float(advantages[b])
        for t in range(T):
            lp = logps[b, t]
            if is_demo[b]:
                p = torch.exp(lp)
                out[b, t] = -A * (p if gamma is None else p / (p + gamma))
            else:
                ratio = torch.exp(lp - lp.detach())
                term = -torch.min(ratio * A, torch.clamp(ratio, 1 - eps, 1 + eps) * A) if clip else -ratio * A
                if positive_weights is not None and A > 0:
                    term = term * float(positive_weights[b, t])
                out[b, t] = term
    return out


@pytest.mark.parametrize("clip,gamma,weighted", [(True, None, True), (False, 0.1, False), (True, 0.1, True)])
def test_mixed_policy_loss_matches_naive_with_gradients(clip, gamma, weighted):
    logps, entropy, advantages, is_demo = make_inputs(seed=3)
    weights = losses.srft_rl_weights(entropy) if weighted else None
    loss, stats = losses.mixed_policy_token_loss(logps, logps.detach(), advantages, is_demo, 0.2, None, clip,
                                                 shaping_gamma=gamma, positive_weights=weights)
    loss.sum().backward()
    grad = logps.grad.clone()
    logps.grad = None
    naive = naive_mixed(logps, advantages, is_demo, 0.2, clip, gamma, weights)
    naive.sum().backward()
    torch.testing.assert_close(loss, naive.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, logps.grad, atol=1e-6, rtol=1e-6)
    # the sign split: only the positive-advantage rollout (row 0) carries w_RL
    if weighted:
        torch.testing.assert_close(grad[0], -1.5 * weights[0])
        torch.testing.assert_close(grad[1], torch.full((5,), 0.5))
    assert float(stats["low_clipped"][3].sum()) == 0.0  # no clipping statistics on the demonstration


def test_srft_rl_weights():
    entropy = torch.tensor([[0.0, math.log(2.0)]])
    torch.testing.assert_close(losses.srft_rl_weights(entropy), torch.tensor([[0.1, 0.2]]))


def test_demonstration_enters_the_group_statistics():
    # One group: 3 wrong rollouts + a correct demonstration (LUFFY's 7+1 at small scale).
    rewards = torch.tensor([0.0, 0.0, 0.0, 1.0])
    adv, std = losses.group_advantages(rewards, 4, "group")
    assert float(std[0]) == pytest.approx(0.5)  # unbiased std of (0, 0, 0, 1)
    assert float(adv[3]) == pytest.approx(0.75 / (0.5 + 1e-4))
    assert float(adv[0]) == pytest.approx(-0.25 / (0.5 + 1e-4))
    none, _ = losses.group_advantages(rewards, 4, "none")
    torch.testing.assert_close(none, torch.tensor([-0.25, -0.25, -0.25, 0.75]))
