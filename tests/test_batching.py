"""The training forward's layout: prompts shared by their group's rows and length-sorted micro-batches
compute the same losses and gradients, on fixed rollouts, as one forward over every row whole."""

import pytest
import torch

import sftrl.batching
import sftrl.terms
from sftrl.batching import _whole_rows, micro_batches, pack, target_logits
from sftrl.sandbox.model import build_model
from sftrl.sandbox.tokenizer import build_tokenizer
from sftrl.trainer import Trainer

from conftest import make_config


def random_groups(groups: int, size: int, seed: int = 0):
    """`groups` prompts of random lengths, each followed by `size` targets of random lengths (1..29)."""
    g = torch.Generator().manual_seed(seed)
    prompts, targets = [], []
    for _ in range(groups):
        prompt = torch.randint(3, 100, (int(torch.randint(5, 20, (1,), generator=g)),), generator=g).tolist()
        for _ in range(size):
            prompts.append(prompt)
            targets.append(torch.randint(3, 100, (int(torch.randint(1, 30, (1,), generator=g)),), generator=g).tolist())
    return prompts, targets


def loss_and_grads(model, batch, forward):
    """Token-mean log-likelihood of the targets through `forward`, and its gradient."""
    model.zero_grad(set_to_none=True)
    logits = forward(model, batch)
    logps = torch.log_softmax(logits.float(), -1).gather(-1, batch.targets.unsqueeze(-1)).squeeze(-1)  # (B, T)
    loss = (logps * batch.target_mask).sum() / batch.target_mask.sum()
    loss.backward()
    return logits.detach(), loss.item(), [p.grad.clone() for p in model.parameters()]


def test_pack_stores_each_prompt_once():
    prompts, targets = random_groups(3, 4)
    batch = pack(prompts, targets, 0, torch.device("cpu"))
    assert batch.prompt_ids.shape[0] == 3 and batch.prompt_of.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert batch.targets.shape == (12, max(len(t) for t in targets))
    for i, (p, t) in enumerate(zip(prompts, targets)):
        row = batch.prompt_ids[batch.prompt_of[i]]
        assert row[row.shape[0] - len(p):].tolist() == p and int(batch.prompt_mask[batch.prompt_of[i]].sum()) == len(p)
        assert batch.targets[i, :len(t)].tolist() == t and int(batch.target_mask[i].sum()) == len(t)
    assert not pack([[1, 2], [3]], [[4], [5]], 0, torch.device("cpu")).shares_prompts


@pytest.mark.float_sensitive
def test_shared_prompt_forward_matches_whole_rows_in_logits_loss_and_gradients():
    model = build_model(build_tokenizer(), seed=0).train()
    prompts, targets = random_groups(5, 4)
    batch = pack(prompts, targets, 0, torch.device("cpu"))
    assert batch.shares_prompts
    whole = loss_and_grads(model, batch, _whole_rows)
    shared = loss_and_grads(model, batch, target_logits)
    real = batch.target_mask.bool()
    assert float((whole[0] - shared[0])[real].abs().max()) < 1e-5
    assert abs(whole[1] - shared[1]) < 1e-6
    assert max(float(g.abs().max()) for g in whole[2]) > 1e-3  # real gradients are compared
    for a, b in zip(whole[2], shared[2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


@pytest.mark.float_sensitive
def test_single_token_targets_take_the_prompt_pass_only():
    model = build_model(build_tokenizer(), seed=1).eval()
    batch = pack([[5, 6, 7]] * 3 + [[8, 9]] * 2, [[10], [11], [12], [13], [14]], 0, torch.device("cpu"))
    with torch.no_grad():
        torch.testing.assert_close(target_logits(model, batch), _whole_rows(model, batch), atol=1e-5, rtol=1e-5)


def test_micro_batches_cover_every_row_once_longest_first():
    lengths = [3, 9, 1, 9, 5, 7, 2]
    batches = micro_batches(lengths, 3)
    assert batches == [[1, 3, 5], [4, 0, 6], [2]]
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    assert micro_batches([], 4) == []


def old_layout(monkeypatch):
    """Today's computation before this layout: micro-batches of consecutive rows, every row run whole."""
    monkeypatch.setattr(sftrl.terms, "micro_batches",
                        lambda lengths, size: [list(range(i, min(len(lengths), i + size)))
                                               for i in range(0, len(lengths), size)])
    monkeypatch.setattr(sftrl.batching, "target_logits",
                        lambda model, batch, hidden=False, share_prompts=True: _whole_rows(model, batch, hidden))


def make_trainer(tmp_path, model_dir, reward_spec, **overrides):
    """test_trainer's small sandbox run, with a reward and micro-batches of 5 rows."""
    return Trainer(make_config(tmp_path, model_dir, **{"reward_funcs": [reward_spec], "micro_batch_size": 5,
                                                        **overrides}))


@pytest.mark.parametrize("method,overrides", [
    ("grpo", dict(beta=0.05, loss_type="grpo")),  # a reference forward and the k3 KL on the shared layout too
    ("grpo", dict(loss_type="dr_grpo", mask_truncated_completions=True)),
    ("luffy", dict()),  # demonstrations inside the groups share their prompts as well
    ("srft", dict(loss_type="dapo")),  # SFT on demonstrations (no shared prompts) + the augmented groups
])
@pytest.mark.float_sensitive
def test_policy_step_on_fixed_rollouts_matches_the_old_layout(tmp_path, tiny_model_dir, reward_spec, monkeypatch,
                                                              method, overrides):
    trainer = make_trainer(tmp_path, tiny_model_dir, reward_spec, method=method, **overrides)
    if trainer.reference is not None:  # one update first, so that π_θ ≠ π_ref and the KL has a gradient
        trainer.sft_backward(trainer.rows.examples[8:16])
        trainer.optimizer_step(1e-2)
    examples = trainer.rows.examples[:4]
    torch.manual_seed(0)
    new = trainer.method.step(trainer, trainer.method_state, examples, trainer.method.plan(trainer.config, 0, {}))
    new_grads = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.optimizer.zero_grad(set_to_none=True)
    with monkeypatch.context() as patch:
        old_layout(patch)
        torch.manual_seed(0)  # the same rollouts: sampling does not depend on the training layout
        old = trainer.method.step(trainer, trainer.method_state, examples, trainer.method.plan(trainer.config, 0, {}))
    old_grads = [p.grad.clone() for p in trainer.model.parameters()]
    assert new["completions/mean_length"] == old["completions/mean_length"] and new["reward"] == old["reward"]
    losses = [key for key in new if key.endswith("loss")]
    assert losses and all(abs(new[key] - old[key]) <= 1e-6 for key in losses), {k: (new[k], old[k]) for k in losses}
    for key in ("entropy", "kl", "sft/entropy", "demo/entropy"):
        if key in old:
            assert new[key] == pytest.approx(old[key], rel=1e-5, abs=1e-6), key
    assert torch.sqrt(sum((g ** 2).sum() for g in old_grads)) > 1e-4  # real gradients are compared
    for a, b in zip(new_grads, old_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
