"""The dry run's memory estimate: its parameter counts are the real models', and each term follows the
formula of sftrl.memory's docstring (weights, gradients, AdamW, reference, sharding, activations, logits)."""

from pathlib import Path

import pytest
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from sftrl import cli
from sftrl.memory import Architecture, estimate, from_config, lora_parameter_count, parameter_count
from sftrl.validate import load_config

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
TINY = dict(hidden_size=16, num_hidden_layers=2, intermediate_size=40, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=50)


@pytest.mark.parametrize("cls,config_cls,tied", [(LlamaForCausalLM, LlamaConfig, True),
                                                 (Qwen2ForCausalLM, Qwen2Config, False)])
def test_parameter_count_is_the_models(cls, config_cls, tied):
    config = config_cls(**TINY, tie_word_embeddings=tied)
    model = cls(config)
    assert parameter_count(from_config(config.to_dict())) == sum(p.numel() for p in model.parameters())


def test_lora_count_is_peft_trainable_count():
    peft = pytest.importorskip("peft")
    config = LlamaConfig(**TINY)
    model = peft.get_peft_model(LlamaForCausalLM(config), peft.LoraConfig(r=4, task_type="CAUSAL_LM"))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(from_config(config.to_dict()), 4, None) == trainable


def test_estimate_terms_follow_the_formula():
    a = Architecture(hidden=16, layers=2, intermediate=40, heads=4, kv_heads=2, vocab=50, tied=True)
    p = parameter_count(a)
    config = load_config(overrides=dict(micro_batch_size=2, max_prompt_length=3, max_completion_length=7,
                                        generation_batch_size=5, logprob_chunk_size=0))
    tokens = 2 * 10
    plain = estimate(config, a, gpus=4, sharded=False, needs_reference=True)
    assert (plain["weights"], plain["gradients"], plain["optimizer"], plain["reference"]) == (4 * p, 4 * p, 8 * p, 4 * p)
    assert plain["activations"] == tokens * 2 * (2 * (6 * 16 + 4 * 40) + 8 * 16)
    assert plain["logits"] == 14 * tokens * 50
    assert plain["rollout KV cache"] == 5 * 10 * 2 * 2 * 8 * 2  # K = 2 heads x 4 dims
    training = 4 * p + 8 * p + 4 * p + 4 * p + plain["activations"] + plain["logits"]
    assert plain["peak"] == max(training, 4 * p + 8 * p + 4 * p + plain["rollout KV cache"])
    sharded = estimate(config, a, gpus=4, sharded=True, needs_reference=True)
    assert sharded["optimizer"] == 2 * p and sharded["reference"] == p and sharded["gathered layer"] == 2 * p
    assert sharded["activations"] == plain["activations"]  # data parallel: not sharded
    config.gradient_checkpointing, config.logprob_chunk_size = True, 6
    light = estimate(config, a, gpus=4, sharded=False, needs_reference=True)
    assert light["activations"] == tokens * (2 * 4 * 16 + 2 * (6 * 16 + 4 * 40) + 8 * 16)
    assert light["logits"] == 14 * 6 * 50
    config.use_peft, config.lora_r = True, 2
    lora = estimate(config, a, gpus=4, sharded=False, needs_reference=True)
    assert lora["reference"] == 0 and lora["optimizer"] == 8 * lora_parameter_count(a, 2, None) < 8 * p / 10


def test_dry_run_prints_the_estimate_and_trains_nothing(tmp_path, capsys):
    assert cli.main(["train", "--dry-run", "--config", str(RECIPES / "paper-sasr.yaml"), f"output_dir={tmp_path / 'run'}"]) == 0
    out = capsys.readouterr().out
    assert "Qwen/Qwen2.5-Math-7B (7.62B parameters" in out and "ZeRO-3/FSDP over 8 fits" in out
    # the recipe chunks log-probs, which FSDP refuses: its own line gives the whole logits' peak
    assert "FSDP needs logprob_chunk_size=0 (the sharded column is ZeRO-3's): logits 73." in out
    assert not (tmp_path / "run").exists()
