"""Processes whose rows decide differently must still make the same collective calls, in the same order:
otherwise a real run waits forever in a collective that one process never joins. Two processes are
simulated here in one interpreter: two Trainers (ranks 0 and 1 of 2) on two threads, each with a
recording Collective whose exchanges meet the other thread's (so every sum and gather returns what a
real 2-process run would), and whose every call is recorded by name and shape, together with the
gradient synchronisation of each update. HPT's gate sends one process's prompts to SFT and the other's
to GRPO; ReLIFT's buffer fills from one process's failed prompts only; the two records must be equal.
A process that skipped a call fails here at the first point where the processes differ, the exchange
naming both calls (a process that made a call the other never makes would wait there forever in a real run)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
import torch

from sftrl.parallel import Collective
from sftrl.trainer import Trainer

from conftest import make_config

WORLD = 2


class Exchange:
    """Where the simulated processes meet: each puts in its contribution, all wait, each reads all."""

    def __init__(self, world: int, timeout: float = 120.0):
        self.slots: list = [None] * world
        self.barrier = threading.Barrier(world, timeout=timeout)

    def everyone(self, rank: int, call: tuple, value):
        self.slots[rank] = (call, value)
        self.barrier.wait()
        contributions = list(self.slots)
        self.barrier.wait()  # nobody writes the next call's slot before everyone has read this one
        calls = [call for call, _ in contributions]
        if any(other != calls[0] for other in calls):
            self.barrier.abort()
            raise AssertionError(f"the processes made different collective calls at the same point: {calls}")
        return [value for _, value in contributions]


def shape(value) -> object:
    """What must match between processes for a call to line up: a tensor's shape, a list's length (the
    reductions), nothing for gathers of objects (processes may hold different numbers of rows)."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (list, tuple)):
        return len(value)
    return None


class Recording(Collective):
    """Process `rank` of WORLD: records every collective call as (name, shape) and answers it from every
    process's contribution, met through `exchange`."""

    def __init__(self, rank: int, exchange: Exchange):
        super().__init__(SimpleNamespace(num_processes=WORLD, process_index=rank, device=torch.device("cpu")))
        self.exchange = exchange
        self.calls: list[tuple[str, object]] = []

    def meet(self, name: str, value, reduced: bool):
        call = (name, shape(value) if reduced else None)
        self.calls.append(call)
        return self.exchange.everyone(self.rank, call, value)

    def sum(self, value):
        return float(sum(self.meet("sum", value, reduced=False)))

    def sums(self, values):
        return [float(sum(column)) for column in zip(*self.meet("sums", list(values), reduced=True))]

    def max(self, value):
        return max(self.meet("max", value, reduced=False))

    def gather(self, tensor):
        return torch.cat(self.meet("gather", tensor.detach().cpu(), reduced=True))

    def gather_tensors(self, *tensors):
        everyone = self.meet("gather_tensors", [t.detach().cpu() for t in tensors], reduced=False)
        return [torch.cat([shard[i] for shard in everyone]) for i in range(len(tensors))]

    def gather_lists(self, values):
        merged: dict[str, list] = {}
        for shard in self.meet("gather_lists", dict(values), reduced=False):
            for key, items in shard.items():
                merged.setdefault(key, []).extend(items)
        return merged

    def union(self, keys):
        return sorted(set().union(*self.meet("union", list(keys), reduced=False)))

    def _everyone(self, value):  # gather_rows
        return self.meet("gather_rows", value, reduced=False)

    def barrier(self):
        self.meet("barrier", None, reduced=False)


def simulated_trainers(config_of) -> list[Trainer]:
    """WORLD trainers of the same run, each holding a Recording collective of its rank, whose updates'
    gradient synchronisation (the one gradient collective of a step) meets the others' too."""
    exchange = Exchange(WORLD)
    trainers = []
    for rank in range(WORLD):
        trainer = Trainer(config_of(rank))
        collective = Recording(rank, exchange)
        trainer.collective = trainer.parallel.collective = trainer.terms.collective = collective
        trainer.rows.collective = collective
        sync = trainer.parallel.sync

        def synchronised(model, token_id, sync=sync, collective=collective):
            collective.meet("sync", None, reduced=False)
            sync(model, token_id)

        trainer.parallel.sync = synchronised
        trainers.append(trainer)
    return trainers


def run_in_threads(trainers: list[Trainer], steps: int) -> None:
    """Each trainer on a thread of its own: start, then `steps` steps; the first error is raised."""
    errors: list[BaseException] = []

    def run(trainer):
        try:
            trainer.start()
            for _ in range(steps):
                trainer.train_step()
        except BaseException as error:  # noqa: BLE001: re-raised below, on the test's thread
            errors.append(error)
            trainers[0].collective.exchange.barrier.abort()  # the other process stops waiting too

    threads = [threading.Thread(target=run, args=(trainer,)) for trainer in trainers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise next((e for e in errors if isinstance(e, AssertionError)), errors[0])


def record_calls(trainer: Trainer, name: str) -> list:
    """(steps done, first argument) of every call the method makes to trainer.`name` (a StepContext primitive)."""
    seen: list = []
    original = getattr(trainer, name)

    def recorded(first, *args, **kwargs):
        seen.append((trainer.step, first))
        return original(first, *args, **kwargs)

    setattr(trainer, name, recorded)
    return seen


@pytest.mark.parametrize("method", ["hpt", "relift"])
def test_processes_whose_rows_decide_differently_make_the_same_collective_calls(tmp_path, tiny_model_dir,
                                                                                 even_answer_spec, method):
    # The reward is fixed by the prompt (even answers: 1), so each process's decisions follow from its rows.
    settings = {"hpt": dict(hpt_gate=0, entropy_coef=0.0, seed=7), "relift": dict(sft_batch_size=2, seed=1)}[method]
    trainers = simulated_trainers(lambda rank: make_config(
        tmp_path, tiny_model_dir, method=method, reward_funcs=[even_answer_spec], num_generations=2,
        max_completion_length=8, max_steps=4, sft_learning_rate=1e-3, output_dir=str(tmp_path / f"rank{rank}"),
        **settings))
    # What each process's rows decided: HPT's SFT rows and its rollouts kept for GRPO, per step;
    # ReLIFT's failed prompts offered to the buffer (positions, None for a prompt that did not fail).
    watched = {"hpt": ("sft_backward", "policy_backward"), "relift": ("gather_rows",)}[method]
    seen = [{name: record_calls(trainer, name) for name in watched} for trainer in trainers]
    run_in_threads(trainers, steps=4)
    calls = [trainer.collective.calls for trainer in trainers]
    assert calls[0] == calls[1]
    assert calls[0].count(("sync", None)) >= 4 and len(calls[0]) > 20
    if method == "hpt":  # in some step one process trains SFT only and the other GRPO only
        def per_step(records, size):  # per process: steps done -> the size of what the call trained on
            return [{step: size(value) for step, value in calls} for calls in records]

        sft = per_step([s["sft_backward"] for s in seen], len)
        rl = per_step([s["policy_backward"] for s in seen], lambda rollouts: len(rollouts.target_ids))
        assert any({(sft[rank].get(step, 0), rl[rank].get(step, 0)) for rank in (0, 1)} == {(2, 0), (0, 4)}
                   for step in range(4)), (sft, rl)
    else:  # in some step only one process's prompts fail, and the buffer's SFT update runs
        added = [[sum(p is not None for p in values) for _, values in s["gather_rows"]] for s in seen]
        assert any((a > 0) != (b > 0) for a, b in zip(*added)), added
        assert trainers[0].method_state["sft_updates"] > 0
        assert trainers[0].method_state == trainers[1].method_state  # the one global buffer
