"""rollout_backend=vllm: sampling parameters, weight loading before each generation and sleep mode,
checked against a stand-in for vllm.LLM on any machine; a real engine on a GPU where vLLM is installed."""

import importlib.util
import json
import os
from types import SimpleNamespace

import pytest
import torch

from sftrl.config import ConfigError
from sftrl.models import load_model
from sftrl.rollout import Sampling
from sftrl.rollout import vllm as vllm_backend
from sftrl.rollout.decode import sample_with_decode_loop
from sftrl.trainer import Trainer
from sftrl.validate import load_config

HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_sampling_maps_one_to_one_onto_vllm_parameters():
    sampling = Sampling(num_generations=8, max_new_tokens=64, temperature=0.7, top_p=0.95, greedy=False,
                        eos_ids=(1, 7), pad_id=0, min_new_tokens=3)
    assert vllm_backend.sampling_params(sampling, seed=11) == {
        "n": 8, "temperature": 0.7, "top_p": 0.95, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0,
        "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_tokens": 64, "min_tokens": 3,
        "stop_token_ids": [1, 7], "seed": 11, "detokenize": False}
    greedy = Sampling(num_generations=1, max_new_tokens=5, temperature=0.7, top_p=0.5, greedy=True, eos_ids=(1,),
                      pad_id=0)
    params = vllm_backend.sampling_params(greedy, seed=0)
    assert params["temperature"] == 0.0 and params["top_p"] == 1.0 and params["top_k"] == 0


class FakeLLM:
    """Stands in for vllm.LLM: its own copy of the checkpoint, changed only by load_weights, sampling
    with sftrl's decode loop under the request's seed; it records every call and the weights it used."""

    def __init__(self, model_path):
        self.model = load_model(model_path)
        params = dict(self.model.named_parameters())

        def load_weights(weights):
            for name, tensor in weights:
                params[name].data.copy_(tensor)

        self.model.load_weights = load_weights
        self.calls: list[tuple] = []
        self.generations: list[dict] = []
        self.policy = None  # the trainer's model, to compare weights with at each generation

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self, tags):
        self.calls.append(("wake_up", tuple(tags)))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache",))

    def apply_model(self, func):
        self.calls.append(("apply_model",))
        return [func(self.model)]

    def generate(self, prompts, params, use_tqdm):
        self.calls.append(("generate",))
        sampling = Sampling(num_generations=params["n"], max_new_tokens=params["max_tokens"],
                            temperature=params["temperature"] or 1.0, top_p=params["top_p"],
                            greedy=params["temperature"] == 0.0, eos_ids=tuple(params["stop_token_ids"]), pad_id=0,
                            min_new_tokens=params["min_tokens"])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params["seed"])
            completions = sample_with_decode_loop(self.model, [p["prompt_token_ids"] for p in prompts], sampling)
        policy = {n: p.detach() for n, p in self.policy.named_parameters()}
        self.generations.append({
            "weight_gap": max(float((p - policy[n]).abs().max()) for n, p in self.model.named_parameters()),
            "checksum": float(sum(p.double().sum() for p in self.model.parameters())),
            "lengths": [len(c) for c in completions]})
        n = params["n"]  # vLLM returns each prompt's samples with their index; here in reverse to check the order
        return [SimpleNamespace(outputs=[SimpleNamespace(index=j, token_ids=tuple(completions[i * n + j]))
                                         for j in reversed(range(n))]) for i in range(len(prompts))]


def fake_start(fakes):
    def start(model_path, gpu_memory_utilization=0.3, sleep_mode=True, max_model_len=None, dtype="auto", seed=0):
        fake = FakeLLM(model_path)
        fakes.append(fake)
        return vllm_backend.VLLMEngine(fake, lambda **kwargs: kwargs, sleep_mode)
    return start


def vllm_config(tmp_path, model_dir, reward_spec, **overrides):
    values = dict(model=str(model_dir), method="grpo", rollout_backend="vllm", train_data="sandbox",
                  max_train_examples=64, eval_data=None, max_steps=3, batch_size=4, num_generations=4,
                  max_completion_length=12, progress=False, output_dir=str(tmp_path / "run"), save_every=0,
                  learning_rate=1e-2, reward_funcs=[reward_spec])
    values.update(overrides)
    return load_config(overrides=values)


@pytest.mark.parametrize("sleep_mode", [True, False])
def test_training_loads_the_current_weights_before_every_generation(tmp_path, tiny_model_dir, reward_spec,
                                                                    monkeypatch, sleep_mode):
    fakes: list[FakeLLM] = []
    monkeypatch.setattr(vllm_backend.VLLMEngine, "start", staticmethod(fake_start(fakes)))
    trainer = Trainer(vllm_config(tmp_path, tiny_model_dir, reward_spec, vllm_sleep_mode=sleep_mode))
    (fake,) = fakes
    fake.policy = trainer.policy
    trainer.train()
    assert len(fake.generations) == 3 and trainer.rollout_engine.weight_loads == 3
    assert all(g["weight_gap"] == 0.0 for g in fake.generations)  # the engine sampled with the policy's weights
    checksums = [g["checksum"] for g in fake.generations]
    assert len(set(checksums)) == 3  # ... which each update changed
    per_generation = [("apply_model",), ("reset_prefix_cache",), ("generate",)]
    if sleep_mode:
        per_generation = ([("wake_up", ("weights",))] + per_generation[:2] + [("wake_up", ("kv_cache",))]
                          + per_generation[2:] + [("sleep", 2)])
        assert fake.calls == [("sleep", 2)] + per_generation * 3  # asleep whenever it is not generating
    else:
        assert fake.calls == per_generation * 3
    metrics = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    for record, generation in zip(metrics, fake.generations):  # the step trained on what the engine sampled
        assert record["completions/mean_length"] == pytest.approx(sum(generation["lengths"]) / 16)


def test_a_seeded_vllm_run_asks_for_the_same_samples_again(tmp_path, tiny_model_dir, reward_spec, monkeypatch):
    runs = []
    for name in ("a", "b"):
        fakes: list[FakeLLM] = []
        monkeypatch.setattr(vllm_backend.VLLMEngine, "start", staticmethod(fake_start(fakes)))
        trainer = Trainer(vllm_config(tmp_path, tiny_model_dir, reward_spec, output_dir=str(tmp_path / name),
                                      max_steps=2))
        fakes[0].policy = trainer.policy
        trainer.train()
        runs.append([g["lengths"] for g in fakes[0].generations])
    assert runs[0] == runs[1] and runs[0][0] != runs[0][1]


@pytest.mark.skipif(HAS_VLLM, reason="vLLM is installed here")
def test_vllm_backend_without_vllm_is_a_config_error(tmp_path, tiny_model_dir, reward_spec):
    with pytest.raises(ConfigError, match=r"pip install 'sftrl\[vllm\]'"):
        Trainer(vllm_config(tmp_path, tiny_model_dir, reward_spec))


# --- a real vLLM engine (GPU machines with vLLM installed) -------------------------------------------
needs_gpu_vllm = pytest.mark.skipif(not (HAS_VLLM and torch.cuda.is_available()), reason="needs vLLM and a GPU")


@needs_gpu_vllm
def test_vllm_engine_holds_the_policy_weights_after_each_update(tmp_path, sandbox_base_model):
    config = load_config(overrides=dict(
        model=str(sandbox_base_model), method="grpo", rollout_backend="vllm", eval_data=None, max_steps=2,
        batch_size=8, num_generations=4, max_completion_length=48, progress=False, save_every=0,
        output_dir=str(tmp_path / "run"), learning_rate=1e-3, vllm_gpu_memory_utilization=0.2))
    trainer = Trainer(config)
    engine = trainer.rollout_engine
    trainer.train()
    engine.llm.wake_up(tags=["weights"]) if engine.sleep_mode else None
    engine.load_weights(trainer.policy)
    policy = {n: p.detach().float().cpu() for n, p in trainer.policy.named_parameters()}
    names = engine.llm.apply_model(lambda m: sorted(n for n, _ in m.named_parameters()))[0]
    assert names  # vLLM fuses q/k/v and gate/up; the embedding is shared by name
    embed = engine.llm.apply_model(lambda m: m.model.embed_tokens.weight.detach().float().cpu())[0]
    torch.testing.assert_close(embed, policy["model.embed_tokens.weight"], atol=1e-2, rtol=1e-2)
    records = [json.loads(line) for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0.0 <= r["reward"] <= 1.0 for r in records)
    assert all(r["completions/mean_length"] > 1 for r in records)


@needs_gpu_vllm
@pytest.mark.skipif("SFTRL_VLLM_MODEL" not in os.environ, reason="set SFTRL_VLLM_MODEL to a ~0.5B model (id or path)")
def test_short_grpo_run_on_a_small_model_with_vllm_rollouts(tmp_path):
    config = load_config(overrides=dict(
        model=os.environ["SFTRL_VLLM_MODEL"], method="grpo", rollout_backend="vllm", train_data="sandbox",
        eval_data=None, max_steps=3, batch_size=8, num_generations=8, max_completion_length=128, progress=False,
        save_every=0, output_dir=str(tmp_path / "run"), learning_rate=1e-6, vllm_gpu_memory_utilization=0.3))
    summary = Trainer(config).train()
    records = [json.loads(line) for line in (config.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 3 and summary["skipped_steps"] == 0
    assert all(r["completions/mean_length"] > 1 and r["grad_norm"] > 0 for r in records)
