"""Shared fixtures and helpers: offline mode, a tiny untrained sandbox model saved locally, reward files,
the small run's config every trainer test starts from, and reading a run's metrics. Test modules import
the helpers from here (`from conftest import make_config`), never from one another."""

import os

# Before transformers/datasets are imported: a hub call would otherwise wait ~50 s to fail.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(min(2, torch.get_num_threads()))


def make_config(tmp_path, model_dir, **overrides):
    """A small sandbox run's config: 64 training rows, no evaluation, 2 steps of 4 prompts x 4 rollouts of at
    most 12 tokens, no checkpoints, in tmp_path/run; `overrides` win."""
    from sftrl.validate import load_config

    values = dict(model=str(model_dir), train_data="sandbox", max_train_examples=64, eval_data=None,
                  max_steps=2, batch_size=4, num_generations=4, max_completion_length=12, progress=False,
                  output_dir=str(tmp_path / "run"), save_every=0, learning_rate=1e-3)
    values.update(overrides)
    return load_config(overrides=values)


def read_metrics(run_dir):
    """The records of run_dir/metrics.jsonl."""
    from sftrl import runlog

    return runlog.read(run_dir / "metrics.jsonl")


def comparable(records):
    """Records without their timings (`time/*`), which differ from run to run."""
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def files_of(directory):
    """Every file under `directory`, by relative path, with its bytes."""
    return {p.relative_to(directory): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def grads(model):
    """The gradients of a model's parameters that have one, copied."""
    return [p.grad.detach().clone() for p in model.parameters() if p.grad is not None]


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
