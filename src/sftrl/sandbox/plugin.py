"""The sandbox plugs into sftrl through the registry, as a user's own task would: the data source
``sandbox`` (``sandbox:<split>``), its verifier as the reward ``sandbox``, and the model ``sandbox``
(the shipped base model). :mod:`sftrl.registry` imports this module before its first lookup."""

from __future__ import annotations

from typing import Any

from sftrl import registry
from sftrl.rewards import RewardError, completion_text
from sftrl.sandbox.prepare import base_model_dir
from sftrl.sandbox.task import make_split, verify


def sandbox_reward(prompts: list, completions: list, answer: list | None = None, **columns: Any) -> list[float | None]:
    """Reward "sandbox": the built-in task's exact verifier (last ``\\boxed{}`` equals the answer)."""
    texts = [completion_text(c) for c in completions]
    if answer is None or isinstance(answer, str) or len(answer) != len(texts):
        raise RewardError(f"the 'sandbox' reward needs one gold answer per completion in an 'answer' column "
                          f"({len(texts)} completions)")
    return [float(verify(text, str(gold))) for text, gold in zip(texts, answer)]


def load_sandbox_rows(split: str, sandbox_train_size: int | None = None, sandbox_demo_error_rate: float = 0.0,
                      sandbox_skill_share: float | None = None, sandbox_double_form: str = "times") -> list[dict]:
    """Rows of a sandbox split. The size, skill share and doubling form apply to `train` only, so
    evaluation sets never change; always the split's fixed seed, so the data is the same on every
    machine and run."""
    return make_split(split, n=sandbox_train_size if split == "train" else None, seed=None,
                      demo_error_rate=sandbox_demo_error_rate,
                      skill_share=sandbox_skill_share if split == "train" else None,
                      double_form=sandbox_double_form if split == "train" else "times")


registry.register_reward("sandbox", sandbox_reward)
registry.register_dataset("sandbox", load_sandbox_rows, verifier="sandbox", default_eval="sandbox:test")
registry.register_model("sandbox", lambda: str(base_model_dir()))
