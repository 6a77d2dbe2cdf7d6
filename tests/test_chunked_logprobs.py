"""Memory knobs change no number: log-probabilities taken in chunks (`logprob_chunk_size`) and activation
checkpointing (`gradient_checkpointing`) give the values, losses and gradients of the plain forward."""

import copy

import pytest
import torch

from sftrl.batching import pack, score_targets
from sftrl.models import activation_checkpointing, set_activation_checkpointing
from sftrl.sandbox.model import build_model
from sftrl.sandbox.tokenizer import build_tokenizer

from test_batching import make_trainer


def shared_batch():
    prompts = [[5, 6, 7, 8]] * 3 + [[9, 10]] * 2 + [[11, 12, 13]]
    targets = [[14, 15, 16], [17, 18, 19, 20, 21], [22], [23, 24], [25, 26, 27, 28], [29, 30, 31, 32, 33, 34]]
    return pack(prompts, targets, 0, torch.device("cpu"))


def scores_and_grads(model, reference, batch, chunk_size):
    model.zero_grad(set_to_none=True)
    s = score_targets(model, batch, 0.7, reference=reference, ref_logps=True, kl_grad=True, chunk_size=chunk_size)
    mask = batch.target_mask
    loss = ((-s.logps - 0.3 * s.entropy + 2.0 * s.kl) * mask).sum() / mask.sum()
    loss.backward()
    return s, float(loss.detach()), [p.grad.clone() for p in model.parameters()]


@pytest.mark.float_sensitive
@pytest.mark.parametrize("chunk_size", [1, 7, 64])
def test_chunked_scores_match_the_whole_logits(chunk_size):
    model = build_model(build_tokenizer(), seed=0).train()
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    with torch.no_grad():  # a reference that differs, so the KL and its gradient are not zero
        for p in reference.parameters():
            p.add_(0.02 * torch.randn_like(p, generator=torch.Generator().manual_seed(p.numel())))
    batch = shared_batch()
    whole, whole_loss, whole_grads = scores_and_grads(model, reference, batch, 0)
    chunked, chunked_loss, chunked_grads = scores_and_grads(model, reference, batch, chunk_size)
    real = batch.target_mask.bool()
    for field in ("logps", "entropy", "ref_logps", "kl"):
        a, b = getattr(whole, field)[real], getattr(chunked, field)[real]
        assert float((a - b).abs().max()) < 1e-6, field
    assert float(whole.kl[real].max()) > 1e-4
    assert abs(whole_loss - chunked_loss) < 1e-6
    assert max(float(g.abs().max()) for g in whole_grads) > 1e-2  # real gradients are compared
    for a, b in zip(whole_grads, chunked_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.float_sensitive
def test_grpo_with_kl_and_sft_match_without_chunks_or_checkpointing(tmp_path, tiny_model_dir, reward_spec):
    trainer = make_trainer(tmp_path, tiny_model_dir, reward_spec, method="grpo", beta=0.05, entropy_coef=0.01)
    trainer.config.logprob_chunk_size = 0
    trainer.sft_backward(trainer.rows.examples[8:16])  # one update first: π_θ ≠ π_ref, the KL has a gradient
    trainer.optimizer_step(1e-2)
    examples = trainer.rows.examples[:4]

    def step():
        torch.manual_seed(0)  # the same rollouts whatever the training forward
        grpo = trainer.grpo_backward(examples)
        sft = trainer.sft_backward(trainer.rows.examples[16:22], kl_coef=0.1)  # RL→SFT_KL's trained exact KL
        grads = [p.grad.clone() for p in trainer.model.parameters()]
        trainer.optimizer.zero_grad(set_to_none=True)
        return grpo, sft, grads

    baseline = step()
    assert baseline[0]["kl"] > 1e-5 and baseline[1]["kl_ref"] > 1e-5
    assert torch.sqrt(sum((g ** 2).sum() for g in baseline[2])) > 1e-3
    for chunk_size, checkpointing in ((5, False), (0, True), (3, True)):
        trainer.config.logprob_chunk_size = chunk_size
        set_activation_checkpointing(trainer.policy, checkpointing)
        assert activation_checkpointing(trainer.policy) == checkpointing
        grpo, sft, grads = step()
        for new, old in ((grpo, baseline[0]), (sft, baseline[1])):
            for key in ("grpo/loss", "sft/loss", "kl", "kl_ref", "entropy", "sft/entropy"):
                if key in old:
                    assert new[key] == pytest.approx(old[key], abs=1e-6, rel=1e-6), (chunk_size, checkpointing, key)
        for a, b in zip(grads, baseline[2]):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_config_turns_it_on(tmp_path, tiny_model_dir, reward_spec):
    trainer = make_trainer(tmp_path, tiny_model_dir, reward_spec, method="sft", gradient_checkpointing=True)
    assert activation_checkpointing(trainer.policy)
    metrics = trainer.sft_backward(trainer.rows.examples[:4])
    assert metrics["sft/loss"] > 0 and all(p.grad is not None for p in trainer.model.parameters())
