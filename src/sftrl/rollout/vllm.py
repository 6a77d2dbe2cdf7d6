"""The `vllm` backend: a vLLM engine colocated with the trainer on the same GPU (TRL's colocate mode).

Each generation call:
1. wakes the engine's weight memory (sleep mode) and loads the training model's current weights into
   it (``LLM.apply_model`` -> the vLLM model's ``load_weights``, which takes Hugging Face parameter
   names), then drops the prefix cache, whose entries were computed with the old weights;
2. wakes the KV-cache memory and generates every prompt's `num_generations` samples in one call;
3. puts the engine back to sleep (level 2: weights and KV cache released), so that the training
   forward and backward have the GPU's memory.
Level-2 sleep discards the weights, which is why they are loaded before every generation; without
sleep mode they are loaded all the same, as the policy changed since the last call (one optimizer
step per generation in GRPO). Sampling maps onto vLLM's parameters one to one (no top-k, no min-p,
no penalties, the model's generation_config.json ignored), with a per-call seed drawn from torch's
generator so that a seeded run asks for the same samples again and a resumed one continues the stream.
vLLM samples in its own dtype and kernels, so its token probabilities differ from the training
forward's slightly (as in TRL's vLLM modes).
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch
from transformers import PreTrainedModel

from .common import Sampling

INSTALL_HINT = "rollout_backend=vllm needs vLLM on a machine with a GPU: pip install 'sftrl[vllm]'"


def sampling_params(sampling: Sampling, seed: int) -> dict[str, Any]:
    """vLLM SamplingParams keyword arguments that draw exactly what `sampling` asks for."""
    s = sampling
    return {
        "n": s.num_generations,
        "temperature": 0.0 if s.greedy else s.temperature,  # vLLM: 0 is greedy
        "top_p": 1.0 if s.greedy else s.top_p,
        "top_k": 0,  # 0: all tokens (the model's generation config may not narrow the distribution)
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "presence_penalty": 0.0,
        "frequency_penalty": 0.0,
        "max_tokens": s.max_new_tokens,
        "min_tokens": s.min_new_tokens,
        "stop_token_ids": list(s.eos_ids),  # every EOS of the generation config and the tokenizer
        "seed": seed,
        "detokenize": False,  # texts are decoded by sftrl from the token ids, for every backend alike
    }


def named_weights(model: PreTrainedModel) -> list[tuple[str, torch.Tensor]]:
    """The training model's parameters under their Hugging Face names (what vLLM's load_weights reads)."""
    return [(name, param.detach()) for name, param in model.named_parameters()]


def _external_launcher_env() -> None:
    """vLLM's external_launcher joins the process group torch.distributed describes; a plain
    single-process run has none, so describe a one-process group (accelerate launch sets these)."""
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


class VLLMEngine:
    """A colocated vLLM engine as a rollout engine: called with the training model, prompts and sampling.

    `llm` is a ``vllm.LLM`` (made by :meth:`start`) or anything with its methods (tests use a fake);
    `make_params` builds a SamplingParams from keyword arguments.
    """

    def __init__(self, llm, make_params, sleep_mode: bool):
        self.llm = llm
        self.make_params = make_params
        self.sleep_mode = sleep_mode
        self.weight_loads = 0  # how many times the training weights were loaded into the engine
        if sleep_mode:
            llm.sleep(level=2)  # free the GPU for training until the first generation

    @classmethod
    def start(cls, model_path: str, gpu_memory_utilization: float = 0.3, sleep_mode: bool = True,
              max_model_len: int | None = None, dtype: str = "auto", seed: int = 0) -> VLLMEngine:
        """Start vLLM on `model_path` (the checkpoint the training model was loaded from) in this process."""
        try:
            from vllm import LLM, SamplingParams
        except ImportError as error:
            raise ImportError(INSTALL_HINT) from error
        _external_launcher_env()
        llm = LLM(
            model=model_path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enable_sleep_mode=sleep_mode,
            # In this process, beside the trainer (one engine per training process, as TRL's colocate
            # mode): apply_model then reaches the engine's model without copying the weights.
            distributed_executor_backend="external_launcher",
            seed=seed + int(os.environ.get("RANK", "0")),
            generation_config="vllm",  # vLLM's neutral defaults, not the checkpoint's sampling settings
        )
        return cls(llm, SamplingParams, sleep_mode)

    def load_weights(self, model: PreTrainedModel) -> None:
        """Load the training model's current weights into the engine."""
        weights = named_weights(model)
        self.llm.apply_model(lambda engine_model: engine_model.load_weights(weights))
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights
        self.weight_loads += 1

    def __call__(self, model: PreTrainedModel, prompts: list[list[int]], sampling: Sampling) -> list[list[int]]:
        """Each prompt's `num_generations` completions (EOS included), prompt i's at i*G ... i*G+G-1."""
        seed = int(torch.randint(0, 2**31 - 1, ()))  # from torch's generator: seeded and checkpointed
        params = self.make_params(**sampling_params(sampling, seed))
        if self.sleep_mode:
            self.llm.wake_up(tags=["weights"])
        self.load_weights(model)
        if self.sleep_mode:
            self.llm.wake_up(tags=["kv_cache"])
        try:
            outputs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        finally:
            if self.sleep_mode:
                self.llm.sleep(level=2)
        return [list(sample.token_ids) for output in outputs for sample in sorted(output.outputs, key=lambda o: o.index)]
