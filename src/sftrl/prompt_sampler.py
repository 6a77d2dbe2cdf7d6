"""The order training draws rows in: :class:`PromptSampler`, a seeded permutation every epoch, resumable
from a checkpoint."""

from __future__ import annotations

import random
from collections.abc import Mapping


class PromptSampler:
    """Batches of example indices: a fresh permutation every epoch, deterministic and resumable.

    Each epoch visits every index exactly once, in an order fixed by ``(seed, epoch)``. A batch that
    reaches the end of an epoch is completed from the start of the next epoch's permutation, so all
    batches have ``batch_size`` indices (a batch larger than the dataset spans several epochs).
    ``state_dict()`` / ``load_state_dict()`` record ``(epoch, position)``; a sampler restored from
    a state draws exactly the batches the original would have drawn next. A named ``stream`` (CHORD's
    expert rows) draws its own order, independent of the unnamed (prompt) stream of the same seed.
    """

    def __init__(self, n_examples: int, batch_size: int, seed: int, stream: str = "") -> None:
        if n_examples < 1:
            raise ValueError(f"cannot sample prompts from an empty dataset (n_examples={n_examples})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.n_examples = n_examples
        self.batch_size = batch_size
        self.seed = seed
        self.stream = stream  # a named stream ("demonstrations") draws an order independent of the prompts'
        self.epoch = 0
        self.position = 0  # how many indices of this epoch's permutation were already drawn
        self._order_epoch: int | None = None
        self._order: list[int] = []

    def _epoch_order(self) -> list[int]:
        """This epoch's permutation, computed once per epoch."""
        if self._order_epoch != self.epoch:
            # A string key hashes seed and epoch together (random.Random seeds from its SHA-512), so
            # seed s at epoch e+1 does not replay seed s+1 at epoch e, as seeding with s+e would.
            # The unnamed stream keeps the key it always had, so existing runs draw what they drew.
            key = f"{self.stream}:" if self.stream else ""
            rng = random.Random(f"sftrl.PromptSampler:{key}{self.seed}:{self.epoch}")
            order = list(range(self.n_examples))
            rng.shuffle(order)
            self._order, self._order_epoch = order, self.epoch
        return self._order

    @property
    def epochs_done(self) -> float:
        """Passes over the data so far, fractional: 1.5 = one epoch and half of the next."""
        return self.epoch + self.position / self.n_examples

    def next_batch(self, size: int | None = None) -> list[int]:
        """The next ``size`` (default ``batch_size``) indices, crossing into the next epoch when this
        one runs out."""
        size = self.batch_size if size is None else size
        batch: list[int] = []
        while len(batch) < size:
            order = self._epoch_order()
            take = min(size - len(batch), self.n_examples - self.position)
            batch.extend(order[self.position : self.position + take])
            self.position += take
            if self.position == self.n_examples:
                self.epoch += 1
                self.position = 0
        return batch

    def state_dict(self) -> dict[str, int]:
        """Where sampling stands, plus the settings a resumed sampler must share to continue it."""
        return {"epoch": self.epoch, "position": self.position,
                "n_examples": self.n_examples, "seed": self.seed}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        """Continue from ``state``; it must come from a sampler over as many examples with the same seed."""
        for setting in ("n_examples", "seed"):
            if setting in state and state[setting] != getattr(self, setting):
                raise ValueError(
                    f"cannot resume prompt sampling: the saved state has {setting}={state[setting]}, "
                    f"this sampler has {setting}={getattr(self, setting)}; the batches would differ"
                )
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position < self.n_examples:
            raise ValueError(f"invalid sampler state: epoch={epoch}, position={position} "
                             f"for {self.n_examples} examples")
        self.epoch, self.position = epoch, position
