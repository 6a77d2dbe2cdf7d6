"""The built-in sandbox: a procedurally generated reasoning task a tiny model learns on a CPU."""

from sftrl.sandbox.task import make_split, verify

__all__ = ["make_split", "verify"]
