"""Rollouts: sample completions for prompts, behind one function, `generate_completions`.

Prompts in; token ids, texts and truncation flags out, each prompt's `num_generations` samples
contiguous (a GRPO group). The backend (`rollout_backend`) decides only how the tokens are drawn,
never from which distribution (temperature-scaled softmax, top-p, no top-k, nothing from the model's
own generation config), and nothing downstream knows which backend produced them:
- ``torch`` (default): sftrl's decode loop over the training model (:mod:`.decode`);
- ``generate``: transformers' ``model.generate`` (:mod:`.hf`);
- ``vllm``: a vLLM engine colocated with the trainer, weights synced before each generation (:mod:`.vllm`).
"""

from __future__ import annotations

from collections.abc import Callable

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..config import ROLLOUT_BACKENDS as BACKENDS
from .common import Completions, Sampling, cut_at_eos, encode_prompts, eos_token_ids, left_pad
from .decode import sample_with_decode_loop
from .hf import sample_with_generate

# (model, prompt token ids, sampling) -> each prompt's num_generations completions, EOS included
Engine = Callable[[PreTrainedModel, list[list[int]], Sampling], list[list[int]]]

__all__ = ["BACKENDS", "Completions", "Engine", "Sampling", "encode_prompts", "eos_token_ids", "generate_completions",
           "left_pad", "make_engine"]


def make_engine(backend: str, model_path: str | None = None, **vllm_options) -> Engine:
    """The engine of a backend; `vllm` starts a colocated vLLM engine on `model_path` (its options:
    :class:`sftrl.rollout.vllm.VLLMEngine`)."""
    if backend == "torch":
        return sample_with_decode_loop
    if backend == "generate":
        return sample_with_generate
    if backend == "vllm":
        from .vllm import VLLMEngine  # imports vllm, which only GPU machines have

        return VLLMEngine.start(model_path, **vllm_options)
    raise ValueError(f"rollout backend must be one of {', '.join(BACKENDS)}, got {backend!r}")


def generate_completions(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompt_texts: list[str],
    num_generations: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 256,
    max_prompt_length: int | None = None,
    greedy: bool = False,
    min_new_tokens: int = 0,
    progress=None,
    engine: Engine | None = None,
) -> Completions:
    """Sample `num_generations` completions per prompt with `engine` (default: sftrl's decode loop),
    `batch_size` sequences at a time.

    min_new_tokens > 0 masks EOS out of the first steps (transformers' min_new_tokens): the tokens are
    then no longer drawn from the loss's softmax; the benchmark uses it to make every completion
    exactly max_new_tokens long.
    """
    engine = engine or sample_with_decode_loop
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    sampling = Sampling(num_generations=num_generations, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, greedy=greedy, eos_ids=tuple(eos_token_ids(model, tokenizer)), pad_id=pad_id,
                        min_new_tokens=min_new_tokens, batch_size=batch_size)
    prompts = encode_prompts(tokenizer, prompt_texts, max_prompt_length)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("a prompt rendered to zero tokens; check the prompt field and the chat template")
    was_training = model.training
    model.eval()
    out = Completions([], [], [], [])
    try:
        # Chunks of prompts, so that a progress bar moves; each engine batches within a chunk itself.
        step = max(1, batch_size // num_generations) if progress is not None else len(prompts)
        for start in range(0, len(prompts), step):
            chunk = prompts[start:start + step]
            for row, tokens in enumerate(engine(model, chunk, sampling)):
                completion, truncated = cut_at_eos(tokens, sampling.eos_ids)
                out.prompt_ids.append(chunk[row // num_generations])
                out.completion_ids.append(completion)
                out.truncated.append(truncated)
            if progress is not None:
                progress.update(len(chunk))
    finally:
        model.train(was_training)
    out.texts = tokenizer.batch_decode(out.completion_ids, skip_special_tokens=True)
    return out
