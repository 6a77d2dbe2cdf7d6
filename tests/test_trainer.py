"""The training loop: accumulation equivalence, resume equivalence, checkpoints, config and CLI errors."""

import json
import shutil

import pytest
import torch

from sftrl.config import ConfigError
from sftrl.errors import RunError
from sftrl.validate import load_config
from sftrl.trainer import Trainer

from conftest import comparable, files_of, grads, make_config, read_metrics


@pytest.mark.parametrize("loss_type,beta,mask_truncated",
                         [("grpo", 0.0, False), ("dapo", 0.05, True), ("dr_grpo", 0.0, False), ("bnpo", 0.0, True)])
@pytest.mark.float_sensitive
def test_grpo_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_model_dir, reward_spec, loss_type, beta,
                                                         mask_truncated):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo", loss_type=loss_type, beta=beta,
                                  mask_truncated_completions=mask_truncated, reward_funcs=[reward_spec],
                                  micro_batch_size=64))
    examples = trainer.rows.examples[:4]
    if beta:  # one update first, so that π_θ ≠ π_ref and the KL term has a gradient to compare
        trainer.sft_backward(trainer.rows.examples[8:16])
        trainer.optimizer_step(1e-2)
    torch.manual_seed(0)
    metrics = trainer.grpo_backward(examples)
    big = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.config.micro_batch_size = 3  # 16 sequences -> micro-batches of 3,3,3,3,3,1
    torch.manual_seed(0)
    again = trainer.grpo_backward(examples)
    small = grads(trainer.model)
    assert 0.0 < metrics["reward"] < 1.0 and metrics["reward"] == again["reward"]
    norm = torch.sqrt(sum((g ** 2).sum() for g in big))
    assert norm > 1e-4  # the test must compare real gradients
    for a, b in zip(big, small):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    if beta:
        assert metrics["kl"] > 1e-4
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.config.beta = 0.0
        torch.manual_seed(0)
        trainer.grpo_backward(examples)
        without_kl = grads(trainer.model)
        assert max(float((a - b).abs().max()) for a, b in zip(big, without_kl)) > 1e-5  # the KL gradient was compared


@pytest.mark.float_sensitive
def test_sft_gradient_accumulation_equals_one_big_batch(tmp_path, tiny_model_dir):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", micro_batch_size=64))
    examples = trainer.rows.examples[:7]
    metrics = trainer.sft_backward(examples)
    big = grads(trainer.model)
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.config.micro_batch_size = 2
    again = trainer.sft_backward(examples)
    for a, b in zip(big, grads(trainer.model)):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    assert metrics["sft/loss"] == pytest.approx(again["sft/loss"], rel=1e-6)
    vocab = trainer.policy.config.vocab_size
    # an untrained model is near-uniform: NLL close to log(vocab)
    assert abs(metrics["sft/loss"] - torch.log(torch.tensor(float(vocab)))) < 0.5


@pytest.mark.parametrize("method", ["sft-then-grpo"])
def test_resume_continues_with_the_same_metrics(tmp_path, tiny_model_dir, reward_spec, method):
    common = dict(method=method, sft_steps=2, max_steps=5, save_every=3, reward_funcs=[reward_spec],
                  lr_scheduler="cosine", warmup_steps=1)
    full_dir = tmp_path / "full"
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(full_dir), **common)).train()
    full = read_metrics(full_dir)
    assert [r["step"] for r in full] == [1, 2, 3, 4, 5]
    assert (full_dir / "checkpoints" / "step-000003" / "trainer_state.pt").exists()
    assert (full_dir / "model" / "config.json").exists()
    assert "sft/loss" in full[1] and "reward" in full[2]  # the switch happened at step 2

    # A run that stopped right after its step-3 checkpoint: same checkpoint, metrics of steps 1-3 only.
    part_dir = tmp_path / "part"
    shutil.copytree(full_dir / "checkpoints", part_dir / "checkpoints")
    shutil.copy(full_dir / "config.yaml", part_dir / "config.yaml")
    (part_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:3] + [{"step": 4}]))
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(part_dir), resume=True, **common)).train()
    resumed = read_metrics(part_dir)
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5]
    for a, b in zip(comparable(full), comparable(resumed)):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
            else:
                assert a[key] == b[key], key
    from safetensors.torch import load_file

    w_full = load_file(full_dir / "model" / "model.safetensors")
    w_part = load_file(part_dir / "model" / "model.safetensors")
    for name in w_full:
        torch.testing.assert_close(w_full[name], w_part[name])


def test_a_finished_run_is_never_overwritten_or_continued(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    config = make_config(tmp_path, tiny_model_dir, method="sft", max_steps=2, save_every=1)
    Trainer(config).train()
    before = files_of(run)
    assert (run / "checkpoints" / "step-000001").is_dir() and (run / "summary.json").exists()
    for overrides in (dict(), dict(resume=True), dict(resume=True, max_steps=3)):
        with pytest.raises(RunError, match="holds a finished run"):
            Trainer(make_config(tmp_path, tiny_model_dir, **{"method": "sft", "max_steps": 2, "save_every": 1,
                                                             **overrides})).train()
    assert files_of(run) == before  # not a byte changed


def test_resume_refuses_other_settings_and_names_the_fields(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    common = dict(method="sft", max_steps=4, save_every=2)
    config = make_config(tmp_path, tiny_model_dir, **common)
    trainer = Trainer(config)
    trainer.train()
    (run / "summary.json").unlink()  # as if it had stopped after its last checkpoint
    before = files_of(run)
    with pytest.raises(RunError, match=r"other settings \(seed 0 -> 1; learning_rate 0.001 -> 0.002\)"):
        Trainer(make_config(tmp_path, tiny_model_dir, resume=True, learning_rate=2e-3, seed=1, **common))
    with pytest.raises(RunError, match="pass resume=true"):
        Trainer(make_config(tmp_path, tiny_model_dir, **common))
    assert files_of(run) == before
    # Memory knobs, logging and checkpoint cadence may differ on resume: they do not change the result.
    Trainer(make_config(tmp_path, tiny_model_dir, resume=True, micro_batch_size=3, logging_steps=2, progress=False,
                        **{**common, "save_every": 3})).train()
    assert json.loads((run / "summary.json").read_text())["method"] == "sft"


def test_resume_on_a_missing_directory_creates_nothing(tmp_path, tiny_model_dir):
    missing = tmp_path / "nope" / "run"
    with pytest.raises(RunError, match="does not exist, so there is nothing to resume"):
        Trainer(make_config(tmp_path, tiny_model_dir, method="sft", resume=True, output_dir=str(missing)))
    assert not (tmp_path / "nope").exists()


def test_checkpoints_rotate_and_leave_no_temporary_directories(tmp_path, tiny_model_dir):
    run = tmp_path / "rot"
    Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=7, save_every=2, save_total_limit=2,
                        output_dir=str(run))).train()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["step-000004", "step-000006"]
    assert not list(run.glob(".tmp*")) and not list((run / "checkpoints").glob(".tmp*"))
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(run / "model")
    tok = AutoTokenizer.from_pretrained(run / "model")
    assert tok.decode(tok("12 + 3\n= 15")["input_ids"]) == "12 + 3\n= 15"


def test_lr_schedule_warmup_then_cosine(tmp_path, tiny_model_dir):
    run = tmp_path / "lr"
    Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=6, warmup_steps=2, lr_scheduler="cosine",
                        learning_rate=1e-3, output_dir=str(run))).train()
    lrs = [r["learning_rate"] for r in read_metrics(run)]
    # the rate each step used: warm-up 1/3, 2/3 of the peak, then cosine from the peak towards 0
    assert lrs[0] == pytest.approx(1e-3 / 3) and lrs[1] == pytest.approx(2e-3 / 3) and lrs[2] == pytest.approx(1e-3)
    assert lrs[3] == pytest.approx(1e-3 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi / 4)).item()))
    assert lrs[2] > lrs[3] > lrs[4] > lrs[5] > 0


def test_sft_steps_use_sft_learning_rate_and_policy_gradient_steps_learning_rate(tmp_path, tiny_model_dir,
                                                                                reward_spec):
    run = tmp_path / "two-rates"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft-then-grpo", sft_steps=2, max_steps=4,
                                  learning_rate=1e-4, sft_learning_rate=2e-3, lr_scheduler="constant",
                                  batch_size=2, sft_batch_size=6, reward_funcs=[reward_spec], output_dir=str(run)))
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.train()
    records = [r for r in read_metrics(run) if "step_type" in r]
    assert [(r["step_type"], r["learning_rate"]) for r in records] == [
        ("sft", 2e-3), ("sft", 2e-3), ("grpo", 1e-4), ("grpo", 1e-4)]
    # SFT steps draw sft_batch_size demonstrations, policy-gradient steps batch_size prompts (64 rows).
    assert [r["epoch"] for r in records] == pytest.approx([6 / 64, 12 / 64, 14 / 64, 16 / 64])
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    # A step with a policy-gradient term uses learning_rate even when it also has an SFT term.
    mixed = tmp_path / "mixed"
    Trainer(make_config(tmp_path, tiny_model_dir, method="static", static_mode="weighted", max_steps=1,
                        learning_rate=1e-4, sft_learning_rate=2e-3, reward_funcs=[reward_spec],
                        output_dir=str(mixed))).train()
    (record,) = [r for r in read_metrics(mixed) if "step_type" in r]
    assert record["step_type"] == "sft+grpo" and record["learning_rate"] == 1e-4
    with pytest.raises(ConfigError, match="sft_learning_rate"):
        load_config(overrides=["sft_learning_rate=-1"])
    with pytest.raises(ConfigError, match="learning_rate: must be positive and finite"):
        load_config(overrides=["learning_rate=.inf"])


def test_grad_norm_is_logged_before_clipping(tmp_path, tiny_model_dir):
    run = tmp_path / "clip"
    Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=1, max_grad_norm=1e-3,
                        output_dir=str(run))).train()
    (record,) = [r for r in read_metrics(run) if "grad_norm" in r]
    assert record["grad_norm"] > 1e-3  # the raw norm, larger than the clip threshold


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="did you mean learning_rate"):
        load_config(overrides=["learning_rat=1e-3"])
    with pytest.raises(ConfigError, match="loss_type: 'ppo' is not one of"):
        load_config(overrides=["loss_type=ppo"])
    with pytest.raises(ConfigError, match="max_steps: expected int"):
        load_config(overrides=["max_steps=ten"])
    with pytest.raises(ConfigError, match="top_p: must be in"):
        load_config(overrides=["top_p=1.5"])
    with pytest.raises(ConfigError, match="method: unknown 'sasr2'"):
        load_config(overrides=["method=sasr2"])
    with pytest.raises(ConfigError, match="num_generations: GRPO needs at least 2"):
        load_config(overrides=["method=grpo", "num_generations=1"])
    with pytest.raises(ConfigError, match="not of the form key=value"):
        load_config(overrides=["max_steps"])
    with pytest.raises(ConfigError, match="recipe not found"):
        load_config("does/not/exist.yaml")
    config = load_config(overrides=["learning_rate=5e-4", "epsilon_high=0.28", "reward_funcs=math"])
    assert config.learning_rate == 5e-4 and config.epsilon_high == 0.28 and config.reward_funcs == ["math"]


def test_recipe_then_overrides(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: grpo\nmax_steps: 7\nlearning_rate: 1.0e-4\n")
    config = load_config(recipe, ["max_steps=9"])
    assert (config.method, config.max_steps, config.learning_rate) == ("grpo", 9, 1e-4)
    recipe.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(recipe)


@pytest.mark.parametrize("method", ["sft", "sasr", "srft", "luffy", "static", "sft-then-grpo", "grpo-then-sft"])
def test_method_needing_demonstrations_fails_before_training(tmp_path, tiny_model_dir, method):
    data = tmp_path / "nodemo.jsonl"
    data.write_text(json.dumps({"prompt": "Compute 1+2.", "answer": "3"}) + "\n")
    with pytest.raises(ValueError, match="row 0.*demonstration"):
        Trainer(make_config(tmp_path, tiny_model_dir, method=method, train_data=str(data), reward_funcs=["sandbox"]))
    # GRPO needs no demonstrations
    Trainer(make_config(tmp_path, tiny_model_dir, method="grpo", train_data=str(data), reward_funcs=["sandbox"],
                        batch_size=1))


def test_cli_reports_errors_without_a_traceback(capsys, tmp_path):
    from sftrl.cli import main

    assert main(["train", "max_stepz=3"]) == 2
    assert "unknown config field 'max_stepz'" in capsys.readouterr().err
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "num_generations = 8" in out and "loss_type" in out
    assert main(["train", f"model={tmp_path / 'missing-model'}", "eval_data=null", "method=sft",
                 f"output_dir={tmp_path / 'x'}"]) == 2
    assert "model path not found" in capsys.readouterr().err
