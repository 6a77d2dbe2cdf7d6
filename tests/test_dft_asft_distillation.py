"""Issue 25: DFT, ASFT, OPSD and OPD. Each loss against a naive per-token loop; DFT against TRL's SFTTrainer
loss, ASFT against NeMo-RL's ASFTLossFn and the distillation loss against TRL's sampled-token
self-distillation loss, each re-typed here and run on the same float64 inputs (values and gradients);
micro-batches of 1 give the step's gradient; every method trains from the CLI; bad values are one line."""

import math
import shutil

import pytest
import torch

from sftrl import losses
from sftrl.batching import pack, target_logits
from sftrl.cli import main
from sftrl.config import ConfigError
from sftrl.methods import METHODS, opsd
from sftrl.models import load_frozen
from sftrl.trainer import Trainer

from conftest import grads, make_config, read_metrics
from test_bad_input import fails_cleanly, train_args


def logits_and_mask(seed=0, B=4, T=6, V=9, dtype=torch.float64):
    """Float64 logits (B, T, V) with a gradient, tokens (B, T) and a ragged mask (B, T)."""
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(B, T, V, generator=g, dtype=dtype) * 2.5).requires_grad_()
    tokens = torch.randint(0, V, (B, T), generator=g)
    lengths = [T, 2, T - 1, 4][:B]
    mask = torch.tensor([[1.0] * n + [0.0] * (T - n) for n in lengths], dtype=dtype)
    return logits, tokens, mask


def gathered(logits, tokens):
    return torch.log_softmax(logits, -1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


# ------------------------------------------------------------------------------------ naive per-token loops
@pytest.mark.float_sensitive
def test_dft_loss_matches_a_per_token_loop_and_its_gradient_is_minus_p():
    g = torch.Generator().manual_seed(1)
    logps = (-torch.rand(3, 5, generator=g, dtype=torch.float64) * 4).requires_grad_()
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0]], dtype=torch.float64)
    n = int(mask.sum())
    loss = losses.sft_loss(logps, mask, n, losses.dft_weights(logps))
    values = logps.detach()
    naive = sum(-math.exp(float(values[b, t])) * float(values[b, t])
                for b in range(3) for t in range(5) if mask[b, t]) / n
    assert float(loss.detach()) == pytest.approx(naive, rel=1e-12)
    loss.backward()
    torch.testing.assert_close(logps.grad, -logps.detach().exp() * mask / n)  # d(-sg(p)·log p)/d log p = -p
    assert not losses.dft_weights(logps).requires_grad


def naive_k3(logp, ref, lo_clamp, out_clamp):
    r = ref - logp
    if lo_clamp is not None:
        r = min(max(r, -lo_clamp), lo_clamp)
    k = math.exp(r) - 1 - r
    return k if out_clamp is None else min(max(k, -out_clamp), out_clamp)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("clamps", [(20.0, 10.0), (None, None), (1.0, 0.5)])
def test_clamped_k3_and_asft_token_loss_match_a_per_token_loop(clamps):
    lo, out = clamps
    logps = torch.tensor([[-0.2, -3.0, -15.0, -1.0], [-30.0, -0.5, -2.0, -0.01]], dtype=torch.float64)
    ref = torch.tensor([[-0.3, -0.4, -0.1, -1.0], [-0.2, -6.0, -2.5, -28.0]], dtype=torch.float64)
    kl = losses.clamped_k3_kl(logps, ref, lo, out)
    per_token = losses.asft_token_loss(logps, ref, 0.03, lo, out)
    for b in range(2):
        for t in range(4):
            k = naive_k3(float(logps[b, t]), float(ref[b, t]), lo, out)
            assert float(kl[b, t]) == pytest.approx(k, rel=1e-12)
            p = math.exp(float(logps[b, t]))
            assert float(per_token[b, t]) == pytest.approx(-p * float(logps[b, t]) + 0.03 * k, rel=1e-12)
    if clamps == (20.0, 10.0):  # both clamps bind somewhere in these inputs
        assert float(kl.max()) == 10.0 and float((ref - logps).max()) > 20.0
    torch.testing.assert_close(losses.asft_token_loss(logps, None, 0.0), -logps.exp() * logps)
    with pytest.raises(ValueError, match="ref_logps"):
        losses.asft_token_loss(logps, None, 0.03)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("reward_coef,clip", [(0.0, True), (0.5, True), (0.5, False)])
def test_distillation_token_loss_matches_a_per_token_loop(reward_coef, clip):
    g = torch.Generator().manual_seed(2)
    old = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    logps = (old + torch.randn(3, 5, generator=g, dtype=torch.float64) * 0.4).requires_grad_()
    teacher = -torch.rand(3, 5, generator=g, dtype=torch.float64) * 3
    adv = torch.tensor([1.2, -0.4, 0.0], dtype=torch.float64)
    loss, stats = losses.distillation_token_loss(logps, old, teacher, adv, reward_coef, 0.2, 0.28, clip)
    loss, values = loss.detach(), logps.detach()
    for b in range(3):
        for t in range(5):
            a = float(teacher[b, t] - old[b, t]) + reward_coef * float(adv[b])
            ratio = math.exp(float(values[b, t] - old[b, t]))
            expected = -min(ratio * a, min(max(ratio, 0.8), 1.28) * a) if clip else -ratio * a
            assert float(loss[b, t]) == pytest.approx(expected, rel=1e-12, abs=1e-15)
            assert float(stats["reverse_kl"][b, t]) == pytest.approx(float(values[b, t] - teacher[b, t]), rel=1e-12)
    on_policy, _ = losses.distillation_token_loss(logps, logps.detach(), teacher)  # ρ = 1: the k1 estimate
    torch.testing.assert_close(on_policy, (logps - teacher).detach())
    on_policy.sum().backward()
    torch.testing.assert_close(logps.grad, (logps - teacher).detach())  # REINFORCE with A_t = log π_T - log π_θ


def test_token_mean_shares_add_up_to_the_step_mean():
    g = torch.Generator().manual_seed(3)
    per_token = torch.randn(5, 4, generator=g, dtype=torch.float64)
    mask = (torch.rand(5, 4, generator=g) > 0.3).double()
    n = int(mask.sum())
    whole = losses.token_mean(per_token, mask, n)
    assert float(whole) == pytest.approx(float((per_token * mask).sum() / n), rel=1e-12)
    parts = sum(losses.token_mean(per_token[i:i + 1], mask[i:i + 1], n) for i in range(5))
    assert float(parts) == pytest.approx(float(whole), rel=1e-12)


# ---------------------------------------------------------------------------------- against the references
def trl_dft_loss(log_probs, label_mask, num_items_in_batch):
    """TRL 1.16 trl/trainer/sft_trainer.py SFTTrainer.compute_loss, lines 1612-1618 (loss_type="dft"), re-typed:
    `outputs.log_probs` is zero on ignored positions; per_token_loss = -log_probs; DFT multiplies it by
    log_probs.exp().detach(); loss = per_token_loss.sum() / num_items_in_batch (the tokens of every
    micro-batch of the step: transformers passes num_items_in_batch, and Trainer sums the micro-batches'
    gradients without dividing by the accumulation steps when it is given)."""
    log_probs = log_probs * label_mask  # "zero on ignored positions"
    per_token_loss = -log_probs
    per_token_loss = per_token_loss * log_probs.exp().detach()
    num_tokens = label_mask.sum() if num_items_in_batch is None else num_items_in_batch
    return per_token_loss.sum() / torch.as_tensor(num_tokens).clamp(min=1)


@pytest.mark.float_sensitive
def test_dft_matches_trls_sft_trainer_loss_in_value_and_gradient():
    logits, tokens, mask = logits_and_mask(seed=4)
    n = int(mask.sum())
    # TRL: two accumulation micro-batches of 2 rows, each divided by the step's token count
    trl = sum(trl_dft_loss(gathered(logits[i:i + 2], tokens[i:i + 2]), mask[i:i + 2], n) for i in (0, 2))
    trl.backward()
    trl_grad = logits.grad.clone()
    logits.grad = None
    # sftrl: micro-batches of 1 row
    ours = 0.0
    for i in range(4):
        logps = gathered(logits[i:i + 1], tokens[i:i + 1])
        ours = ours + losses.sft_loss(logps, mask[i:i + 1], n, losses.dft_weights(logps))
    ours.backward()
    value_gap = abs(float(ours.detach()) - float(trl.detach()))
    grad_gap = float((logits.grad - trl_grad).abs().max())
    print(f"DFT vs TRL: |loss diff| {value_gap:.3e}, max |grad diff| {grad_gap:.3e}")
    assert value_gap <= 1e-12 and grad_gap <= 1e-12
    assert float(trl_grad.abs().max()) > 1e-3  # a real gradient was compared


def nemo_calculate_kl(logprobs, logprobs_reference, kl_type="k3", input_clamp_value=20.0, output_clamp_value=10.0):
    """NeMo-RL nemo_rl/algorithms/utils.py calculate_kl (NVIDIA-NeMo/RL@6a79caf, lines 41-100), re-typed
    without the importance weights."""
    logr = logprobs_reference - logprobs
    if input_clamp_value is not None:
        logr = logr.clamp(min=-input_clamp_value, max=input_clamp_value)
    if kl_type == "k1":
        kl = -logr
    elif kl_type == "k2":
        kl = torch.square(logr) / 2
    elif kl_type == "k3":
        kl = torch.exp(logr) - 1 - logr
    else:
        raise ValueError(f"Invalid KL type: {kl_type}")
    if output_clamp_value is not None:
        kl = kl.clamp(min=-output_clamp_value, max=output_clamp_value)
    return kl


def nemo_masked_mean(values, mask, dim=None, global_normalization_factor=None):
    """NeMo-RL nemo_rl/algorithms/utils.py masked_mean (lines 211-223), re-typed."""
    normalization_factor = torch.sum(mask, dim=dim) if global_normalization_factor is None else \
        global_normalization_factor
    return torch.sum(values * mask, dim=dim) / (normalization_factor + 1e-8)


def nemo_asft_loss(next_token_logprobs, ref_logprobs, mask, global_valid_toks, kl_weight=0.03):
    """NeMo-RL nemo_rl/algorithms/loss/loss_functions.py ASFTLossFn.__call__ (lines 1110-1179), re-typed
    after its masks are applied (token_mask · sample_mask, shifted and aligned by the caller)."""
    dft_weights = torch.exp(next_token_logprobs).detach()
    nll_loss = -next_token_logprobs
    weighted_nll = dft_weights * nll_loss
    kl = nemo_calculate_kl(logprobs=next_token_logprobs, logprobs_reference=ref_logprobs, kl_type="k3",
                           input_clamp_value=20.0, output_clamp_value=10.0)
    per_token_loss = weighted_nll + kl_weight * kl
    return nemo_masked_mean(per_token_loss, mask, global_normalization_factor=global_valid_toks)


@pytest.mark.float_sensitive
def test_asft_matches_nemo_rls_loss_in_value_and_gradient():
    logits, tokens, mask = logits_and_mask(seed=5)
    g = torch.Generator().manual_seed(6)
    ref = gathered(logits.detach() + torch.randn(logits.shape, generator=g, dtype=torch.float64) * 2.0, tokens)
    ref[0, 0] = gathered(logits.detach(), tokens)[0, 0] + 25.0  # the input clamp binds here (and the output clamp)
    n = int(mask.sum())
    # NeMo-RL: one micro-batch of 2 rows, then one of 2, each over the global valid-token count
    nemo = sum(nemo_asft_loss(gathered(logits[i:i + 2], tokens[i:i + 2]), ref[i:i + 2], mask[i:i + 2], n)
               for i in (0, 2))
    nemo.backward()
    nemo_grad = logits.grad.clone()
    logits.grad = None
    ours = 0.0
    for i in range(4):  # micro-batches of 1 row
        logps = gathered(logits[i:i + 1], tokens[i:i + 1])
        ours = ours + losses.token_mean(losses.asft_token_loss(logps, ref[i:i + 1], 0.03, 20.0, 10.0), mask[i:i + 1], n)
    ours.backward()
    value_gap = abs(float(ours.detach()) - float(nemo.detach()))
    grad_gap = float((logits.grad - nemo_grad).abs().max())
    print(f"ASFT vs NeMo-RL: |loss diff| {value_gap:.3e}, max |grad diff| {grad_gap:.3e}")
    # NeMo-RL divides by (tokens + 1e-8): a relative 1e-8/n, the one difference
    assert value_gap <= 1e-9 * abs(float(nemo)) + 1e-15 and grad_gap <= 1e-9 * float(nemo_grad.abs().max())
    assert float(nemo_grad.abs().max()) > 1e-3
    kl_only = losses.token_mean(losses.clamped_k3_kl(gathered(logits, tokens), ref), mask, n)
    assert 0.03 * float(kl_only) > 1e3 * value_gap  # the KL term is well above what the comparison resolves


def trl_sampled_token_loss(student_logits, teacher_logits, completion_ids, loss_mask):
    """TRL 1.16 trl/experimental/sdft/loss_utils.py compute_sampled_token_self_distillation_loss (alpha = 1)
    and SDFTTrainer._compute_self_distillation_loss's reduction (sdft_trainer.py lines 890-894), re-typed:
    per_token_loss = (s - t).detach() · s; loss = mean over sequences of (Σ per_token·mask / Σ mask)."""
    student = torch.log_softmax(student_logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    teacher = torch.log_softmax(teacher_logits, -1).gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1)
    per_token_loss = (student - teacher).detach() * student
    loss = (per_token_loss * loss_mask).sum(-1) / loss_mask.sum(-1).clamp(min=1.0)
    return loss.mean()


@pytest.mark.float_sensitive
def test_distillation_gradient_matches_trls_sampled_token_self_distillation():
    logits, tokens, mask = logits_and_mask(seed=7)
    g = torch.Generator().manual_seed(8)
    teacher_logits = logits.detach() + torch.randn(logits.shape, generator=g, dtype=torch.float64)
    trl = trl_sampled_token_loss(logits, teacher_logits, tokens, mask)  # one micro-batch: TRL's mean is the step's
    trl.backward()
    trl_grad = logits.grad.clone()
    logits.grad = None
    teacher = gathered(teacher_logits, tokens)
    ours = 0.0
    for i in range(4):  # loss_type grpo (the opsd preset) over the step's 4 sequences, micro-batches of 1
        logps = gathered(logits[i:i + 1], tokens[i:i + 1])
        per_token, _ = losses.distillation_token_loss(logps, logps.detach(), teacher[i:i + 1])
        ours = ours + losses.reduce_token_loss(per_token, mask[i:i + 1], "grpo", 4, int(mask.sum()))
    ours.backward()
    grad_gap = float((logits.grad - trl_grad).abs().max())
    print(f"OPSD vs TRL sampled_token: max |grad diff| {grad_gap:.3e}")
    assert grad_gap <= 1e-12 and float(trl_grad.abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------ in the trainer
def test_dft_step_gradient_is_trls_on_the_model(tmp_path, tiny_model_dir):
    """One dft step on the tiny model: its gradient is that of TRL's loss on the model's logits."""
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="dft", micro_batch_size=3))
    examples = trainer.rows.examples[:5]
    metrics = trainer.method.step(trainer, trainer.method_state, examples, None)
    loss = trainer.take_loss()
    got = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)
    batch = pack([trainer.prompt_ids(e) for e in examples], [trainer.demonstration_ids(e)[0] for e in examples],
                 trainer.pad_id, torch.device("cpu"))
    logps = gathered(target_logits(trainer.model, batch).float(), batch.targets)
    expected = trl_dft_loss(logps, batch.target_mask, batch.target_mask.sum())
    expected.backward()
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert 0 < metrics["dft/mean_p"] < 1
    for a, b in zip(got, grads(trainer.model)):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-4)


def method_gradient(trainer, method, examples):
    torch.manual_seed(0)  # the same rollouts each time
    trainer.method.step(trainer, trainer.method_state, examples, None)
    loss = trainer.take_loss()
    out = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)
    return loss, out


@pytest.mark.float_sensitive
@pytest.mark.parametrize("method", ["dft", "asft", "opsd", "opd"])
def test_micro_batches_of_one_give_the_steps_gradient(tmp_path, tiny_model_dir, reward_spec, method):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method=method, reward_funcs=[reward_spec],
                                  micro_batch_size=64, opd_teacher=str(tiny_model_dir), distill_reward_coef=0.3,
                                  opsd_teacher_template="{demonstration}\n{prompt}", opsd_teacher="base"))
    if method in ("asft", "opd", "opsd"):  # one update first, so the policy differs from π_ref and the teachers
        trainer.sft_backward(trainer.rows.examples[8:16])
        trainer.optimizer_step(1e-2)
        trainer.take_loss()
    examples = trainer.rows.examples[:4]
    big_loss, big = method_gradient(trainer, method, examples)
    trainer.config.micro_batch_size = 1
    small_loss, small = method_gradient(trainer, method, examples)
    assert small_loss == pytest.approx(big_loss, rel=1e-5)
    assert torch.sqrt(sum((g ** 2).sum() for g in big)) > 1e-4
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_opsd_teacher_sees_the_demonstration_and_scores_the_students_tokens(tmp_path, tiny_model_dir, reward_spec):
    """The teacher's log-probs are those of the rollout tokens after the templated prompt, from the current
    policy (live) or the model as loaded (base); the logged reverse KL is their token mean."""
    template = "{demonstration}\n{prompt}"
    for teacher in ("live", "base"):
        trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="opsd", reward_funcs=[reward_spec],
                                      opsd_teacher_template=template, opsd_teacher=teacher))
        trainer.sft_backward(trainer.rows.examples[8:16])  # move the policy away from the model as loaded
        trainer.optimizer_step(1e-2)
        examples = trainer.rows.examples[:2]
        torch.manual_seed(0)
        metrics = trainer.method.step(trainer, trainer.method_state, examples, None)
        trainer.optimizer.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        rollouts = trainer.rollouts(examples)
        model = trainer.policy if teacher == "live" else trainer.frozen_model(str(tiny_model_dir), "model")
        kl, tokens = 0.0, 0
        with torch.no_grad():
            for i, target in enumerate(rollouts.target_ids):
                e = examples[i // rollouts.group_size]
                context = trainer.context_ids(opsd.fill_template(template, e.prompt, e.demonstration))
                assert trainer.tokenizer.decode(context).startswith("<|user|>" + e.demonstration)
                t_batch = pack([context], [target], trainer.pad_id, torch.device("cpu"))
                s_batch = pack([rollouts.prompt_ids[i]], [target], trainer.pad_id, torch.device("cpu"))
                t_logps = gathered(target_logits(model, t_batch).float() / trainer.config.temperature, t_batch.targets)
                s_logps = gathered(target_logits(trainer.policy, s_batch).float() / trainer.config.temperature,
                                   s_batch.targets)
                kl += float((s_logps - t_logps).sum())
                tokens += len(target)
        assert metrics["distill/reverse_kl"] == pytest.approx(kl / tokens, rel=1e-4, abs=1e-6)
        assert abs(metrics["distill/reverse_kl"]) > 1e-3


def test_opsd_teacher_prompt_of_chat_messages_keeps_the_system_message():
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "Compute 2+2."}]
    out = opsd.teacher_prompt(messages, "2+2=4 \\boxed{4}", "Q: {prompt}\nA: {demonstration}\nNow you:")
    assert out == [{"role": "system", "content": "be brief"},
                   {"role": "user", "content": "Q: Compute 2+2.\nA: 2+2=4 \\boxed{4}\nNow you:"}]
    assert messages[1]["content"] == "Compute 2+2."  # the example's own prompt is left as it was
    filled = opsd.fill_template("{prompt}|{demonstration}|\\boxed{}", "{demonstration}", "d")
    assert filled == "{demonstration}|d|\\boxed{}"  # one pass: a placeholder inside a value stays


def test_opd_teacher_must_share_the_tokenizer(tmp_path, tiny_model_dir):
    from sftrl.models import load_tokenizer

    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    tokenizer = load_tokenizer(str(other))
    tokenizer.add_tokens(["<|extra|>"])
    tokenizer.save_pretrained(other)
    with pytest.raises(ConfigError, match="opd_teacher: .* another tokenizer vocabulary"):
        load_frozen(str(other), "opd_teacher", load_tokenizer(str(tiny_model_dir)))
    teacher = load_frozen(str(tiny_model_dir), "opd_teacher", load_tokenizer(str(tiny_model_dir)))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


# ---------------------------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("method", ["dft", "asft", "opsd", "opd"])
def test_sftrl_train_runs_a_step_of_each_new_method(tmp_path, tiny_model_dir, method, capsys):
    args = train_args(tmp_path, tiny_model_dir, f"method={method}", "max_steps=1",
                      f"opd_teacher={tiny_model_dir}", "opsd_teacher_template={demonstration}|{prompt}")
    assert main(args) == 0, capsys.readouterr().err
    records = [r for r in read_metrics(tmp_path / "run") if "step_type" in r]
    assert len(records) == 1 and records[0]["step_type"] == ("sft" if method in ("dft", "asft") else "grpo")
    assert {"dft": "dft/mean_p", "asft": "asft/k3", "opsd": "distill/reverse_kl", "opd": "distill/reverse_kl"}[method] \
        in records[0]
    assert METHODS[method].name == method


def test_bad_values_of_the_new_fields_are_one_line(tmp_path, tiny_model_dir, capsys):
    def bad(*overrides, expected):
        fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, *overrides), *expected)

    bad("method=asft", "asft_kl_coef=-0.1", expected=["asft_kl_coef", "0 or more"])
    bad("method=asft", "asft_kl_input_clamp=0", expected=["asft_kl_input_clamp", "positive or null"])
    bad("method=asft", "asft_kl_output_clamp=-1", expected=["asft_kl_output_clamp"])
    bad("method=opsd", "opsd_teacher=ema", expected=["opsd_teacher", "'ema'", "live, base"])
    bad("method=opsd", "opsd_teacher_template=no placeholders", expected=["opsd_teacher_template", "{demonstration}"])
    bad("method=opd", expected=["opd_teacher", "name the teacher model"])
    bad("method=opd", f"opd_teacher={tmp_path / 'missing'}", expected=["opd_teacher", "model path not found"])
    notes = tmp_path / "notes"
    notes.mkdir()
    bad("method=opd", f"opd_teacher={notes}", expected=["opd_teacher", "not a model directory"])
    bad("method=opsd", "distill_reward_coef=.nan", expected=["distill_reward_coef", "finite"])
