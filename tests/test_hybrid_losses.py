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


@pytest.mark.float_sensitive
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


@pytest.mark.float_sensitive
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


@pytest.mark.float_sensitive
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


# ---------------------------------------------------------------------------------------------- CHORD
def trinity_masked_mean(values, mask):
    """verl/Trinity-RFT's masked_mean (trinity/algorithm/utils.py): sum(values * mask) / mask.sum()."""
    return (values * mask).sum() / mask.sum()


def trinity_sft_phi_loss(logprob, action_mask):
    """Trinity-RFT trinity/algorithm/policy_loss_fn/chord_policy_loss.py, SFTPhiLossFn.__call__ (token-level,
    cutoff_prob 1.0) with phi_function, copied literally (modelscope/Trinity-RFT@0414330, lines 61-97)."""
    token_prob = torch.exp(logprob)
    weighted_phi = token_prob * (1 - token_prob)
    return trinity_masked_mean(-logprob * weighted_phi.detach(), action_mask)


def trinity_mu_schedule(global_step, mu_warmup_steps, mu_decay_steps, mu_peak, mu_valley):
    """Trinity-RFT chord_policy_loss.py, mu_schedule_function (lines 14-32), literally."""
    if global_step < mu_warmup_steps:
        return (global_step / mu_warmup_steps) * mu_peak
    if global_step >= (mu_warmup_steps + mu_decay_steps):
        return mu_valley
    adjusted_step = global_step - mu_warmup_steps
    cosine_decay = 0.5 * (1 + math.cos(math.pi * adjusted_step / mu_decay_steps))
    return (mu_peak - mu_valley) * cosine_decay + mu_valley


@pytest.mark.float_sensitive
def test_chord_phi_sft_loss_matches_trinity_and_a_per_token_loop():
    g = torch.Generator().manual_seed(4)
    logps = (-torch.rand(3, 6, generator=g) * 4).requires_grad_()
    mask = torch.ones(3, 6)
    mask[1, 4:] = 0
    mask[2, 2:] = 0
    tokens = int(mask.sum())
    phi = losses.chord_phi_weights(logps)
    assert not phi.requires_grad
    ours = losses.sft_loss(logps, mask, tokens, phi)
    ours.backward()
    our_grad = logps.grad.clone()
    logps.grad = None
    public = trinity_sft_phi_loss(logps, mask)
    public.backward()
    assert float(ours) == pytest.approx(float(public), rel=1e-6)
    torch.testing.assert_close(our_grad, logps.grad)
    naive = 0.0
    for b in range(3):
        for t in range(6):
            if mask[b, t]:
                p = math.exp(float(logps[b, t]))
                naive += -p * (1 - p) * float(logps[b, t])
    assert float(ours) == pytest.approx(naive / tokens, rel=1e-6)
    # φ is largest at p = 0.5 and vanishes at p → 0 and p → 1
    torch.testing.assert_close(losses.chord_phi_weights(torch.log(torch.tensor([[0.5, 1.0, 1e-9]]))),
                               torch.tensor([[0.25, 0.0, 1e-9]]), atol=1e-7, rtol=0)


@pytest.mark.parametrize("schedule", [(0, 200, 0.9, 0.05), (0, 0, 0.1, 0.1), (200, 400, 0.5, 0.02), (3, 7, 0.8, 0.1)])
def test_chord_mu_schedule_matches_trinity(schedule):
    from sftrl.methods.chord import mu_schedule

    for step in range(0, 700, 7):
        assert mu_schedule(step, *schedule) == pytest.approx(trinity_mu_schedule(step, *schedule), abs=1e-12)
    warmup, decay, peak, valley = schedule
    assert mu_schedule(warmup, *schedule) == pytest.approx(peak) and mu_schedule(warmup + decay, *schedule) == valley


def test_chord_loss_is_the_mu_mixture_of_its_terms(tmp_path, tiny_model_dir, reward_spec):
    """The logged loss of one CHORD step is (1-μ)·L_GRPO + μ·L_SFT-φ, L_SFT-φ recomputed per token."""
    from sftrl.batching import pack, target_logits
    from sftrl.trainer import Trainer
    from conftest import make_config

    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="chord", reward_funcs=[reward_spec], batch_size=2,
                                  chord_mu_peak=0.3, chord_mu_valley=0.3, expert_data_ratio=0.5))
    state = trainer.method_state
    torch.manual_seed(0)
    sampler = dict(trainer.rows.demo_sampler.state_dict())
    metrics = trainer.method.step(trainer, state, trainer.rows.examples[:2], None)
    loss = trainer.take_loss()
    trainer.rows.demo_sampler.load_state_dict(sampler)
    demos = trainer.draw_demonstrations(8)  # 2 prompts x 4 rollouts, ρ = 0.5: 8 demonstrations
    assert metrics["chord/expert_rows"] == 8 and len(demos) == 8
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for e in demos:
            target = trainer.demonstration_ids(e)[0]
            batch = pack([trainer.prompt_ids(e)], [target], trainer.pad_id, torch.device("cpu"))
            logps, _ = losses.token_logprobs_and_entropy(target_logits(trainer.policy, batch), batch.targets)
            p = logps.exp()
            nll += float((-(p * (1 - p)) * logps).sum())
            tokens += len(target)
    assert metrics["chord/mu"] == 0.3
    assert loss == pytest.approx(0.7 * metrics["grpo/loss"] + 0.3 * nll / tokens, rel=1e-5)


# ---------------------------------------------------------------------------------------------- GAC
class PublicController:
    """deepnovacore/GAC gac/controller.py (commit b3c2598), AdaptiveMuController.compute_mu and
    _trimmed_variance, copied literally but for the torch scalars (lines 131-160 and 262-330)."""

    def __init__(self, ema_beta=0.99, mu_min=0.05, mu_max=0.9, alpha_static=0.5, init_mu=0.5, mu_change_cap=0.01,
                 delta_g2_cap_ratio=0.0, eps=1e-8):
        self.ema_beta, self.mu_min, self.mu_max, self.alpha_static = ema_beta, mu_min, mu_max, alpha_static
        self.mu, self.mu_change_cap, self.delta_g2_cap_ratio, self.eps = init_mu, mu_change_cap, delta_g2_cap_ratio, eps
        self.ema_delta_g2 = self.ema_sigma_s2 = self.ema_sigma_r2 = None

    @staticmethod
    def _trimmed_variance(values, trim_ratio, eps):
        if values.numel() == 0:
            return 0.0
        trim_ratio = float(max(0.0, min(0.49, trim_ratio)))
        if trim_ratio == 0.0 or values.numel() < 4:
            var = torch.var(values, unbiased=False)
            return float(torch.clamp(var, min=eps).item())
        k = int(values.numel() * trim_ratio)
        if k == 0:
            var = torch.var(values, unbiased=False)
            return float(torch.clamp(var, min=eps).item())
        sorted_vals, _ = torch.sort(values)
        kept = sorted_vals[k:-k] if (2 * k) < values.numel() else sorted_vals
        if kept.numel() == 0:
            kept = sorted_vals
        var = torch.var(kept, unbiased=False)
        return float(torch.clamp(var, min=eps).item())

    def compute_mu(self, alpha=None, mu_prior=None, blend_weight=1.0):
        alpha_eff = self.alpha_static if alpha is None else float(alpha)
        delta_g2 = self.ema_delta_g2 if self.ema_delta_g2 is not None else 0.0
        sigma_s2 = self.ema_sigma_s2 if self.ema_sigma_s2 is not None else 1.0
        sigma_r2 = self.ema_sigma_r2 if self.ema_sigma_r2 is not None else 1.0
        delta_g2_capped = float(delta_g2)
        if self.delta_g2_cap_ratio and self.delta_g2_cap_ratio > 0.0:
            cap_val = self.delta_g2_cap_ratio * (sigma_s2 + sigma_r2 + self.eps)
            if delta_g2_capped > cap_val:
                delta_g2_capped = cap_val
        denom = delta_g2_capped + sigma_s2 + sigma_r2 + self.eps
        mu_raw = (alpha_eff * delta_g2_capped + sigma_r2) / denom
        mu_adaptive = self.ema_beta * self.mu + (1 - self.ema_beta) * mu_raw
        mu_adaptive = min(max(float(mu_adaptive), self.mu_min), self.mu_max)
        blend = float(max(0.0, min(1.0, blend_weight)))
        if mu_prior is not None:
            mu_candidate = (1.0 - blend) * float(mu_prior) + blend * mu_adaptive
        else:
            mu_candidate = mu_adaptive
        delta = mu_candidate - self.mu
        if abs(delta) > self.mu_change_cap:
            mu_candidate = self.mu + (self.mu_change_cap if delta > 0 else -self.mu_change_cap)
        mu_candidate = min(max(float(mu_candidate), self.mu_min), self.mu_max)
        self.mu = mu_candidate
        return self.mu, mu_raw


@pytest.mark.parametrize("values", [[], [0.3], [1.0, 2.0, 4.0], [5.0, 1.0, 2.0, 3.0, 9.0, 0.5, 4.0, 2.5, 7.0, 6.0, 8.0],
                                    [2.0] * 6])
def test_gac_trimmed_variance_matches_the_public_controller(values):
    from sftrl.methods.gac import trimmed_variance

    for ratio in (0.0, 0.1, 0.2):
        expected = PublicController._trimmed_variance(torch.tensor(values, dtype=torch.float64), ratio, 1e-8)
        assert trimmed_variance(values, ratio) == pytest.approx(expected, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("blend,cap", [(1.0, 0.0), (0.5, 0.0), (0.5, 0.3)])
def test_gac_mu_update_matches_the_public_controller_step_by_step(blend, cap):
    from sftrl.methods import gac
    from sftrl.methods.chord import mu_schedule
    from sftrl.validate import load_config

    config = load_config(overrides=dict(method="gac", gac_prior_weight=blend, gac_delta_g2_cap=cap,
                                        chord_mu_warmup_steps=3, chord_mu_decay_steps=10, chord_mu_peak=0.85,
                                        chord_mu_valley=0.15))
    state = gac.init_state(config, 10)
    public = PublicController(delta_g2_cap_ratio=cap)
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        log = gac.controller_mu(state, config, step)
        mu, raw = public.compute_mu(mu_prior=mu_schedule(step, 3, 10, 0.85, 0.15), blend_weight=blend)
        assert log["gac/mu"] == pytest.approx(mu, abs=1e-12) and log["gac/mu_star"] == pytest.approx(raw, abs=1e-12)
        if step % 10 == 0:  # new statistics every f = 10 steps, smoothed alike
            measured = {"delta_g2": float(torch.rand(1, generator=g)) * 3, "sigma_s2": float(torch.rand(1, generator=g)),
                        "sigma_r2": float(torch.rand(1, generator=g)) * 0.1}
            gac.update_ema(state["ema"], measured, config.gac_ema)
            for key in measured:
                old = getattr(public, f"ema_{key}")
                setattr(public, f"ema_{key}", measured[key] if old is None else 0.99 * old + 0.01 * measured[key])
    assert 0.05 <= state["mu"] <= 0.9 and state["mu"] != 0.5


@pytest.mark.float_sensitive
def test_gac_row_statistics_against_a_per_row_loop():
    from sftrl.methods.base import TokenView
    from sftrl.methods.gac import row_statistics

    g = torch.Generator().manual_seed(2)
    logps = -torch.rand(4, 5, generator=g) * 3
    mask = torch.ones(4, 5)
    mask[0, 3:] = 0
    mask[3] = 0  # an empty row: every token mean 0
    advantages = torch.tensor([1.5, -0.5, 0.2, 0.7])
    is_demo = torch.zeros(4, dtype=torch.bool)
    for use_phi in (True, False):
        for adv in (advantages, None):
            stats = row_statistics(TokenView(logps, torch.zeros(4, 5), mask, is_demo, adv), use_phi)
            for b in range(4):
                n = int(mask[b].sum())
                a = 0.0 if adv is None else float(adv[b])
                terms = [(a - ((math.exp(float(lp)) * (1 - math.exp(float(lp)))) if use_phi else 1.0)) ** 2
                         for lp, m in zip(logps[b], mask[b]) if m]
                nll = [-float(lp) for lp, m in zip(logps[b], mask[b]) if m]
                assert float(stats["mismatch"][b]) == pytest.approx(sum(terms) / n if n else 0.0, rel=1e-5)
                assert float(stats["nll"][b]) == pytest.approx(sum(nll) / n if n else 0.0, rel=1e-5)
                assert float(stats["advantage"][b]) == pytest.approx(a if n else 0.0, rel=1e-5)
