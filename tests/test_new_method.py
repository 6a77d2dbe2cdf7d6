"""Adding a method touches only its own module and its registration. A new method, defined here and
registered for these tests only, recombines existing terms (SFT on the step's demonstrations plus LUFFY's
mixed-policy term over groups that hold them) and trains, checkpoints and resumes through the shared
loop like the shipped ones; nothing in src/sftrl names it."""

import shutil

import pytest

from sftrl import losses
from sftrl.data import Example
from sftrl.errors import ConfigError
from sftrl.methods import METHODS
from sftrl.methods.base import Method, Metrics, Placement, State, StepContext, StepKind, always, only
from sftrl.trainer import Trainer
from sftrl.validate import load_config

from conftest import comparable, make_config, read_metrics

SFT_WEIGHT = 0.5


def step(trainer: StepContext, state: State, examples: list[Example], kind: StepKind) -> Metrics:
    cfg = trainer.config

    def mixed_loss(*, logps, old_logps, entropy, advantages, is_demo, **inputs):
        return losses.mixed_policy_token_loss(logps, old_logps, advantages, is_demo, cfg.epsilon, cfg.epsilon_high,
                                              cfg.clip_ratio, shaping_gamma=cfg.luffy_gamma)

    sft = trainer.sft_backward(examples, weight=SFT_WEIGHT)
    rl = trainer.policy_backward(trainer.rollouts(examples, Placement.REPLACE), mixed_loss)
    return {**sft, **rl, "sft_luffy/sft_weight": SFT_WEIGHT}


METHOD = Method(name="sft-luffy", plan=always(StepKind.POLICY), step=step, kinds=only(StepKind.POLICY),
                needs_demonstrations=True, needs_rollouts=True)


@pytest.fixture
def registered(monkeypatch):
    """The method's registration: its name in METHODS, for this test only."""
    monkeypatch.setitem(METHODS, METHOD.name, METHOD)


def test_a_method_defined_outside_the_package_trains_checkpoints_and_resumes(tmp_path, tiny_model_dir, registered):
    config = make_config(tmp_path, tiny_model_dir, method=METHOD.name, max_steps=3, save_every=2, num_generations=3)
    Trainer(config).train()
    records = [r for r in read_metrics(config.run_dir) if "step_type" in r]
    assert [r["step_type"] for r in records] == ["sft+grpo"] * 3
    assert all(r["sft_luffy/sft_weight"] == SFT_WEIGHT and "demo/reward" in r for r in records)

    resumed = tmp_path / "resumed"
    checkpoint = config.run_dir / "checkpoints" / "step-000002"
    shutil.copytree(checkpoint, resumed / "checkpoints" / checkpoint.name)
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(config.run_dir / name, resumed / name)
    Trainer(make_config(tmp_path, tiny_model_dir, method=METHOD.name, max_steps=3, save_every=2, num_generations=3,
                        output_dir=str(resumed), resume=True)).train()
    assert comparable(read_metrics(resumed)) == comparable(read_metrics(config.run_dir))


def test_an_unregistered_method_is_refused_by_name():
    with pytest.raises(ConfigError, match="method: unknown 'sft-luffy'"):
        load_config(overrides={"method": METHOD.name})
