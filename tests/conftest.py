"""Shared fixtures: offline mode, a tiny untrained sandbox model saved locally, a reward file."""

import os

# Before transformers/datasets are imported: a hub call would otherwise wait ~50 s to fail.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_terminal_summary(terminalreporter):
    # Which float kernels and how many threads this run's numbers came from (ATEN_CPU_CAPABILITY,
    # OMP_NUM_THREADS): what a float-sensitive failure depends on. A summary line, as -q hides the header.
    terminalreporter.write_line(f"torch {torch.__version__}: CPU capability "
                                f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """An untrained sandbox-architecture model + char tokenizer, saved with save_pretrained."""
    from sftrl.sandbox.model import build_model
    from sftrl.sandbox.tokenizer import build_tokenizer

    path = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=0).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


REWARD_FILE = '''
def odd_length(prompts, completions, answer, **kwargs):
    """A deterministic reward with signal even for an untrained model: 1 for odd-length completions."""
    return [float(len(c) % 2) for c in completions]


def even_answer(prompts, completions, answer, **kwargs):
    """A reward fixed by the prompt alone: 1 for every rollout of a prompt whose answer is even, else 0, so
    gates and buffers decide the same whatever is sampled (and whatever the number of processes)."""
    return [float(int(a) % 2 == 0) for a in answer]
'''


@pytest.fixture(scope="session")
def reward_spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("rewards") / "my_rewards.py"
    path.write_text(REWARD_FILE)
    return f"{path}:odd_length"


@pytest.fixture(scope="session")
def even_answer_spec(reward_spec):
    return reward_spec.replace(":odd_length", ":even_answer")


@pytest.fixture(scope="session")
def sandbox_base_model():
    """The shipped sandbox base model's directory (read-only: tests load it, never write to it)."""
    from sftrl.models import resolve_model_path

    return resolve_model_path("sandbox")
