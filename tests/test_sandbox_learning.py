"""The sandbox separates the paradigms: from the shipped base model, a short GRPO run and a short SFT run
each raise greedy accuracy, and only SFT teaches the doubling skill.

Thresholds come from five seeds measured with `benchmarks/sandbox_gains.py` on 2 cores (see the README,
"The sandbox"), with wide margins so that other CPUs' floats cannot flip them:
- GRPO, recipes/sandbox-grpo.yaml cut to 8 steps: +49.0 ± 4.2 points on these 100 prompts (smallest
  +45.0); the doubling family stayed at 3.3% on every seed.
- SFT, recipes/sandbox-sft.yaml cut to 12 steps: +35.2 ± 1.6 points (smallest +34.0).
"""

from pathlib import Path

import pytest

from sftrl.trainer import Trainer
from sftrl.validate import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CHAIN, DOUBLE = "eval/accuracy/sandbox-test-chain", "eval/accuracy/sandbox-test-double"


def run(tmp_path, recipe, steps):
    config = load_config(RECIPES / recipe, [f"max_steps={steps}", "max_eval_examples=100", "progress=false",
                                            "save_every=0", f"output_dir={tmp_path / 'run'}"])
    summary = Trainer(config).train()
    return summary["eval_before"], summary["eval_after"]


@pytest.mark.float_sensitive
def test_grpo_amplifies_the_latent_strategy_but_cannot_find_the_skill(tmp_path):
    before, after = run(tmp_path, "sandbox-grpo.yaml", 8)
    assert before["eval/accuracy"] == pytest.approx(0.10, abs=0.03)  # the shipped base model
    assert after["eval/accuracy"] >= before["eval/accuracy"] + 0.20, (before, after)
    assert after[CHAIN] >= before[CHAIN] + 0.30, (before, after)
    assert after[DOUBLE] <= 0.15, after  # nothing to amplify: the base model never solves it


@pytest.mark.float_sensitive
def test_sft_teaches_the_demonstrations(tmp_path):
    before, after = run(tmp_path, "sandbox-sft.yaml", 12)
    assert after["eval/accuracy"] >= before["eval/accuracy"] + 0.15, (before, after)
    assert after[CHAIN] >= before[CHAIN] + 0.20, (before, after)
