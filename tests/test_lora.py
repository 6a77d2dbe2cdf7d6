"""LoRA through PEFT: only the adapters train, the KL's reference is the base with the adapters off (no
second model), the saved adapter loads with PEFT and with sftrl's loaders, and a run resumes exactly."""

import json
import shutil

import pytest
import torch

peft = pytest.importorskip("peft")

from sftrl.batching import pack, score_targets  # noqa: E402
from sftrl.config import ConfigError  # noqa: E402
from sftrl.models import AdapterFreeReference, load_model  # noqa: E402
from sftrl.trainer import Trainer  # noqa: E402

from conftest import make_config  # noqa: E402

LORA = dict(use_peft=True, lora_r=4, lora_alpha=8, lora_dropout=0.0, learning_rate=3e-2,
            method="grpo", beta=0.1)


def lora_config(tmp_path, model_dir, **overrides):
    """conftest's small run, as GRPO with a KL on rank-4 LoRA adapters."""
    return make_config(tmp_path, model_dir, **{**LORA, **overrides})


@pytest.mark.float_sensitive
def test_lora_trains_the_adapters_only_against_the_base_with_adapters_off(tmp_path, tiny_model_dir, reward_spec):
    trainer = Trainer(lora_config(tmp_path, tiny_model_dir, reward_funcs=[reward_spec]))
    named = dict(trainer.policy.named_parameters())
    adapters = {n for n, p in named.items() if p.requires_grad}
    assert adapters and all("lora_" in n for n in adapters)
    before = {n: p.detach().clone() for n, p in named.items()}
    # No second model: the reference is the policy itself, and no other parameters exist anywhere.
    assert isinstance(trainer.reference, AdapterFreeReference) and trainer.reference.policy is trainer.policy
    assert not isinstance(trainer.reference, torch.nn.Module)
    assert {id(p) for g in trainer.optimizer.param_groups for p in g["params"]} == {id(named[n]) for n in adapters}

    first = trainer.grpo_backward(trainer.rows.examples[:4])
    trainer.optimizer_step(3e-2)
    for _ in range(2):
        trainer.grpo_backward(trainer.rows.examples[4:8])
        trainer.optimizer_step(3e-2)
    after = dict(trainer.policy.named_parameters())
    moved = [n for n in adapters if not torch.equal(before[n], after[n])]
    assert moved and all(torch.equal(before[n], after[n]) for n in named if n not in adapters)  # base frozen
    assert first["kl"] == pytest.approx(0.0, abs=1e-7)  # B = 0 at the start: policy = base

    # The adapters-off reference is exactly the base model loaded on its own.
    base = load_model(str(tiny_model_dir)).eval().requires_grad_(False)
    batch = pack([[5, 6, 7]] * 2 + [[8, 9]], [[10, 11, 12], [13], [14, 15]], 0, torch.device("cpu"))
    with torch.no_grad():
        ours = score_targets(trainer.policy, batch, reference=trainer.reference, ref_logps=True)
        theirs = score_targets(trainer.policy, batch, reference=base, ref_logps=True)
    torch.testing.assert_close(ours.ref_logps, theirs.ref_logps, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(ours.kl, theirs.kl, atol=1e-7, rtol=1e-5)
    with torch.no_grad():  # chunked log-probabilities run the reference's LM head with the adapters off too
        chunked = score_targets(trainer.policy, batch, reference=trainer.reference, ref_logps=True, chunk_size=2)
    torch.testing.assert_close(chunked.ref_logps, ours.ref_logps, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(chunked.kl, ours.kl, atol=1e-7, rtol=1e-5)
    assert float(ours.kl.max()) > 1e-6  # the adapters moved the policy away from the base
    assert trainer.policy.training  # the reference's eval mode does not leak into training


@pytest.mark.float_sensitive
def test_saved_adapter_loads_with_peft_and_sftrl_with_the_same_logits(tmp_path, tiny_model_dir, reward_spec):
    config = lora_config(tmp_path, tiny_model_dir, reward_funcs=[reward_spec], max_steps=3, merge_lora_on_save=True)
    trainer = Trainer(config)
    trainer.train()
    run = config.run_dir
    assert (run / "model" / "adapter_config.json").exists() and (run / "model" / "adapter_model.safetensors").exists()
    assert not (run / "model" / "config.json").exists() and (run / "model-merged" / "config.json").exists()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])
    with torch.no_grad():
        trained = trainer.model(input_ids=ids).logits  # merged in place by merge_lora_on_save: the final weights
        loaded = peft.PeftModel.from_pretrained(load_model(str(tiny_model_dir)), str(run / "model")).eval()
        torch.testing.assert_close(loaded(input_ids=ids).logits, trained, atol=1e-5, rtol=1e-5)
        base = load_model(str(tiny_model_dir))(input_ids=ids).logits
        assert float((base - trained).abs().max()) > 1e-4  # the adapter changed the model
        for directory in ("model", "model-merged"):  # sftrl eval / analyze / compare load either
            torch.testing.assert_close(load_model(str(run / directory))(input_ids=ids).logits, trained,
                                       atol=1e-5, rtol=1e-5)


def test_lora_run_resumes_with_the_same_metrics(tmp_path, tiny_model_dir, reward_spec):
    common = dict(reward_funcs=[reward_spec], max_steps=4, save_every=2)
    full_dir, part_dir = tmp_path / "full", tmp_path / "part"
    Trainer(lora_config(tmp_path, tiny_model_dir, output_dir=str(full_dir), **common)).train()
    assert (full_dir / "checkpoints" / "step-000002" / "adapter_model.safetensors").exists()
    full = [json.loads(line) for line in (full_dir / "metrics.jsonl").read_text().splitlines()]
    shutil.copytree(full_dir / "checkpoints", part_dir / "checkpoints")
    shutil.copy(full_dir / "config.yaml", part_dir / "config.yaml")
    (part_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in full[:2]))
    Trainer(lora_config(tmp_path, tiny_model_dir, output_dir=str(part_dir), resume=True, **common)).train()
    resumed = [json.loads(line) for line in (part_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(full[2:], resumed[2:]):
        for key in ("loss", "reward", "kl", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), key
    assert full[3]["kl"] > 1e-6


def test_lora_refuses_a_reference_snapshot_and_vllm_in_one_line(tmp_path, tiny_model_dir):
    with pytest.raises(ConfigError, match="use_peft: sasr .* reference"):
        lora_config(tmp_path, tiny_model_dir, method="sasr", sasr_reference="warmup")
    with pytest.raises(ConfigError, match="use_peft: grpo-then-sft"):
        lora_config(tmp_path, tiny_model_dir, method="grpo-then-sft", sft_kl_coef=0.1)
    with pytest.raises(ConfigError, match="use_peft: rollout_backend=vllm"):
        lora_config(tmp_path, tiny_model_dir, rollout_backend="vllm")
    lora_config(tmp_path, tiny_model_dir, method="sasr", sasr_reference="initial")  # the base is the reference
