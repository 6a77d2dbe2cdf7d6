"""uft's QuestA and Prefix-RFT schedules: the schedule values against hand-computed numbers, the
top-entropy prefix-token selection against a naive per-token version, Prefix-RFT's advantages against its
released code's formula, one-line errors for bad values, and a tiny run of each sandbox recipe."""

import math
import random
from pathlib import Path

import pytest
import torch

from sftrl import losses
from sftrl.config import ConfigError
from sftrl.methods import uft
from sftrl.validate import load_config

from conftest import make_config, read_metrics

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


class Schedule:
    def __init__(self, schedule, high=None, low=None):
        self.uft_schedule, self.uft_prefix_high, self.uft_prefix_low = schedule, high, low


def test_questa_fraction_and_hint_by_hand():
    assert uft.prefix_fractions(Schedule("questa")) == (0.5, 0.25)
    assert uft.prefix_fractions(Schedule("prefix-rft")) == (0.95, 0.05)
    assert uft.prefix_fractions(Schedule("questa", 0.6, 0.1)) == (0.6, 0.1)
    assert [uft.questa_fraction(t, 25, 0.5, 0.25) for t in (1, 25, 26, 50)] == [0.5, 0.5, 0.25, 0.25]
    demo = "10-6=4\n4+9=13\n13+5=18\n\\boxed{18}"  # 32 characters
    assert uft.questa_hint(demo, 0.5) == demo[:16] == "10-6=4\n4+9=13\n13"
    assert uft.questa_hint(demo, 0.25) == ""  # int(32 · 0.25) = 8 characters < 10: no hint (QuestA's code)
    assert uft.questa_hint("thinking</think>" + demo, 0.5) == demo[:16]  # only the text after </think>
    assert uft.with_hint("Compute 1+2.", "1+2=3 and so") == "Compute 1+2.\n\n## Hint.1+2=3 and so"
    assert uft.with_hint("Compute 1+2.", "") == "Compute 1+2."
    messages = [{"role": "system", "content": "s"}, {"role": "user", "content": "q"}]
    assert uft.with_hint(messages, "h")[1]["content"] == "q\n\n## Hint.h" and messages[1]["content"] == "q"


def test_prefix_rft_low_and_length_by_hand():
    # low_t = 0.05 + ½(1 + cos(πt/T))·0.9, T = 100
    assert uft.prefix_rft_low(0, 100, 0.95, 0.05) == pytest.approx(0.95)
    assert uft.prefix_rft_low(25, 100, 0.95, 0.05) == pytest.approx(0.05 + 0.5 * (1 + math.sqrt(0.5)) * 0.9)  # 0.8182
    assert uft.prefix_rft_low(50, 100, 0.95, 0.05) == pytest.approx(0.5)
    assert uft.prefix_rft_low(100, 100, 0.95, 0.05) == pytest.approx(0.05)
    assert uft.prefix_rft_low(101, 100, 0.95, 0.05) == 0.05
    assert uft.prefix_rft_low(3, 0, 0.95, 0.05) == 0.05
    assert uft.prefix_length(40, 0.5) == 20
    assert uft.prefix_length(40, 0.999) == 39  # at most n - 1
    assert uft.prefix_length(10, 0.05) == 1  # at least 1
    assert uft.prefix_length(0, 0.5) == 0 and uft.prefix_length(10, 0.0) == 0


def naive_top_entropy(entropy, candidates, keep):
    """Per token: rank the candidates by (entropy, position) and keep those past the int(n(1-keep)) lowest."""
    flat = [(float(entropy[b, t]), b * entropy.shape[1] + t, (b, t))
            for b in range(entropy.shape[0]) for t in range(entropy.shape[1]) if candidates[b, t]]
    dropped = {where for _, _, where in sorted(flat)[:int(len(flat) * (1 - keep))]}
    return torch.tensor([[bool(candidates[b, t]) and (b, t) not in dropped for t in range(entropy.shape[1])]
                         for b in range(entropy.shape[0])])


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("keep", [0.2, 0.5, 1.0])
def test_top_entropy_selection_against_a_naive_per_token_version(seed, keep):
    generator = torch.Generator().manual_seed(seed)
    entropy = torch.rand(4, 9, generator=generator).round(decimals=1)  # ties on purpose
    lengths = torch.randint(0, 9, (4,), generator=generator)
    candidates = torch.arange(9).unsqueeze(0) < lengths.unsqueeze(1)
    got = losses.top_entropy_mask(entropy, candidates, keep)
    assert torch.equal(got, naive_top_entropy(entropy, candidates, keep))
    n = int(candidates.sum())
    assert int(got.sum()) == n - int(n * (1 - keep))

    advantages, prefix_adv = torch.randn(4, generator=generator), torch.randn(4, generator=generator)
    token_adv = losses.prefix_token_advantages(advantages, candidates, prefix_adv.unsqueeze(1).expand(4, 9), entropy,
                                               keep)
    for b in range(4):
        for t in range(9):
            expected = (float(prefix_adv[b]) if got[b, t] else 0.0) if t < lengths[b] else float(advantages[b])
            assert float(token_adv[b, t]) == pytest.approx(expected)


def public_prefix_scores(plain, prefixed, epsilon=1e-6):
    """compute_grpo_prefix_outcome_advantage (ZeroYuHuang/prefix_rft, recipe/prefix_rft/core_algos.py),
    re-typed for one prompt: groups by prefix id, a group of one has mean 0 and std 1; the prefixed rollout's
    prefix score is its normalised score minus the mean of the unprefixed group."""
    plain_mean = sum(plain) / len(plain)
    score = (prefixed - 0.0) / (1.0 + epsilon)
    return score, score - plain_mean


def test_prefix_rft_advantages_against_its_released_formula():
    rng = random.Random(0)
    plain = torch.tensor([[float(rng.random() < 0.4) for _ in range(7)] for _ in range(5)])
    prefixed = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    advantage, prefix_advantage = losses.prefix_rft_advantages(plain, prefixed)
    for i in range(5):
        score, p_score = public_prefix_scores(plain[i].tolist(), float(prefixed[i]))
        assert float(advantage[i]) == pytest.approx(score) and float(prefix_advantage[i]) == pytest.approx(p_score)
    nan = losses.prefix_rft_advantages(torch.tensor([[1.0, float("nan")]]), torch.tensor([float("nan")]))
    assert nan[0].tolist() == [0.0] and nan[1].tolist() == [0.0]


@pytest.mark.parametrize("override,message", [
    (dict(uft_schedule="questa2"), "uft_schedule: 'questa2' is not one of uft, questa, prefix-rft"),
    (dict(uft_prefix_high=1.5), "uft_prefix_high: must be in [0, 1] or null, got 1.5"),
    (dict(uft_prefix_low=-0.1), "uft_prefix_low: must be in [0, 1] or null"),
    (dict(uft_prefix_high=0.2, uft_prefix_low=0.5), "uft_prefix_low: must not exceed uft_prefix_high=0.2"),
    (dict(uft_entropy_top=0.0), "uft_entropy_top: must be in (0, 1], got 0.0"),
])
def test_bad_values_give_a_one_line_error_naming_the_field(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"method": "uft", **override})
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("recipe,schedule", [("sandbox-questa.yaml", "questa"), ("sandbox-prefix-rft.yaml", "prefix-rft")])
def test_each_preset_recipe_trains_a_tiny_run(tmp_path, tiny_model_dir, recipe, schedule):
    from sftrl.config import read_recipe
    from sftrl.trainer import train

    values = read_recipe(RECIPES / recipe)
    assert values["method"] == "uft" and values["uft_schedule"] == schedule
    keep = {k: values[k] for k in ("method", "uft_schedule", "uft_hint_steps", "beta", "entropy_coef")}
    config = make_config(tmp_path, tiny_model_dir, reward_funcs=["sandbox"], **{**keep, "uft_hint_steps": 1})
    train(config)
    records = [r for r in read_metrics(tmp_path / "run") if "step_type" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    if schedule == "questa":  # stage 1 then stage 2 (T_hint = 1)
        assert [r["uft/prefix_fraction"] for r in records] == [0.5, 0.25]
        assert records[0]["uft/hinted_prompts"] >= 1 and records[0]["uft/hint_share"] > 0.3
    else:
        assert [r["uft/prefix_low"] for r in records] == pytest.approx([0.05, 0.05])
        assert all(r["uft/hinted_prompts"] == 4 and 0 < r["uft/hint_share"] < 1 for r in records)
        assert "sft/loss" not in records[0]  # no hint NLL: the prefix is in the policy-gradient loss
