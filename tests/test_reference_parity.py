"""CHORD, GAC, HPT and the advantages' std ε against their reference codes, each re-typed here from the
public file (Trinity-RFT, the GAC controller and README template, the HPT actor, verl's core_algos) and
run on the same fixed inputs: issue 24's five items."""

import math
from types import SimpleNamespace

import pytest
import torch

from sftrl import experience
from sftrl.batching import pack, target_logits
from sftrl.methods import METHODS, chord, gac
from sftrl.methods.base import TokenView
from sftrl.trainer import Trainer
from sftrl.validate import load_config

from test_hybrid_losses import PublicController, trinity_mu_schedule, trinity_sft_phi_loss
from conftest import grads, make_config


# ------------------------------------------------------------------------------------ 1. CHORD's μ
def trinity_mus(updates, warmup, decay, peak, valley):
    """μ of each update as Trinity-RFT's trainer drives it (yanxi-chen/Trinity-RFT@9051d63):
    trinity/trainer/trainer.py line 139 samples with `self.train_step_num + 1`, where train_step_num
    (verl_trainer.py lines 425-436, 471) counts the finished updates from 0; mix_sample_strategy.py
    lines 64 and 79 stamp that step on every experience, and chord_policy_loss.py lines 186 and 224-225
    call mu_schedule_function(step.max()). The loop, re-typed:"""
    train_step_num, mus = 0, []
    for _ in range(updates):
        step = train_step_num + 1  # _sample_data: self.sample_strategy.sample(self.train_step_num + 1)
        mus.append(trinity_mu_schedule(step, warmup, decay, peak, valley))
        train_step_num += 1  # train_step: self.global_steps += 1
    return mus


@pytest.mark.parametrize("schedule", [(0, 200, 0.9, 0.05), (20, 0, 0.5, 0.5), (200, 400, 0.5, 0.02), (0, 0, 0.1, 0.1)])
def test_chord_mu_of_each_update_matches_trinitys_loop(schedule):
    warmup, decay, peak, valley = schedule
    config = load_config(overrides=dict(method="chord", chord_mu_warmup_steps=warmup, chord_mu_decay_steps=decay,
                                        chord_mu_peak=peak, chord_mu_valley=valley))
    expected = trinity_mus(700, *schedule)
    ours = [chord.chord_mu(config, finished) for finished in range(700)]  # trainer.step: updates finished before
    assert ours == pytest.approx(expected, abs=1e-12)
    if schedule == (20, 0, 0.5, 0.5):  # warm-up 0 -> 0.5 over 20: the first update already has an SFT term
        assert ours[0] == pytest.approx(0.025, abs=1e-15)


# ------------------------------------------------------------------ 4. CHORD's SFT term at temperature T
def verl_logprobs(model, batch, temperature):
    """Trinity-RFT's actor (trinity/trainer/verl/dp_actor.py line 144, the forward of every row of the
    micro-batch, expert rows included, at meta_info["temperature"] = the rollout temperature,
    verl_trainer.py line 475): logits.div_(temperature), then verl's logprobs_from_logits (log_softmax,
    gather)."""
    logits = target_logits(model, batch).double() / temperature
    return torch.log_softmax(logits, -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)


def test_chord_scores_demonstrations_at_the_rollout_temperature(tmp_path, tiny_model_dir, reward_spec):
    """One CHORD step at T = 0.7 with a warm-up 0 -> 0.5 over 20 updates: μ = 0.025 (item 1) and the logged
    loss is (1-μ)·L_GRPO + μ·L_SFT-φ with L_SFT-φ Trinity's SFTPhiLossFn on log-probs at T (item 4)."""
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="chord", reward_funcs=[reward_spec], batch_size=2,
                                  temperature=0.7, chord_mu_warmup_steps=20, chord_mu_decay_steps=0,
                                  chord_mu_peak=0.5, chord_mu_valley=0.5, expert_data_ratio=0.5))
    torch.manual_seed(0)
    sampler = dict(trainer.rows.demo_sampler.state_dict())
    metrics = trainer.method.step(trainer, trainer.method_state, trainer.rows.examples[:2], None)
    loss = trainer.take_loss()
    trainer.rows.demo_sampler.load_state_dict(sampler)
    demos = trainer.draw_demonstrations(8)
    prompts = [trainer.prompt_ids(e) for e in demos]
    targets = [trainer.demonstration_ids(e)[0] for e in demos]
    batch = pack(prompts, targets, trainer.pad_id, torch.device("cpu"))  # one micro-batch, as Trinity's
    with torch.no_grad():
        at_t = float(trinity_sft_phi_loss(verl_logprobs(trainer.policy, batch, 0.7), batch.target_mask.double()))
        at_1 = float(trinity_sft_phi_loss(verl_logprobs(trainer.policy, batch, 1.0), batch.target_mask.double()))
    mu = metrics["chord/mu"]
    assert mu == pytest.approx(0.025, abs=1e-15)
    assert loss == pytest.approx((1 - mu) * metrics["grpo/loss"] + mu * at_t, rel=1e-5, abs=1e-8)
    assert abs(mu * (at_t - at_1)) > 100 * 1e-5 * abs(loss)  # what the check tells apart: T = 1 would fail it


# ------------------------------------------------------------------------------------ 2. GAC's order
def gac_masked_mean(values, mask, axis=None):
    """gac/utils.py masked_mean as the controller calls it: sum(values·mask) / (sum(mask) + 1e-8)."""
    return (values * mask).sum(axis) / (mask.sum(axis) + 1e-8)


class TemplateController(PublicController):
    """The public controller with its update_stats (deepnovacore/GAC gac/controller.py@b3c2598, the method
    before compute_mu) re-typed: the throttle on current_step, σ_r² over the RL rows' sequence-mean advantages,
    σ_s² trimmed over the expert rows' sequence-mean NLL, Δg² the mean over all rows of the sequence
    mean of (g_s - g_r)², g_s = -φ, g_r = -A on RL rows and 0 on expert rows; then the EMAs."""

    def __init__(self, mu_update_freq=10, trim_ratio_sft=0.1, **kwargs):
        super().__init__(**kwargs)
        self.mu_update_freq, self.trim_ratio_sft, self._last_update_step = mu_update_freq, trim_ratio_sft, None

    def update_stats(self, *, logprob, action_mask, advantages, expert_mask, current_step):
        if self._last_update_step is not None and current_step - self._last_update_step < self.mu_update_freq:
            return
        rl_sel, sft_sel = ~expert_mask, expert_mask
        seq_adv = gac_masked_mean(advantages[rl_sel], action_mask[rl_sel], axis=-1)
        mean, mean_sq = seq_adv.mean(), (seq_adv ** 2).mean()  # _global_variance_1d on one process
        sigma_r2 = float(torch.clamp(mean_sq - mean * mean, min=self.eps))
        nll_seq = gac_masked_mean(-logprob[sft_sel], action_mask[sft_sel], axis=-1)
        sigma_s2 = self._trimmed_variance(nll_seq, self.trim_ratio_sft, self.eps)
        token_prob = torch.exp(logprob)
        g_s_token = -(token_prob * (1 - token_prob))
        g_r_token = torch.zeros_like(logprob)
        g_r_token[rl_sel] = -advantages[rl_sel]
        delta_token = g_s_token - g_r_token
        delta_g2 = torch.mean(gac_masked_mean(delta_token * delta_token, action_mask, axis=-1)).item()
        beta = self.ema_beta
        for key, value in (("sigma_r2", sigma_r2), ("sigma_s2", sigma_s2), ("delta_g2", delta_g2)):
            old = getattr(self, f"ema_{key}")
            setattr(self, f"ema_{key}", value if old is None else beta * old + (1 - beta) * value)
        self._last_update_step = current_step


def gac_prior(global_step, warmup_steps, decay_steps, mu_peak, mu_valley):
    """gac/controller.py mu_schedule (the module's last function), re-typed."""
    if global_step < warmup_steps:
        return (global_step / max(1, warmup_steps)) * mu_peak
    if global_step >= (warmup_steps + decay_steps):
        return mu_valley
    progress = (global_step - warmup_steps) / max(1, decay_steps)
    return mu_valley + (mu_peak - mu_valley) * 0.5 * (1.0 + math.cos(math.pi * progress))


def gac_batches(steps, seed=3):
    """Per step: 6 rollout rows (advantages per row) and 4 demonstration rows, log-probs and masks."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        logps = -torch.rand(10, 7, generator=g, dtype=torch.float64) * 3
        mask = (torch.rand(10, 7, generator=g, dtype=torch.float64) < 0.85).double()
        mask[:, 0] = 1.0
        advantages = torch.randn(6, generator=g, dtype=torch.float64)
        out.append((logps, mask, advantages))
    return out


class StatTrainer:
    """The primitives gac.step calls, feeding each term's observer the step's fixed rows (rollouts: rows
    0-5, demonstrations: rows 6-9) and recording the weights each pass uses."""

    def __init__(self, config, batches):
        self.config, self.batches, self.step, self.passes = config, batches, 0, []

    def rollouts(self, examples):
        return "rollouts"

    def draw_demonstrations(self, count):
        return "demonstrations"

    def policy_backward(self, rollouts, token_loss, weight=1.0, observe=None, entropy_tokens=None, entropy_coef=None):
        logps, mask, advantages = self.batches[self.step]
        if observe is not None:
            observe(TokenView(logps[:6], torch.zeros(6, 7), mask[:6], torch.zeros(6, dtype=torch.bool), advantages))
        self.passes.append(("rl", self.step, weight))
        return {}

    def sft_backward(self, demos, weight=1.0, token_weights=None, observe=None, temperature=1.0, **kwargs):
        logps, mask, _ = self.batches[self.step]
        if observe is not None:
            observe(TokenView(logps[6:], torch.zeros(4, 7), mask[6:], torch.ones(4, dtype=torch.bool), None))
        self.passes.append(("sft", self.step, weight))
        return {}

    def global_sums(self, values):
        return list(values)

    def gather_rows(self, values):
        return list(values)


@pytest.mark.parametrize("every,blend", [(10, 1.0), (1, 1.0), (3, 0.5)])
def test_gac_mu_follows_the_template_order(every, blend):
    """μ_t of each of 24 steps against the README's loop template (compute_hybrid_loss: the controller
    sees step t's batch, then gives μ_t), with verl's global_step counted from 1 as the prior's argument."""
    steps = 24
    config = load_config(overrides=dict(method="gac", gac_update_every=every, gac_prior_weight=blend,
                                        chord_mu_warmup_steps=3, chord_mu_decay_steps=10, chord_mu_peak=0.85,
                                        chord_mu_valley=0.15))
    batches = gac_batches(steps)
    public = TemplateController(mu_update_freq=every)
    expected = []
    for global_step in range(1, steps + 1):
        logps, mask, advantages = batches[global_step - 1]
        public.update_stats(logprob=logps, action_mask=mask,
                            advantages=torch.cat([advantages, torch.zeros(4, dtype=torch.float64)]).unsqueeze(1)
                            * torch.ones(10, 7, dtype=torch.float64),
                            expert_mask=torch.arange(10) >= 6, current_step=global_step)
        mu, _ = public.compute_mu(mu_prior=gac_prior(global_step, 3, 10, 0.85, 0.15), blend_weight=blend)
        expected.append(mu)
    trainer = StatTrainer(config, batches)
    state = gac.init_state(config, 10)
    ours = []
    for _ in range(steps):
        metrics = gac.step(trainer, state, [], None)
        weighted = [w for term, s, w in trainer.passes if term == "sft" and s == trainer.step and w != 0.0]
        assert weighted == [metrics["gac/mu"]]  # the step's SFT term is weighed by the μ logged for it
        ours.append(metrics["gac/mu"])
        trainer.step += 1
    assert ours == pytest.approx(expected, abs=1e-9)
    assert expected[0] != pytest.approx(0.5, abs=1e-6)  # step 1's own statistics already move μ_1


# ----------------------------------------------------------------------------- 3. HPT's entropy bonus
def verl_entropy_from_logits(logits):
    """verl/utils/torch_functional.py entropy_from_logits: logsumexp(logits) - Σ softmax(logits)·logits."""
    pd = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - torch.sum(pd * logits, dim=-1)


def test_hpt_entropy_bonus_is_one_token_mean_over_demonstrations_and_rollouts(tmp_path, tiny_model_dir,
                                                                               even_answer_spec):
    """The released actor (Unify-Post-Training hpt/verl/verl/mix_src/mix_actor.py@ae332f5, lines 133, 436
    and 460): one forward of every row at the rollout temperature, entropy_loss = masked_mean(entropy,
    response_mask) over all rows, demonstrations included, and policy_loss = pg_loss - entropy_loss ·
    entropy_coeff. With every advantage 0 (each prompt's G rollouts agree) and c = 0, the step's gradient
    is that bonus alone."""
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="hpt", reward_funcs=[even_answer_spec],
                                  batch_size=6, hpt_gate=0, hpt_sft_coef=0.0, entropy_coef=0.05, temperature=0.8,
                                  max_completion_length=10))
    examples = trainer.rows.examples[:6]
    torch.manual_seed(5)
    metrics = trainer.method.step(trainer, trainer.method_state, examples, None)
    loss = trainer.take_loss()
    got = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)
    assert 0 < metrics["hpt/sft_prompts"] < 6

    torch.manual_seed(5)
    rollouts = trainer.rollouts(examples)  # the same samples again
    to_sft = [float(rollouts.rewards[p * 4]) < 1 for p in range(6)]
    rows = [(trainer.prompt_ids(e), trainer.demonstration_ids(e)[0]) for e, s in zip(examples, to_sft) if s]
    rows += [(rollouts.prompt_ids[p * 4 + j], rollouts.target_ids[p * 4 + j])
             for p in range(6) if not to_sft[p] for j in range(4)]
    batch = pack([p for p, _ in rows], [t for _, t in rows], trainer.pad_id, torch.device("cpu"))
    entropy = verl_entropy_from_logits(target_logits(trainer.model, batch).float() / 0.8)  # (rows, T)
    mask = batch.target_mask
    entropy_loss = (entropy * mask).sum() / mask.sum()  # verl_F.masked_mean(entropy, response_mask)
    policy_loss = 0.0 - entropy_loss * 0.05  # pg_loss = 0: zero advantages, c = 0
    policy_loss.backward()
    expected = grads(trainer.model)
    assert loss == pytest.approx(float(policy_loss), rel=1e-5)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)


# ------------------------------------------------------------------------------- 5. the std ε
def verl_grpo_outcome_advantage(scores, index, epsilon=1e-6):
    """verl's compute_grpo_outcome_advantage (Unify-Post-Training hpt/verl/verl/trainer/ppo/core_algos.py
    lines 110-157; the same in LUFFY's luffy/verl/verl/trainer/ppo/core_algos.py and, with its own std
    threshold options, Trinity-RFT's grpo_advantage.py lines 49-72), on sequence scores."""
    from collections import defaultdict

    scores = scores.clone()
    id2score, id2mean, id2std = defaultdict(list), {}, {}
    for i in range(scores.shape[0]):
        id2score[index[i]].append(scores[i])
    for idx in id2score:
        if len(id2score[idx]) == 1:
            id2mean[idx], id2std[idx] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            id2mean[idx] = torch.mean(torch.tensor(id2score[idx], dtype=torch.float64))
            id2std[idx] = torch.std(torch.tensor([id2score[idx]], dtype=torch.float64))
    for i in range(scores.shape[0]):
        scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
    return scores


def trl_advantages(rewards, group_size):
    """TRL GRPOTrainer (scale_rewards='group'): (r - mean) / (std + 1e-4), std unbiased per group."""
    grouped = rewards.view(-1, group_size)
    mean = grouped.mean(1, keepdim=True)
    std = grouped.std(1, keepdim=True)
    return ((grouped - mean) / (std + 1e-4)).view(-1)


@pytest.mark.parametrize("method,reference", [("chord", "verl"), ("gac", "verl"), ("hpt", "verl"), ("luffy", "verl"),
                                              ("grpo", "trl"), ("sft-then-grpo", "trl"), ("sasr", "trl")])
def test_advantage_std_eps_is_the_methods_reference(method, reference):
    """Shaped rewards with a small spread in each group, where 1e-4 and 1e-6 differ: the trainer's
    advantages (experience.advantages, as rollouts() calls it) against the reference's formula."""
    rewards = torch.tensor([0.50, 0.5001, 0.5003, 0.4999, 1.0, 0.0, 1.0, 1.0, 0.2, 0.2002, 0.2, 0.2],
                           dtype=torch.float64)
    config = load_config(overrides=dict(method=method, scale_rewards="group"))
    one = SimpleNamespace(world=1)  # one process: no gathers
    ours, _ = experience.advantages(rewards, 4, config, METHODS[method].std_eps(config), one)
    index = [i // 4 for i in range(12)]
    expected = verl_grpo_outcome_advantage(rewards, index) if reference == "verl" else trl_advantages(rewards, 4)
    other = trl_advantages(rewards, 4) if reference == "verl" else verl_grpo_outcome_advantage(rewards, index)
    torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-12)
    assert (ours - other).abs().max() > 0.1  # the two ε are far apart on this spread
    forced = load_config(overrides=dict(method=method, scale_rewards="group", advantage_std_eps=1e-4))
    trl, _ = experience.advantages(rewards, 4, forced, METHODS[method].std_eps(forced), one)
    torch.testing.assert_close(trl, trl_advantages(rewards, 4), rtol=1e-12, atol=1e-12)
