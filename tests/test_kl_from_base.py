"""kl_from_base (RL's Razor, arXiv 2509.04259): the pure function against a naive per-token version, exact
when the base's kept tokens are the whole vocabulary; 0 before training and logged at each evaluation;
drawn by `sftrl report` beside accuracy."""

import math

import pytest
import torch

from sftrl import evaluate
from sftrl.config import ConfigError
from sftrl.validate import load_config

from conftest import make_config, read_metrics


def naive_forward_kl(base_logps, base_ids, logps):
    """Per token: the KL between the base and the policy distributions grouped into the base's kept tokens
    and one bucket for the rest, summed in Python."""
    B, T, K = base_logps.shape
    out = torch.zeros(B, T, dtype=torch.float64)
    for b in range(B):
        for t in range(T):
            kl, p_kept, q_kept = 0.0, 0.0, 0.0
            for k in range(K):
                p = math.exp(float(base_logps[b, t, k]))
                q = math.exp(float(logps[b, t, int(base_ids[b, t, k])]))
                kl += p * (math.log(p) - math.log(q))
                p_kept, q_kept = p_kept + p, q_kept + q
            p_rest, q_rest = max(0.0, 1.0 - p_kept), max(1e-300, 1.0 - q_kept)
            if p_rest > 0:
                kl += p_rest * (math.log(p_rest) - math.log(q_rest))
            out[b, t] = kl
    return out


@pytest.mark.parametrize("keep", [3, 11])
def test_forward_kl_against_a_naive_per_token_version(keep):
    generator = torch.Generator().manual_seed(keep)
    base = torch.log_softmax(torch.randn(2, 5, 11, dtype=torch.float64, generator=generator) * 2, -1)  # (B, T, V)
    policy = torch.log_softmax(torch.randn(2, 5, 11, dtype=torch.float64, generator=generator) * 2, -1)
    top, ids = torch.topk(base, keep, dim=-1)
    got = evaluate.forward_kl_top_k(top, ids, policy)
    assert got.shape == (2, 5)
    assert torch.allclose(got, naive_forward_kl(top, ids, policy), atol=1e-9)
    exact = (base.exp() * (base - policy)).sum(-1)  # KL(π_base ‖ π_θ) over the whole vocabulary
    if keep == 11:
        assert torch.allclose(got, exact, atol=1e-9)
    else:
        assert (got <= exact + 1e-9).all() and (got >= -1e-12).all()  # a lower bound, never negative
    assert torch.allclose(evaluate.forward_kl_top_k(top, ids, base), torch.zeros(2, 5, dtype=torch.float64),
                          atol=1e-9)


def test_kl_from_base_is_zero_before_training_and_logged_at_each_evaluation(tmp_path, tiny_model_dir, reward_spec):
    from sftrl.trainer import train

    run = tmp_path / "run"
    train(make_config(tmp_path, tiny_model_dir, method="grpo", reward_funcs=[reward_spec], eval_data="sandbox:test",
                      max_eval_examples=4, eval_samples=0, eval_every=1, max_steps=3, kl_from_base_examples=2,
                      learning_rate=1e-2))
    records = read_metrics(run)
    logged = [(r["step"], r["kl_from_base"]) for r in records if "kl_from_base" in r]
    assert [step for step, _ in logged] == [0, 1, 2, 3]  # before training, eval_every, and the end
    assert logged[0][1] == pytest.approx(0.0, abs=1e-6)
    assert all(kl > 1e-6 for _, kl in logged[1:])

    from sftrl.report import load_run, write_report
    images = write_report([load_run(run)], tmp_path / "report")
    assert "kl_from_base.png" in {p.name for p in images}
    assert "KL from base (after)" in (tmp_path / "report" / "report.md").read_text()


def test_kl_from_base_measures_the_trained_policy_against_the_base(tmp_path, tiny_model_dir):
    from sftrl.trainer import Trainer

    trainer = Trainer(make_config(tmp_path, tiny_model_dir, eval_data="sandbox:test", max_eval_examples=4,
                                  kl_from_base_examples=3, eval_samples=0))
    base = trainer.evaluator.kl_base
    assert len(base.target_ids) == 3 and base.top_logps[0].shape == (len(base.target_ids[0]), base.top_ids[0].shape[1])
    with torch.no_grad():
        for p in trainer.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kl = evaluate.kl_from_base(trainer.policy, trainer.tokenizer, base)
    # Against the same sum over positions with the naive function on the whole vocabulary.
    total, tokens = 0.0, 0
    for prompt, target, top, ids in zip(base.prompt_ids, base.target_ids, base.top_logps, base.top_ids):
        logps = evaluate._demonstration_logps(trainer.policy, prompt, target, trainer.pad_id)
        total += float(naive_forward_kl(top[None].double(), ids[None], logps[None].double()).sum())
        tokens += len(target)
    assert kl == pytest.approx(total / tokens, rel=1e-4) and kl > 0
    off = Trainer(make_config(tmp_path, tiny_model_dir, eval_data="sandbox:test", max_eval_examples=4,
                              kl_from_base_examples=0, output_dir=str(tmp_path / "off")))
    assert off.evaluator.kl_base is None


def test_bad_kl_from_base_examples_is_a_one_line_error():
    with pytest.raises(ConfigError) as error:
        load_config(overrides={"kl_from_base_examples": -1})
    assert "kl_from_base_examples: must be 0 or more, got -1" in str(error.value) and "\n" not in str(error.value)
