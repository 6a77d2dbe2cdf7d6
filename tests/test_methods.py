"""Each method's step policy: SASR's controller, the static schedules, demonstrations inside groups,
and every method end to end on the sandbox with the expected step types and an exact resume."""

import json
import random
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sftrl.config import ConfigError
from sftrl.validate import load_config
from sftrl.methods import METHODS, sasr, static
from sftrl.trainer import Trainer

from conftest import comparable, make_config, read_metrics


# ---------------------------------------------------------------------------------------------- SASR
def test_switch_probability_at_known_values():
    assert sasr.switch_probability(1.0, 1.0, 1.0) == pytest.approx(0.5)
    assert sasr.switch_probability(3.0, 1.0, 1.0) == pytest.approx(0.75)
    assert sasr.switch_probability(1.0, 2.0, 0.5) == pytest.approx(0.5)
    assert sasr.switch_probability(1.0, 1.0, 3.0) == pytest.approx(0.25)
    assert sasr.switch_probability(0.0, 1.0, 1.0) == 0.0


class ScriptedTrainer:
    """Stands in for the Trainer: records which backward ran and hands out scripted gradient norms."""

    def __init__(self, config, norms):
        self.config, self.norms, self.step, self.calls, self.snapshots = config, list(norms), 0, [], []

    def sft_backward(self, examples, **kwargs):
        self.calls.append(("sft", kwargs.get("weight", 1.0)))
        return {"sft/loss": 1.0}

    def grpo_backward(self, examples, weight=1.0):
        self.calls.append(("grpo", weight))
        return {"grpo/loss": 0.0}

    def snapshot_reference(self):
        self.snapshots.append(self.step)

    def run(self, method, steps):
        state = method.init_state(self.config, 64)
        records = []
        for _ in range(steps):
            kind = method.plan(self.config, self.step, state)
            metrics = method.step(self, state, [], kind)
            metrics["grad_norm"] = self.norms.pop(0)
            self.step += 1
            method.after_step(self, state, metrics)
            records.append({**metrics, "kind": kind})
        return records, state


def test_sasr_choices_on_scripted_gradient_norms():
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=2, sasr_gamma=1.0, seed=7))
    norms = [4.0, 2.0, 6.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    trainer = ScriptedTrainer(config, norms)
    records, state = trainer.run(sasr.METHOD, 10)
    # Independent re-computation: the warm-up is SFT; then p = G_sft / (G_sft + γ G_warmup) with
    # G_warmup = 2 (the last warm-up step), G_sft the latest SFT norm, α from Random(seed).
    draws = random.Random(7)
    g_sft, expected_modes, expected_p = 2.0, ["sft", "sft"], [1.0, 1.0]
    for t in range(2, 10):
        p = g_sft / (g_sft + 2.0)
        mode = "sft" if draws.random() < p else "grpo"
        expected_modes.append(mode)
        expected_p.append(p)
        if mode == "sft":
            g_sft = norms[t]
    assert [r["sasr/mode"] for r in records] == expected_modes
    assert [r["sasr/p_sft"] for r in records] == pytest.approx(expected_p)
    assert [c[0] for c in trainer.calls] == expected_modes
    assert "sft" in expected_modes[2:] and "grpo" in expected_modes[2:]  # the seed exercises both branches
    assert state["g_warmup"] == 2.0 and records[1]["sasr/g_warmup"] == 2.0
    assert trainer.snapshots == []  # reference = the initial model by default


def test_sasr_large_sft_gradients_keep_sft_and_small_ones_hand_over_to_grpo():
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=1, seed=0))
    big = ScriptedTrainer(config, [1.0] + [1000.0] * 40)  # SFT gradients grow 1000x after warm-up
    records, _ = big.run(sasr.METHOD, 41)
    assert sum(r["sasr/mode"] == "sft" for r in records[1:]) >= 38
    small = ScriptedTrainer(config, [1.0] + [0.001] * 40)  # ... or vanish
    records, _ = small.run(sasr.METHOD, 41)
    assert sum(r["sasr/mode"] == "grpo" for r in records[1:]) >= 38


def test_sasr_reference_after_warmup_is_a_snapshot(tmp_path):
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=3, sasr_reference="warmup"))
    assert not sasr.METHOD.needs_reference(config)
    trainer = ScriptedTrainer(config, [1.0] * 5)
    trainer.run(sasr.METHOD, 5)
    assert trainer.snapshots == [3]


def test_sasr_rule_is_replaceable_and_checked(tmp_path):
    rule = tmp_path / "rule.py"
    rule.write_text("def always_grpo(g_sft, g_warmup, gamma):\n    return 0.0\n")
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=1, sasr_rule=f"{rule}:always_grpo"))
    records, _ = ScriptedTrainer(config, [1.0] * 6).run(sasr.METHOD, 6)
    assert [r["sasr/mode"] for r in records] == ["sft"] + ["grpo"] * 5
    with pytest.raises(ConfigError, match="sasr_rule.*no attribute"):
        sasr.METHOD.init_state(load_config(overrides=dict(method="sasr", sasr_rule=f"{rule}:missing")), 64)
    with pytest.raises(ConfigError, match="sasr_rule"):
        load_config(overrides=dict(method="sasr", sasr_rule="no_colon"))


# ---------------------------------------------------------------------------------------------- static
def test_static_alternate_schedule():
    config = load_config(overrides=dict(method="static", static_mode="alternate", static_sft_steps=2,
                                        static_grpo_steps=3))
    trainer = ScriptedTrainer(config, [1.0] * 11)
    trainer.run(static.METHOD, 11)
    assert "".join("S" if c[0] == "sft" else "G" for c in trainer.calls) == "SSGGGSSGGGS"


def test_static_probability_schedule_follows_the_seeded_generator():
    config = load_config(overrides=dict(method="static", static_mode="probability", static_sft_prob=0.3, seed=5))
    trainer = ScriptedTrainer(config, [1.0] * 200)
    trainer.run(static.METHOD, 200)
    draws = random.Random(5)
    expected = ["sft" if draws.random() < 0.3 else "grpo" for _ in range(200)]
    assert [c[0] for c in trainer.calls] == expected
    assert 0.2 < expected.count("sft") / 200 < 0.4


def test_static_weighted_runs_both_terms_with_mu():
    config = load_config(overrides=dict(method="static", static_mode="weighted", static_sft_weight=0.25))
    trainer = ScriptedTrainer(config, [1.0] * 3)
    trainer.run(static.METHOD, 3)
    assert trainer.calls == [("sft", 0.25), ("grpo", 0.75)] * 3


def test_presets_fill_in_beneath_explicit_values():
    luffy = load_config(overrides=dict(method="luffy"))
    assert (luffy.clip_ratio, luffy.scale_rewards, luffy.loss_type, luffy.beta) == (False, "none", "dr_grpo", 0.0)
    assert load_config(overrides=dict(method="luffy", loss_type="dapo")).loss_type == "dapo"
    assert load_config(overrides=dict(method="sasr")).beta == 0.04
    assert load_config().method == "sasr"  # the default method


# ---------------------------------------------------------------------------------------------- in the trainer
@pytest.mark.float_sensitive
def test_demonstrations_sit_inside_the_groups(tmp_path, tiny_model_dir, reward_spec):
    for mode, method, size in [("replace", "luffy", 4), ("append", "srft", 5)]:
        trainer = Trainer(make_config(tmp_path, tiny_model_dir, method=method, reward_funcs=[reward_spec]))
        examples = trainer.rows.examples[:3]
        rollouts = trainer.rollouts(examples, mode)
        assert rollouts.group_size == size and len(rollouts.target_ids) == 3 * size
        assert rollouts.is_demo.tolist() == ([False] * (size - 1) + [True]) * 3
        for i, example in enumerate(examples):
            assert rollouts.target_ids[i * size + size - 1] == trainer.demonstration_ids(example)[0]
        expected = []
        for g in rollouts.rewards.view(3, size):  # advantages over the whole group, demonstration included
            centred = g - g.mean()
            expected.append(centred if method == "luffy" else centred / (g.std() + 1e-4))
        torch.testing.assert_close(rollouts.advantages, torch.cat(expected))


@pytest.mark.float_sensitive
def test_grpo_then_sft_kl_term_is_the_exact_kl_to_the_end_of_rl_model(tmp_path, tiny_model_dir, reward_spec):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo-then-sft", reward_funcs=[reward_spec],
                                  sft_kl_coef=0.5))
    examples = trainer.rows.examples[:4]
    with pytest.raises(RuntimeError, match="reference"):
        trainer.sft_backward(examples, kl_coef=0.5)
    trainer.snapshot_reference()
    metrics = trainer.sft_backward(examples, kl_coef=0.5)
    assert metrics["kl_ref"] == pytest.approx(0.0, abs=1e-6)  # the policy is its own reference right now
    with_kl = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.optimizer.zero_grad()
    trainer.sft_backward(examples)
    torch.testing.assert_close(with_kl, [p.grad for p in trainer.model.parameters()])  # ∇KL = 0 at π = π_ref


STEP_TYPES = {
    "sasr": None,  # checked separately: SFT warm-up then both kinds
    "srft": ["sft+grpo"] * 6,
    "luffy": ["grpo"] * 6,
    "sft": ["sft"] * 6,
    "grpo": ["grpo"] * 6,
    "sft-then-grpo": ["sft", "sft", "grpo", "grpo", "grpo", "grpo"],
    "grpo-then-sft": ["grpo", "grpo", "sft", "sft", "sft", "sft"],
    "static": ["sft", "grpo", "grpo"] * 2,
    "hpt": None,  # per-prompt gate: checked against its own counts below
    "relift": None,  # an SFT update on the steps whose buffer filled: checked below
    "chord": ["sft+grpo"] * 6,
    "gac": ["sft+grpo"] * 6,
    "uft": ["sft+grpo"] * 6,  # hints (and their NLL term) all along: T_hint = 300
    "dft": ["sft"] * 6,
    "asft": ["sft"] * 6,
    "opsd": ["grpo"] * 6,  # a policy-gradient step whose advantages are the teacher's per-token log-ratios
    "opd": ["grpo"] * 6,
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_resumes_exactly(tmp_path, tiny_model_dir, reward_spec, even_answer_spec, method):
    assert set(STEP_TYPES) == set(METHODS)
    # ReLIFT buffers prompts whose rollouts all fail: a reward fixed by the prompt makes that happen often.
    reward = even_answer_spec if method == "relift" else reward_spec
    common = dict(method=method, max_steps=6, save_every=3, reward_funcs=[reward], sft_steps=2, grpo_steps=2,
                  sft_kl_coef=0.1, sasr_warmup_steps=2, sasr_reference="warmup", static_sft_steps=1,
                  static_grpo_steps=2, max_completion_length=10, seed=3, hpt_gate=1, gac_update_every=2,
                  sft_batch_size=2, opd_teacher=str(tiny_model_dir), opsd_teacher="base")
    full_dir = tmp_path / "full"
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(full_dir), **common)).train()
    full = read_metrics(full_dir)
    types = [r["step_type"] for r in full]
    if method == "sasr":
        assert types[:2] == ["sft", "sft"] and set(types[2:]) == {"sft", "grpo"}  # both kinds after the warm-up
        assert all(r["sasr/mode"] == r["step_type"] for r in full)
        assert all("kl_ref" in r for r in full[2:])  # measured every step after the warm-up snapshot
    elif method == "hpt":  # SFT terms exactly on the steps whose gate sent a prompt to SFT
        assert [r["hpt/sft_prompts"] + r["hpt/rl_prompts"] for r in full] == [4] * 6
        assert types == ["+".join(k for k, n in (("sft", r["hpt/sft_prompts"]), ("grpo", r["hpt/rl_prompts"])) if n)
                         for r in full]
        assert "sft+grpo" in types  # the gate sent some prompts to SFT (γ = 1: at most 1 of 4 correct)
    elif method == "relift":  # an SFT update exactly when the buffer reached sft_batch_size
        assert types == ["sft+grpo" if r["relift/sft_update"] else "grpo" for r in full]
        assert "sft+grpo" in types[3:] and all(r["relift/buffer_size"] < 2 for r in full)
        assert full[2]["relift/buffer_size"] > 0  # the checkpoint at step 3 holds a buffered prompt
    else:
        assert types == STEP_TYPES[method]
    for record in full:
        assert all(v == v and abs(v) != float("inf") for v in record.values() if isinstance(v, float)), record
    if method == "srft":
        assert all(0 < r["srft/w_sft"] <= 0.5 for r in full)
    if method in ("luffy", "srft"):
        assert all("demo/reward" in r for r in full)
    if method == "gac":  # statistics every 2 steps; μ moves from 0.5 by at most 0.01 a step
        assert [r["gac/updated"] for r in full] == [1.0, 0.0] * 3
        assert all(abs(b["gac/mu"] - a["gac/mu"]) <= 0.01 + 1e-12 for a, b in zip(full, full[1:]))

    part_dir = tmp_path / "part"
    shutil.copytree(full_dir / "checkpoints", part_dir / "checkpoints")
    shutil.copy(full_dir / "config.yaml", part_dir / "config.yaml")
    (part_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3]))
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(part_dir), resume=True, **common)).train()
    resumed = read_metrics(part_dir)
    assert [r["step_type"] for r in resumed] == types
    for a, b in zip(comparable(full), comparable(resumed)):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)
            else:
                assert a[key] == b[key], (a["step"], key)
    w_full = load_file(full_dir / "model" / "model.safetensors")
    w_part = load_file(part_dir / "model" / "model.safetensors")
    for name in w_full:
        torch.testing.assert_close(w_full[name], w_part[name])


def naive_policy_gradient(trainer, rollouts, per_token, normaliser):
    """Gradient of Σ_rows Σ_t per_token(row, logp_t, ref_logp_t, H_t) / normaliser, one row at a time
    (each sequence packed on its own, no batching)."""
    from sftrl import losses
    from sftrl.batching import pack, target_logits

    trainer.optimizer.zero_grad(set_to_none=True)
    cfg = trainer.config
    for i, target in enumerate(rollouts.target_ids):
        batch = pack([rollouts.prompt_ids[i]], [target], trainer.pad_id, torch.device("cpu"))
        logps, entropy = losses.token_logprobs_and_entropy(target_logits(trainer.model, batch), batch.targets,
                                                           cfg.temperature)
        with torch.no_grad():
            ref_logps, _ = losses.token_logprobs_and_entropy(target_logits(trainer.reference, batch), batch.targets,
                                                             cfg.temperature) if trainer.reference else (None, None)
        total = sum(per_token(bool(rollouts.is_demo[i]), logps[0, t], None if ref_logps is None else ref_logps[0, t],
                              entropy[0, t]) for t in range(len(target)))
        (total / normaliser).backward()
    return [p.grad.clone() for p in trainer.model.parameters()]


def test_luffy_applies_the_kl_to_rollouts_and_never_to_demonstrations(tmp_path, tiny_model_dir, reward_spec):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="luffy", beta=0.5, entropy_coef=0.0,
                                  reward_funcs=[reward_spec]))
    trainer.sft_backward(trainer.rows.examples[8:16])  # one update first: π_θ ≠ π_ref, so the KL has a gradient
    trainer.optimizer_step(1e-2)
    torch.manual_seed(0)
    rollouts = trainer.rollouts(trainer.rows.examples[:3], "replace")
    rollouts.advantages = torch.zeros_like(rollouts.advantages)  # leave only the KL term
    metrics = trainer.policy_backward(rollouts, lambda **named: (named["logps"] * 0.0, {}))
    got = [p.grad.clone() for p in trainer.model.parameters()]
    cfg = trainer.config  # luffy preset: dr_grpo, sum / (sequences · max_completion_length)

    def kl_on_rollouts(is_demo, logp, ref_logp, entropy):
        delta = ref_logp - logp
        return 0.0 * logp if is_demo else cfg.beta * (torch.exp(delta) - delta - 1.0)

    expected = naive_policy_gradient(trainer, rollouts, kl_on_rollouts, len(rollouts.target_ids) * cfg.max_completion_length)
    assert metrics["kl"] > 1e-4 and torch.sqrt(sum((g ** 2).sum() for g in expected)) > 1e-5
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo", "dapo"])
def test_entropy_bonus_is_one_token_mean_whatever_the_loss_type(tmp_path, tiny_model_dir, reward_spec, loss_type):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="srft", loss_type=loss_type, entropy_coef=0.3,
                                  reward_funcs=[reward_spec], micro_batch_size=5))
    torch.manual_seed(0)
    rollouts = trainer.rollouts(trainer.rows.examples[:3], "append")
    rollouts.advantages = torch.zeros_like(rollouts.advantages)  # leave only the entropy bonus
    trainer.policy_backward(rollouts, lambda **named: (named["logps"] * 0.0, {}))
    got = [p.grad.clone() for p in trainer.model.parameters()]
    tokens = sum(len(t) for t in rollouts.target_ids)  # rollout and demonstration tokens alike
    expected = naive_policy_gradient(trainer, rollouts, lambda is_demo, logp, ref, entropy: -0.3 * entropy, tokens)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
