"""Rollout backends: sftrl's decode loop draws what transformers' generate draws, from the distribution
the loss assumes (temperature, top-p, no top-k, nothing from the model's generation config)."""

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from sftrl.data import load_examples, render_prompt
from sftrl.models import load_model, load_tokenizer
from sftrl.rollout import generate_completions, make_engine
from sftrl.rollout.decode import filter_top_p


@pytest.fixture(scope="module")
def trained(sandbox_base_model):
    """The sandbox base model (it ends its answers with EOS at different lengths) and 6 sandbox prompts."""
    tokenizer = load_tokenizer(str(sandbox_base_model))
    model = load_model(str(sandbox_base_model))
    texts = [render_prompt(tokenizer, e.prompt) for e in load_examples("sandbox", "train", limit=6)]
    return model, tokenizer, texts


def sample(model, tokenizer, texts, backend, seed=0, **kwargs):
    torch.manual_seed(seed)
    settings = dict(num_generations=4, max_new_tokens=40) | kwargs
    return generate_completions(model, tokenizer, texts, engine=make_engine(backend), **settings)


@pytest.mark.float_sensitive
def test_greedy_completions_equal_generate_as_rows_finish_and_leave_the_batch(trained):
    model, tokenizer, _ = trained
    texts = [render_prompt(tokenizer, e.prompt) for e in load_examples("sandbox", "train", limit=40)]
    ours = sample(model, tokenizer, texts, "torch", greedy=True, num_generations=1)
    theirs = sample(model, tokenizer, texts, "generate", greedy=True, num_generations=1)
    assert ours.completion_ids == theirs.completion_ids and ours.truncated == theirs.truncated
    lengths = sorted(len(c) for c in ours.completion_ids)
    assert len(set(lengths)) > 5 and lengths[0] < 15 and 25 < lengths[-3]  # rows finished at many different steps
    assert sum(ours.truncated) < 5 and all(c[-1] == tokenizer.eos_token_id for c, t in zip(ours.completion_ids,
                                                                                           ours.truncated) if not t)


@pytest.mark.float_sensitive
def test_sampled_tokens_equal_generate_for_the_same_seed_while_no_row_has_finished(trained):
    model, tokenizer, texts = trained
    # EOS masked for every step: both run 24 steps on all rows, drawing from the same generator state
    ours = sample(model, tokenizer, texts, "torch", max_new_tokens=24, min_new_tokens=24, temperature=0.8, top_p=0.9)
    theirs = sample(model, tokenizer, texts, "generate", max_new_tokens=24, min_new_tokens=24, temperature=0.8,
                    top_p=0.9)
    assert ours.completion_ids == theirs.completion_ids
    assert all(len(c) == 24 and tokenizer.eos_token_id not in c for c in ours.completion_ids) and all(ours.truncated)
    assert len({tuple(c) for c in ours.completion_ids}) > len(texts)  # samples of a prompt differ


@pytest.mark.float_sensitive
def test_top_p_filter_is_transformers_top_p_warper():
    logits = torch.randn(64, 102, generator=torch.Generator().manual_seed(0)) * 3
    for top_p in (0.1, 0.5, 0.9, 0.999, 1.0):
        torch.testing.assert_close(filter_top_p(logits, top_p), TopPLogitsWarper(top_p)(None, logits.clone()))


@pytest.mark.float_sensitive
def test_first_tokens_follow_the_temperature_scaled_softmax(trained):
    model, tokenizer, texts = trained
    prompt = texts[:1]
    ids = torch.tensor([tokenizer(prompt[0], add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        probs = torch.softmax(model(ids).logits[0, -1] / 2.0, -1)  # temperature 2 spreads the first token
    torch.manual_seed(1)
    out = generate_completions(model, tokenizer, prompt, num_generations=4000, max_new_tokens=1, temperature=2.0,
                               batch_size=4000)
    counts = torch.bincount(torch.tensor([c[0] for c in out.completion_ids]), minlength=probs.numel()).float()
    assert probs.max() < 0.9  # a distribution with several likely tokens is compared
    assert float((counts / 4000 - probs).abs().max()) < 0.025  # 4000 draws: a standard error of at most 0.008


def test_the_models_generation_config_changes_nothing(trained):
    model, tokenizer, texts = trained
    clean = {backend: sample(model, tokenizer, texts, backend, temperature=0.9).completion_ids
             for backend in ("torch", "generate")}
    saved = model.generation_config.to_dict()
    try:  # settings a checkpoint may ship with; a sampler that read them would draw other tokens
        model.generation_config.top_k = 2
        model.generation_config.temperature = 0.1
        model.generation_config.repetition_penalty = 3.0
        model.generation_config.min_p = 0.3
        model.generation_config.suppress_tokens = [5, 6, 7]
        model.generation_config.do_sample = False
        for backend in ("torch", "generate"):
            assert sample(model, tokenizer, texts, backend, temperature=0.9).completion_ids == clean[backend]
    finally:
        model.generation_config = type(model.generation_config).from_dict(saved)


def test_seeded_sampling_repeats_and_other_seeds_differ(trained):
    model, tokenizer, texts = trained
    first = sample(model, tokenizer, texts, "torch", seed=5)
    again = sample(model, tokenizer, texts, "torch", seed=5)
    other = sample(model, tokenizer, texts, "torch", seed=6)
    assert first.completion_ids == again.completion_ids and first.texts == again.texts
    assert first.completion_ids != other.completion_ids
    assert first.prompt_ids == [p for p in first.prompt_ids[::4] for _ in range(4)]  # groups are contiguous


@pytest.mark.float_sensitive
def test_batch_size_only_splits_the_work(trained):
    model, tokenizer, texts = trained
    whole = sample(model, tokenizer, texts, "torch", greedy=True, num_generations=1, batch_size=64)
    split = sample(model, tokenizer, texts, "torch", greedy=True, num_generations=1, batch_size=1)  # one prompt a chunk
    assert whole.completion_ids == split.completion_ids


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="torch, generate, vllm"):
        make_engine("tgi")
