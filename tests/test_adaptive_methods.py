"""HPT's gate, ReLIFT's buffer, UFT's hints, SFT→RL done right, and the logged loss being the optimised
one: each against a naive per-prompt or per-token version (and HPT against its public code's formulas)."""

import json
import math
import random

import pytest
import torch

from sftrl import losses
from sftrl.batching import pack, target_logits
from sftrl.config import ConfigError
from sftrl.methods import hpt, relift, uft
from sftrl.trainer import Trainer
from sftrl.validate import load_config

from conftest import grads, make_config, read_metrics


# ---------------------------------------------------------------------------------------------- HPT
def public_select_on_off_ada_balance(on_solve_num, switch_gate, switch_gate_off, unify_strategy="switch"):
    """TsinghuaC3I/Unify-Post-Training, hpt/verl/verl/mix_src/mix_trainer.py, MIXRayPPOTrainer.
    select_on_off_ada_balance, lines 394-414 (copy at undefinted/Unify-Post-Training@0bfcb82), literally,
    with self.config.trainer.* passed as arguments."""
    if unify_strategy == 'switch':
        on_add_num = 0
        if on_solve_num <= switch_gate:
            on_remove_num = 8
            off_add_num = 1
        elif on_solve_num <= switch_gate_off:
            on_remove_num = 8
            off_add_num = -1
        else:
            on_remove_num = 0
            off_add_num = 0

        return on_remove_num, on_add_num, off_add_num

    if unify_strategy == 'soft':
        on_remove_num = 0
        on_add_num = 0
        off_add_num = 1

        return on_remove_num, on_add_num, off_add_num


def public_grpo_advantage_split(scores, index, on_policy_mask, epsilon=1e-6, use_std=True):
    """Unify-Post-Training hpt/verl/verl/mix_src/mix_core_alg.py, compute_grpo_outcome_advantage_split
    (lines 17-66), literally on sequence scores (its token_level_rewards summed; eos_mask all ones)."""
    from collections import defaultdict

    scores = scores.clone()
    id2score = defaultdict(list)
    id2mean = {}
    id2std = {}
    bsz = scores.shape[0]
    for i in range(bsz):
        if on_policy_mask[i].item() is True:
            id2score[index[i]].append(scores[i])
    for idx in id2score:
        if len(id2score[idx]) == 1:
            id2mean[idx] = torch.tensor(0.0)
            id2std[idx] = torch.tensor(1.0)
        elif len(id2score[idx]) > 1:
            id2mean[idx] = torch.mean(torch.tensor(id2score[idx]))
            id2std[idx] = torch.std(torch.tensor([id2score[idx]]))
    for idx in id2std:
        if id2std[idx].item() == 0:
            id2std[idx] = torch.tensor(1.0)
    for i in range(bsz):
        if use_std:
            scores[i] = (scores[i] - id2mean[index[i]]) / (id2std[index[i]] + epsilon)
        else:
            scores[i] = (scores[i] - id2mean[index[i]])
    return scores


def hpt_rewards(seed=0, prompts=40, group=8):
    """Binary rewards with every k from 0 to G among the prompts, and one unscorable (NaN) rollout."""
    g = torch.Generator().manual_seed(seed)
    rewards = torch.zeros(prompts, group)
    for p in range(prompts):
        k = p % (group + 1)
        rewards[p, torch.randperm(group, generator=g)[:k]] = 1.0
    rewards[3, 0] = float("nan")
    return rewards.view(-1)


@pytest.mark.float_sensitive
@pytest.mark.parametrize("gate", [0, 2, 5])
def test_hpt_gate_matches_the_public_code_and_a_per_prompt_loop(gate):
    rewards = hpt_rewards()
    to_sft = hpt.hpt_gate(hpt.correct_counts(rewards, 8), gate)
    for p in range(40):
        group = rewards[p * 8:(p + 1) * 8].tolist()
        on_solve_num = sum(1 for r in group if r == 1)  # the public code: (uid_rewards == success_value).sum()
        on_remove_num, on_add_num, off_add_num = public_select_on_off_ada_balance(on_solve_num, gate, gate)
        assert bool(to_sft[p]) == (off_add_num == 1 and on_remove_num == 8)  # SFT on the target, rollouts removed
        assert (not to_sft[p]) == (on_remove_num == 0 and off_add_num == 0 and on_add_num == 0)  # GRPO as sampled
        assert bool(to_sft[p]) == (sum(1 for r in group if r >= 1) <= gate)
    assert 0 < int(to_sft.sum()) < 40


def test_hpt_advantages_over_the_kept_rollouts_match_the_public_split():
    rewards = hpt_rewards(seed=1)
    kept = ~hpt.hpt_gate(hpt.correct_counts(rewards, 8), 2)
    ours, _ = losses.group_advantages(rewards, 8, "none")  # HPT's preset: no std scaling
    index = [p for p in range(40) for _ in range(8)]
    scores = torch.nan_to_num(rewards)  # the public code has no unscorable rows; rows of prompt 3 are dropped below
    public = public_grpo_advantage_split(scores, index, torch.ones(320, dtype=torch.bool), use_std=False)
    for p in range(40):
        if kept[p] and p != 3:
            torch.testing.assert_close(ours[p * 8:(p + 1) * 8], public[p * 8:(p + 1) * 8])
    assert bool(kept[3]) is False  # the NaN prompt (k = 3) went to SFT at γ = 2 and needs no advantages


@pytest.mark.float_sensitive
def test_hpt_step_is_the_prompt_weighted_sum_of_sft_and_grpo(tmp_path, tiny_model_dir, reward_spec):
    """One HPT step's gradient and logged loss against a naive per-row computation: (|B_RL|/|B|)·Dr.GRPO over
    the kept rollouts + c·(|B_SFT|/|B|)·token-mean NLL of the gated prompts' demonstrations."""
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="hpt", reward_funcs=[reward_spec], batch_size=6,
                                  hpt_gate=1, hpt_sft_coef=0.3, entropy_coef=0.0, max_completion_length=10))
    cfg = trainer.config
    examples = trainer.rows.examples[:6]
    torch.manual_seed(5)
    metrics = trainer.method.step(trainer, trainer.method_state, examples, None)
    loss = trainer.take_loss()
    got = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)

    torch.manual_seed(5)
    rollouts = trainer.rollouts(examples)  # the same samples again
    counts = [sum(1 for r in rollouts.rewards[p * 4:(p + 1) * 4].tolist() if r >= 1) for p in range(6)]
    to_sft = [k <= 1 for k in counts]
    n_sft = sum(to_sft)
    assert 0 < n_sft < 6, counts  # the seed exercises both branches
    assert (metrics["hpt/sft_prompts"], metrics["hpt/rl_prompts"]) == (n_sft, 6 - n_sft)
    sft_rows = [e for e, s in zip(examples, to_sft) if s]
    demo_tokens = sum(len(trainer.demonstration_ids(e)[0]) for e in sft_rows)
    rl_rows = [p * 4 + j for p in range(6) if not to_sft[p] for j in range(4)]
    total = 0.0
    for e in sft_rows:
        target = trainer.demonstration_ids(e)[0]
        batch = pack([trainer.prompt_ids(e)], [target], trainer.pad_id, torch.device("cpu"))
        logps, _ = losses.token_logprobs_and_entropy(target_logits(trainer.policy, batch), batch.targets)
        term = 0.3 * n_sft / 6 * sum(-logps[0, t] for t in range(len(target))) / demo_tokens
        term.backward()
        total += float(term.detach())
    for i in rl_rows:
        batch = pack([rollouts.prompt_ids[i]], [rollouts.target_ids[i]], trainer.pad_id, torch.device("cpu"))
        logps, _ = losses.token_logprobs_and_entropy(target_logits(trainer.policy, batch), batch.targets,
                                                     cfg.temperature)
        advantage = float(rollouts.advantages[i])
        ratio_terms = [-advantage * torch.exp(logps[0, t] - logps[0, t].detach()) for t in range(len(rollouts.target_ids[i]))]
        term = (6 - n_sft) / 6 * sum(ratio_terms) / (len(rl_rows) * cfg.max_completion_length)  # dr_grpo preset
        term.backward()
        total += float(term.detach())
    expected = grads(trainer.model)
    assert loss == pytest.approx(total, rel=1e-5, abs=1e-7)
    assert torch.sqrt(sum((g ** 2).sum() for g in expected)) > 1e-4
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


# ---------------------------------------------------------------------------------------------- ReLIFT
def test_relift_all_failed_against_a_per_prompt_loop():
    rewards = torch.tensor([0, 0, 0, 0, 0, 1, 0, 0, float("nan"), 0, 0, 0, 1, 1, 1, 1], dtype=torch.float32)
    naive = [all(r == 0 for r in rewards[p * 4:(p + 1) * 4].tolist()) for p in range(4)]
    assert relift.all_failed(rewards, 4) == naive == [True, False, False, False]


def test_relift_buffers_failed_prompts_and_trains_on_the_newest(tmp_path, tiny_model_dir, even_answer_spec):
    run = tmp_path / "relift"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="relift", reward_funcs=[even_answer_spec],
                                  max_steps=6, batch_size=6, sft_batch_size=3, output_dir=str(run), save_every=0))
    sampler = dict(trainer.rows.sampler.state_dict())
    trainer.train()
    records = [r for r in read_metrics(run) if "step_type" in r]
    # Replay the prompts each step drew; the reward fails every rollout of an odd answer.
    trainer.rows.sampler.load_state_dict(sampler)
    buffer, updates, expected = [], 0, []
    for _ in range(6):
        batch = trainer.rows.sampler.next_batch(6)
        added = [i for i in batch if int(trainer.rows.examples[i].answer) % 2 == 1]
        buffer += added
        update = len(buffer) >= 3
        if update:
            buffer = buffer[:-3]
            updates += 1
        expected.append((len(added), float(update), len(buffer), updates, "sft+grpo" if update else "grpo"))
    got = [(r["relift/added"], r["relift/sft_update"], r["relift/buffer_size"], r["relift/sft_updates"], r["step_type"])
           for r in records]
    assert got == expected, (got, expected)
    assert updates >= 2
    for r in records:
        assert r["loss"] == pytest.approx(0.0, abs=1e-9)  # the GRPO update: every group's advantage is 0
        if r["relift/sft_update"]:  # the SFT update's own loss: L_SFT - 0.001·entropy
            assert r["relift/sft_objective"] == pytest.approx(r["sft/loss"] - 0.001 * r["sft/entropy"], rel=1e-6)
    assert trainer.method_state["buffer"] == buffer


# ---------------------------------------------------------------------------------------------- UFT
def test_uft_steps_blocks_and_probability_against_naive_versions():
    demo = "a=1\nb=2\nc=3\n\\boxed{3}\n"
    assert uft.solution_steps(demo, "\n") == ["a=1", "b=2", "c=3"]
    assert uft.solution_steps("only the answer", "\n") == []
    for steps in range(0, 13):
        blocks = min(5, steps)
        naive = [round(k / blocks * steps) for k in range(blocks + 1)] if blocks else [0]
        assert uft.block_boundaries(steps, 5) == naive
        assert naive[-1] == steps
    assert uft.block_boundaries(7, 5) == [0, 1, 3, 4, 6, 7]
    assert uft.hint_probability(0, 300, 0.95, 0.05) == pytest.approx(0.95)
    assert uft.hint_probability(150, 300, 0.95, 0.05) == pytest.approx(0.5)
    assert uft.hint_probability(300, 300, 0.95, 0.05) == pytest.approx(0.05)
    assert uft.hint_probability(301, 300, 0.95, 0.05) == 0.0
    # m ~ Binomial(K, p): counted draws below p; the hint is the first b_m steps, each with its separator
    text, taken = uft.hint_text(["a=1", "b=2", "c=3"], [0.1, 0.9, 0.2, 0.0, 0.0], 0.5, 5, "\n")
    assert (text, taken) == ("a=1\nb=2\n", 2)  # K = 3 blocks of one step; draws 0.1, 0.2 < 0.5
    rng = random.Random(0)
    ms = [uft.hint_text(["s"] * 10, [rng.random() for _ in range(5)], 0.3, 5, "\n")[1] // 2 for _ in range(4000)]
    assert sum(ms) / len(ms) == pytest.approx(5 * 0.3, abs=0.05)  # Binomial(5, 0.3) has mean 1.5


HINT_REWARD = '''
def continues_demo(prompts, completions, demonstration, **kwargs):
    """1 when the graded text starts with the demonstration's first step (so it includes the hint)."""
    return [float(c.startswith(d.split(chr(10))[0] + chr(10))) for c, d in zip(completions, demonstration)]
'''


def test_uft_rollouts_continue_the_hint_and_are_graded_with_it(tmp_path, tiny_model_dir):
    path = tmp_path / "hint_reward.py"
    path.write_text(HINT_REWARD)
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="uft", reward_funcs=[f"{path}:continues_demo"],
                                  max_completion_length=8))
    examples = trainer.rows.examples[:3]
    hints = ["".join(s + "\n" for s in uft.solution_steps(e.demonstration, "\n")[:2]) for e in examples]
    rollouts = trainer.rollouts(examples, "prefix", hints=hints)
    assert rollouts.group_size == 4 and not rollouts.is_demo.any()
    assert rollouts.rewards.tolist() == [1.0] * 12  # graded on hint + completion
    for i, hint in enumerate(hints):
        hint_ids = trainer.text_ids(hint)
        for row in range(i * 4, i * 4 + 4):
            assert rollouts.prompt_ids[row][-len(hint_ids):] == hint_ids  # the hint is context, not a target
            assert len(rollouts.target_ids[row]) <= 8
    plain = trainer.rollouts(examples)
    assert plain.rewards.sum() < 12  # without the hint the untrained model does not write the first step
    with pytest.raises(ValueError, match="hints"):
        trainer.rollouts(examples, "prefix")


@pytest.mark.float_sensitive
def test_uft_step_adds_the_hint_nll_with_its_weight(tmp_path, tiny_model_dir, reward_spec):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="uft", reward_funcs=[reward_spec], beta=0.0,
                                  entropy_coef=0.0, uft_hint_coef=0.25, uft_hint_prob_low=1.0, uft_hint_prob_high=1.0))
    examples = trainer.rows.examples[:4]
    torch.manual_seed(0)
    metrics = trainer.method.step(trainer, trainer.method_state, examples, None)
    loss = trainer.take_loss()
    hints = ["".join(s + "\n" for s in uft.solution_steps(e.demonstration, "\n")) for e in examples]  # p = 1: all steps
    nll, tokens = 0.0, 0
    with torch.no_grad():
        for e, hint in zip(examples, hints):
            ids = trainer.text_ids(hint)
            batch = pack([trainer.prompt_ids(e)], [ids], trainer.pad_id, torch.device("cpu"))
            logps, _ = losses.token_logprobs_and_entropy(target_logits(trainer.policy, batch), batch.targets)
            nll += float(-logps.sum())
            tokens += len(ids)
    assert metrics["uft/hinted_prompts"] == 4 and metrics["uft/hint_share"] == 1.0
    assert metrics["sft/loss"] == pytest.approx(nll / tokens, rel=1e-5)
    assert loss == pytest.approx(metrics["grpo/loss"] + 0.25 * nll / tokens, rel=1e-5)


# ---------------------------------------------------------------------------------------------- SFT→RL
def run_steps(trainer, steps):
    if trainer.step == 0:
        trainer.start()  # the run directory, as train() makes it
    for _ in range(steps):
        trainer.train_step()


def test_sft_then_grpo_stage_lengths_schedules_and_fresh_optimizer(tmp_path, tiny_model_dir, reward_spec):
    common = dict(method="sft-then-grpo", reward_funcs=[reward_spec], sft_epochs=1.0, sft_batch_size=16, rl_steps=2,
                  sft_learning_rate=1e-3, learning_rate=1e-4, sft_lr_scheduler="cosine", sft_warmup_ratio=0.25,
                  sft_min_lr_ratio=0.1, lr_scheduler="constant", warmup_steps=1, max_steps=3)
    run = tmp_path / "stages"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(run), **common))
    assert trainer.total_steps == 6  # ceil(1 epoch · 64 rows / 16) = 4 SFT steps + 2 RL steps; max_steps unused
    run_steps(trainer, 4)
    assert len(trainer.optimizer.state) == 0  # the RL stage starts with fresh AdamW moments
    run_steps(trainer, 2)
    records = [r for r in read_metrics(run) if "step_type" in r]
    cosine = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in (0, 1, 2)]
    expected = [1e-3 / 2] + [1e-3 * f for f in cosine] + [1e-4 / 2, 1e-4]  # warm-up 1 step in each stage
    assert [r["step_type"] for r in records] == ["sft"] * 4 + ["grpo"] * 2
    assert [r["learning_rate"] for r in records] == pytest.approx(expected)
    assert [r["sft_then_grpo/stage"] for r in records] == ["sft"] * 4 + ["rl"] * 2
    kept = Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "kept"),
                               **{**common, "stage_reset_optimizer": False}))
    run_steps(kept, 4)
    assert len(kept.optimizer.state) > 0
    with pytest.raises(ConfigError, match="max_steps: 3 leaves no RL stage after the SFT stage of 4 steps"):
        Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "short"),
                            **{**common, "rl_steps": None}))


@pytest.mark.float_sensitive
def test_sft_accumulation_gives_the_same_parameters_after_a_step(tmp_path, tiny_model_dir):
    """2604.23747's first required test: k accumulated micro-batches equal one batch of the same rows, in the
    gradient and in the parameters and AdamW moments after one step (demonstrations of unequal lengths).
    AdamW's first update is lr·g/(|g| + eps), whose sensitivity to g is lr·eps/g²: the gradients agree to
    ~1e-8 absolute (summation order differs), so weights are compared where |g| > 1e-5 (error < 1e-9)."""
    runs = []
    for micro in (64, 3):
        trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", micro_batch_size=micro,
                                      max_completion_length=64, weight_decay=0.01,
                                      output_dir=str(tmp_path / f"m{micro}")))
        examples = trainer.rows.examples[:7]
        assert len({len(trainer.demonstration_ids(e)[0]) for e in examples}) > 1
        trainer.sft_backward(examples)
        gradient = grads(trainer.model)
        trainer.optimizer_step(1e-3)
        moments = [trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.policy.parameters()]
        runs.append((gradient, [p.detach().clone() for p in trainer.policy.parameters()], moments))
    (g1, w1, m1), (g2, w2, m2) = runs
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, atol=1e-7, rtol=1e-5)
    for a, b in zip(m1, m2):
        torch.testing.assert_close(a, b, atol=1e-8, rtol=1e-5)
    compared = 0
    for g, a, b in zip(g1, w1, w2):
        solid = g.abs() > 1e-5
        torch.testing.assert_close(a[solid], b[solid], atol=1e-7, rtol=1e-6)  # rtol: a float32 ulp at |w| ~ 1
        compared += int(solid.sum())
    assert compared > 0.5 * sum(g.numel() for g in g1)  # most parameters were compared


# ---------------------------------------------------------------------------------------------- logged loss
def naive_srft_sft_term(trainer, examples):
    """Σ_t 0.5·exp(-H_t)·(-log p_t) over the demonstrations' tokens / their count (SRFT Eq. 8), per row."""
    total, tokens = 0.0, 0
    with torch.no_grad():
        for e in examples:
            target = trainer.demonstration_ids(e)[0]
            batch = pack([trainer.prompt_ids(e)], [target], trainer.pad_id, torch.device("cpu"))
            logps, entropy = losses.token_logprobs_and_entropy(target_logits(trainer.policy, batch), batch.targets)
            total += sum(0.5 * math.exp(-float(entropy[0, t])) * -float(logps[0, t]) for t in range(len(target)))
            tokens += len(target)
    return total / tokens


@pytest.mark.float_sensitive
def test_logged_loss_is_the_optimised_loss_for_srft_and_weighted_mixtures(tmp_path, tiny_model_dir, reward_spec):
    srft = Trainer(make_config(tmp_path, tiny_model_dir, method="srft", reward_funcs=[reward_spec], entropy_coef=0.0,
                               output_dir=str(tmp_path / "srft")))
    examples = srft.rows.examples[:4]
    expected_sft = naive_srft_sft_term(srft, examples)
    metrics = srft.method.step(srft, srft.method_state, examples, None)
    loss = srft.take_loss()
    assert loss == pytest.approx(expected_sft + metrics["grpo/loss"], rel=1e-5)
    assert abs(loss - (metrics["sft/loss"] + metrics["grpo/loss"])) > 1e-3  # the old, unweighted sum differs

    run = tmp_path / "weighted"
    Trainer(make_config(tmp_path, tiny_model_dir, method="static", static_mode="weighted", static_sft_weight=0.2,
                        reward_funcs=[reward_spec], max_steps=2, output_dir=str(run))).train()
    for r in [r for r in read_metrics(run) if "step_type" in r]:
        assert r["loss"] == pytest.approx(0.2 * r["sft/loss"] + 0.8 * r["grpo/loss"], rel=1e-6)
        assert abs(r["loss"] - (r["sft/loss"] + r["grpo/loss"])) > 1.0


# ---------------------------------------------------------------------------------------------- your own data
@pytest.mark.parametrize("method", ["hpt", "relift", "chord", "gac", "uft", "sft-then-grpo"])
def test_each_new_method_trains_a_hugging_face_model_on_your_own_data(tmp_path, tiny_model_dir, method):
    from sftrl.cli import main

    data = tmp_path / "mine.jsonl"
    rows = [{"question": f"Compute {a}+{b}.", "gold": str(a + b), "solution": f"{a}+{b}={a + b}\n\\boxed{{{a + b}}}"}
            for a in range(1, 5) for b in range(1, 5)]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    code = main(["train", f"method={method}", f"model={tiny_model_dir}", f"train_data={data}", "prompt_field=question",
                 "answer_field=gold", "demo_field=solution", "reward_funcs=[sandbox]", "eval_data=null", "max_steps=2",
                 "batch_size=4", "num_generations=2", "sft_batch_size=4", "sft_steps=1", "max_completion_length=8",
                 "progress=false", "save_every=0", f"output_dir={run}"])
    assert code == 0
    records = [r for r in read_metrics(run) if "step_type" in r]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert (run / "model" / "config.json").exists()


@pytest.mark.parametrize("override,field", [
    (dict(method="hpt", hpt_gate=8), "hpt_gate: must be below num_generations=8"),
    (dict(hpt_gate=-1), "hpt_gate: must be 0 or more"),
    (dict(expert_data_ratio=1.0), "expert_data_ratio: must be in"),
    (dict(gac_mu_init=0.95), "gac_mu_init: must lie in"),
    (dict(gac_trim_ratio=0.5), "gac_trim_ratio"),
    (dict(uft_hint_prob_low=0.9, uft_hint_prob_high=0.5), "uft_hint_prob_low: must not exceed"),
    (dict(uft_step_separator=""), "uft_step_separator"),
    (dict(sft_epochs=0), "sft_epochs: must be positive"),
    (dict(sft_lr_scheduler="linear"), "sft_lr_scheduler"),
    (dict(rl_steps=0), "rl_steps: must be at least 1"),
    (dict(skip_update_grad_norm=-1.0), "skip_update_grad_norm"),
])
def test_new_fields_are_range_checked_and_the_error_names_the_field(override, field):
    with pytest.raises(ConfigError, match=field):
        load_config(overrides=override)


def test_updates_above_skip_update_grad_norm_are_skipped_without_stopping_the_run(tmp_path, tiny_model_dir):
    """HPT's released scripts skip an update whose gradient norm exceeds 80; such steps are counted in
    skipped_steps but, being finite, never count towards max_nonfinite_steps."""
    run = tmp_path / "skip"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=4, max_nonfinite_steps=2,
                                  skip_update_grad_norm=1e-3, output_dir=str(run)))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    summary = trainer.train()
    records = [r for r in read_metrics(run) if "step_type" in r]
    assert all(r["grad_norm"] > 1e-3 for r in records)
    assert [r["skipped_steps"] for r in records] == [1, 2, 3, 4] and summary["skipped_steps"] == 4
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    run2 = tmp_path / "noskip"
    Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=2, skip_update_grad_norm=1e6,
                        output_dir=str(run2))).train()
    assert [r["skipped_steps"] for r in read_metrics(run2) if "step_type" in r] == [0, 0]
