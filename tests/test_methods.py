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

from test_trainer import comparable, make_config, read_metrics


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
        state = method.init_state(self.config) if hasattr(method, "init_state") else {}
        records = []
        for _ in range(steps):
            metrics = method.step(self, state, [])
            metrics["grad_norm"] = self.norms.pop(0)
            self.step += 1
            if hasattr(method, "after_step"):
                method.after_step(self, state, metrics)
            records.append(metrics)
        return records, state


def test_sasr_choices_on_scripted_gradient_norms():
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=2, sasr_gamma=1.0, seed=7))
    norms = [4.0, 2.0, 6.0, 6.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    trainer = ScriptedTrainer(config, norms)
    records, state = trainer.run(sasr, 10)
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
    records, _ = big.run(sasr, 41)
    assert sum(r["sasr/mode"] == "sft" for r in records[1:]) >= 38
    small = ScriptedTrainer(config, [1.0] + [0.001] * 40)  # ... or vanish
    records, _ = small.run(sasr, 41)
    assert sum(r["sasr/mode"] == "grpo" for r in records[1:]) >= 38


def test_sasr_reference_after_warmup_is_a_snapshot(tmp_path):
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=3, sasr_reference="warmup"))
    assert not sasr.needs_reference(config)
    trainer = ScriptedTrainer(config, [1.0] * 5)
    trainer.run(sasr, 5)
    assert trainer.snapshots == [3]


def test_sasr_rule_is_replaceable_and_checked(tmp_path):
    rule = tmp_path / "rule.py"
    rule.write_text("def always_grpo(g_sft, g_warmup, gamma):\n    return 0.0\n")
    config = load_config(overrides=dict(method="sasr", sasr_warmup_steps=1, sasr_rule=f"{rule}:always_grpo"))
    records, _ = ScriptedTrainer(config, [1.0] * 6).run(sasr, 6)
    assert [r["sasr/mode"] for r in records] == ["sft"] + ["grpo"] * 5
    with pytest.raises(ConfigError, match="sasr_rule.*no attribute"):
        sasr.init_state(load_config(overrides=dict(method="sasr", sasr_rule=f"{rule}:missing")))
    with pytest.raises(ConfigError, match="sasr_rule"):
        load_config(overrides=dict(method="sasr", sasr_rule="no_colon"))


# ---------------------------------------------------------------------------------------------- static
def test_static_alternate_schedule():
    config = load_config(overrides=dict(method="static", static_mode="alternate", static_sft_steps=2,
                                        static_grpo_steps=3))
    trainer = ScriptedTrainer(config, [1.0] * 11)
    trainer.run(static, 11)
    assert "".join("S" if c[0] == "sft" else "G" for c in trainer.calls) == "SSGGGSSGGGS"


def test_static_probability_schedule_follows_the_seeded_generator():
    config = load_config(overrides=dict(method="static", static_mode="probability", static_sft_prob=0.3, seed=5))
    trainer = ScriptedTrainer(config, [1.0] * 200)
    trainer.run(static, 200)
    draws = random.Random(5)
    expected = ["sft" if draws.random() < 0.3 else "grpo" for _ in range(200)]
    assert [c[0] for c in trainer.calls] == expected
    assert 0.2 < expected.count("sft") / 200 < 0.4


def test_static_weighted_runs_both_terms_with_mu():
    config = load_config(overrides=dict(method="static", static_mode="weighted", static_sft_weight=0.25))
    trainer = ScriptedTrainer(config, [1.0] * 3)
    trainer.run(static, 3)
    assert trainer.calls == [("sft", 0.25), ("grpo", 0.75)] * 3


def test_presets_fill_in_beneath_explicit_values():
    luffy = load_config(overrides=dict(method="luffy"))
    assert (luffy.clip_ratio, luffy.scale_rewards, luffy.loss_type, luffy.beta) == (False, "none", "dr_grpo", 0.0)
    assert load_config(overrides=dict(method="luffy", loss_type="dapo")).loss_type == "dapo"
    assert load_config(overrides=dict(method="sasr")).beta == 0.04
    assert load_config().method == "sasr"  # the default method


# ---------------------------------------------------------------------------------------------- in the trainer
def test_demonstrations_sit_inside_the_groups(tmp_path, tiny_model_dir, reward_spec):
    for mode, method, size in [("replace", "luffy", 4), ("append", "srft", 5)]:
        trainer = Trainer(make_config(tmp_path, tiny_model_dir, method=method, reward_funcs=[reward_spec]))
        examples = trainer.train_examples[:3]
        rollouts = trainer.rollouts(examples, demonstrations=mode)
        assert rollouts.group_size == size and len(rollouts.target_ids) == 3 * size
        assert rollouts.is_demo.tolist() == ([False] * (size - 1) + [True]) * 3
        for i, example in enumerate(examples):
            assert rollouts.target_ids[i * size + size - 1] == trainer.demonstration_ids(example)[0]
        expected = []
        for g in rollouts.rewards.view(3, size):  # advantages over the whole group, demonstration included
            centred = g - g.mean()
            expected.append(centred if method == "luffy" else centred / (g.std() + 1e-4))
        torch.testing.assert_close(rollouts.advantages, torch.cat(expected))


def test_grpo_then_sft_kl_term_is_the_exact_kl_to_the_end_of_rl_model(tmp_path, tiny_model_dir, reward_spec):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo-then-sft", reward_funcs=[reward_spec],
                                  sft_kl_coef=0.5))
    examples = trainer.train_examples[:4]
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
}


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_trains_and_resumes_exactly(tmp_path, tiny_model_dir, reward_spec, method):
    assert set(STEP_TYPES) == set(METHODS)
    common = dict(method=method, max_steps=6, save_every=3, reward_funcs=[reward_spec], sft_steps=2, grpo_steps=2,
                  sft_kl_coef=0.1, sasr_warmup_steps=2, sasr_reference="warmup", static_sft_steps=1,
                  static_grpo_steps=2, max_completion_length=10, seed=3)
    full_dir = tmp_path / "full"
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(full_dir), **common)).train()
    full = read_metrics(full_dir)
    types = [r["step_type"] for r in full]
    if method == "sasr":
        assert types[:2] == ["sft", "sft"] and {"sft", "grpo"} <= set(types[2:]) | {"sft", "grpo"}
        assert all(r["sasr/mode"] == r["step_type"] for r in full)
        assert all("kl_ref" in r for r in full[2:])  # measured every step after the warm-up snapshot
    else:
        assert types == STEP_TYPES[method]
    for record in full:
        assert all(v == v and abs(v) != float("inf") for v in record.values() if isinstance(v, float)), record
    if method == "srft":
        assert all(0 < r["srft/w_sft"] <= 0.5 for r in full)
    if method in ("luffy", "srft"):
        assert all("demo/reward" in r for r in full)

    part_dir = tmp_path / "part"
    shutil.copytree(full_dir / "checkpoints", part_dir / "checkpoints")
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
