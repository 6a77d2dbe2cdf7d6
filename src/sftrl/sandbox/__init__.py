"""The built-in sandbox: a procedurally generated reasoning task a tiny model learns on a CPU."""

from sftrl.sandbox.prepare import base_model_dir, greedy_accuracy, load_base_model, prepare_base_model
from sftrl.sandbox.task import make_split, verify

__all__ = ["base_model_dir", "greedy_accuracy", "load_base_model", "make_split", "prepare_base_model", "verify"]
