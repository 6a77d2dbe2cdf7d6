"""Data parallelism through accelerate (DDP, FSDP, DeepSpeed ZeRO): which module training forwards go
through, when gradients are averaged over processes, and how every process gets whole weights.

Every backward pass of a step runs unsynchronised (accelerate's `no_sync`; under DeepSpeed, the
engine's gradient-accumulation boundary off). The step ends with `sync`: one synchronised backward of
a zero loss over a one-token forward of the wrapped model, on every process. That backward is where
DDP all-reduces (FSDP reduce-scatters, DeepSpeed reduces) what the step accumulated, so every process
runs the gradient collective exactly once per update, whatever its own rows were (HPT's gate and
ReLIFT's buffer give processes different numbers of micro-batches, or none). It costs one forward and
backward of one token per update, and it is why the methods need not know which backward is their last.

DDP (and one process): training forwards go through the unwrapped module, which starts no
collective, so processes may run different numbers of micro-batches. FSDP and DeepSpeed: forwards
must go through the wrapped module (it gathers the shards), so each term is padded to the same number
of forward/backward passes on every process (`even_out`, zero-loss passes) and runs one forward per
micro-batch (the shared-prompt forward runs one or two, depending on the rows).

The losses are whole-step sums over every process divided by whole-step counts (sftrl.batching), and
DDP, FSDP and ZeRO average gradients over processes: each process's loss is multiplied by the number
of processes, so the average is the whole step's gradient.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from .config import Config


def backend_of(accelerator: Accelerator) -> str:
    """'deepspeed', 'fsdp', 'ddp' (any other multi-process run) or 'none' (one process)."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        return "deepspeed"
    if kind == DistributedType.FSDP:
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "none"


class Collective:
    """Every exchange between the run's processes that is not a gradient: sums, maxima, gathers, and
    the sharding of a step's rows (global[rank::world]). Each call is collective (every process makes
    it, in the same order) except `local_rows`; with one process each returns its input. Sums are in
    float64. The exchanges themselves are `_reduce_sum`, `_max` and `_everyone` (all_gather_object)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.world = accelerator.num_processes
        self.rank = accelerator.process_index

    # ------------------------------------------------------------------ the exchanges
    def _reduce_sum(self, values: list[float]) -> list[float]:
        tensor = torch.tensor(values, dtype=torch.float64, device=self.accelerator.device)
        return [float(v) for v in self.accelerator.reduce(tensor, reduction="sum").cpu()]

    def _max(self, value: int) -> int:
        tensor = torch.tensor([value], dtype=torch.long, device=self.accelerator.device)
        torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
        return int(tensor.item())

    def _everyone(self, value: Any) -> list:
        """Every process's `value`, in rank order."""
        everyone: list = [None] * self.world
        torch.distributed.all_gather_object(everyone, value)
        return everyone

    # ------------------------------------------------------------------ what the loop and methods use
    def sum(self, value: float) -> float:
        """`value` summed over every process."""
        return value if self.world == 1 else self._reduce_sum([value])[0]

    def sums(self, values: list[float]) -> list[float]:
        """Element-wise sums over every process, in one all-reduce."""
        return list(values) if self.world == 1 else self._reduce_sum(list(values))

    def max(self, value: int) -> int:
        """The largest `value` of any process."""
        return value if self.world == 1 else self._max(value)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every process's tensor (same shape on each) concatenated on dim 0 in rank order, on the CPU."""
        if self.world == 1:
            return tensor
        return self.accelerator.gather(tensor.to(self.accelerator.device)).cpu()

    def gather_tensors(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor concatenated (dim 0) over every process in rank order (their lengths may differ)."""
        if self.world == 1:
            return list(tensors)
        everyone = self._everyone([t.detach().cpu() for t in tensors])
        return [torch.cat([shard[i] for shard in everyone]) for i in range(len(tensors))]

    def gather_lists(self, values: dict[str, list]) -> dict[str, list]:
        """Per key, every process's lists concatenated."""
        if self.world == 1:
            return dict(values)
        merged: dict[str, list] = defaultdict(list)
        for shard in self._everyone(dict(values)):
            for key, items in shard.items():
                merged[key] += items
        return dict(merged)

    def union(self, keys: list[str]) -> list[str]:
        """The sorted union of every process's keys (so that all reduce the same vector)."""
        if self.world == 1:
            return sorted(keys)
        return sorted(set().union(*self._everyone(list(keys))))

    def gather_rows(self, values: list) -> list:
        """Every process's per-row values of a list sharded as global[rank::world] (the step's prompts,
        drawn demonstrations), put back in the global order."""
        if self.world == 1:
            return list(values)
        shards = self._everyone(list(values))
        merged = []
        for i in range(max(len(shard) for shard in shards)):
            merged += [shard[i] for shard in shards if i < len(shard)]
        return merged

    def local_rows(self, values: list) -> list:
        """This process's share of a global per-row list: values[rank::world] (not collective)."""
        return list(values)[self.rank::self.world]

    def barrier(self) -> None:
        self.accelerator.wait_for_everyone()


class Parallel:
    """The run's data-parallel backend, as the training loop uses it (see the module docstring)."""

    def __init__(self, accelerator: Accelerator):
        self.accelerator = accelerator
        self.collective = Collective(accelerator)
        self.backend = backend_of(accelerator)
        self.world = accelerator.num_processes
        self.sharded = self.backend in ("fsdp", "deepspeed")
        plugin = accelerator.state.deepspeed_plugin if self.backend == "deepspeed" else None
        self.zero_stage = plugin.zero_stage if plugin is not None else None
        # Parameters are split over processes (FSDP, ZeRO-3): generation, evaluation and saving use a
        # local whole copy, refreshed from the shards after each update.
        self.needs_replica = self.backend == "fsdp" or self.zero_stage == 3
        self.updates = 0  # optimizer updates made; the replica is refreshed when it lags
        self._replica_updates = -1  # `updates` when the replica was last refreshed

    def whole_policy(self, model, policy, replica):
        """The policy with all its weights on this process, for generation, evaluation and saving: `policy`
        itself (`replica` None), or under FSDP / ZeRO-3 the local copy `replica`, refreshed from the shards
        of `model` when an update was made since (collective there: every process calls it at the same
        points)."""
        if replica is None:
            return policy
        if self._replica_updates != self.updates:
            replica.load_state_dict(self.full_state_dict(model, policy))
            self._replica_updates = self.updates
        return replica

    def configure(self, config: Config) -> None:
        """Fill DeepSpeed's 'auto' values before accelerator.prepare: sftrl accumulates a step's
        micro-batches itself (so DeepSpeed sees one accumulation step, its boundary set by `sync`), and
        DeepSpeed clips at max_grad_norm (validate.check_processes refused any other setting)."""
        if self.backend != "deepspeed":
            return
        ds = self.accelerator.state.deepspeed_plugin.deepspeed_config
        ds["gradient_accumulation_steps"] = 1
        ds["train_micro_batch_size_per_gpu"] = config.micro_batch_size
        ds["gradient_clipping"] = config.max_grad_norm
        ds.pop("train_batch_size", None)  # derived by DeepSpeed from the two above

    def forward_module(self, wrapped, unwrapped):
        """What training forwards call: the unwrapped module under DDP (no collective in forward or
        backward), the wrapped one under FSDP and DeepSpeed (it gathers the shards)."""
        return wrapped if self.sharded else unwrapped

    def backward(self, model, loss: torch.Tensor) -> None:
        """Accumulate `loss`'s gradient on this process, without synchronising (see `sync`)."""
        scaled = loss * self.world
        if self.backend == "deepspeed":
            model.set_gradient_accumulation_boundary(False)
            model.backward(scaled)
        else:
            with self.accelerator.no_sync(model):
                self.accelerator.backward(scaled)

    def most_passes(self, passes: int) -> int:
        """Under FSDP or DeepSpeed with several processes: the most forward/backward passes any process
        will run for a term (collective). Call it before the passes: a process that has none would
        otherwise wait here while another gathers shards for its first forward."""
        if not self.sharded or self.world == 1:
            return passes
        return self.collective.max(passes)

    def even_out(self, model, passes: int, most: int, token_id: int) -> None:
        """After a term's `passes` forward/backward passes: run zero-loss passes up to `most` (from
        `most_passes`), so every process has run as many through the sharded module."""
        for _ in range(most - passes):
            self.backward(model, self._zero_loss(model, token_id))

    def _zero_loss(self, model, token_id: int) -> torch.Tensor:
        """0 × a one-token forward of the wrapped model: a backward of it moves no gradient but runs the
        backend's hooks; under DDP every parameter gets a (zero) gradient, so none is left unready."""
        ids = torch.full((1, 1), token_id, dtype=torch.long, device=self.accelerator.device)
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False).logits
        loss = logits.float().sum() * 0.0
        if self.backend == "ddp":
            loss = loss + sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
        return loss

    def sync(self, model, token_id: int) -> None:
        """Average the step's accumulated gradients over processes: one synchronised backward of a zero
        loss, on every process (collective). Under DeepSpeed it marks the accumulation boundary, and
        `deepspeed_step` then makes the update."""
        if self.backend == "deepspeed":
            model.set_gradient_accumulation_boundary(True)
            model.backward(self._zero_loss(model, token_id))
        elif self.world > 1:
            self.accelerator.backward(self._zero_loss(model, token_id))

    def update(self, model, optimizers: list, learning_rate: float, max_grad_norm: float, token_id: int,
               loss: float | None = None, skip_above: float = 0.0) -> tuple[float, bool, bool]:
        """The one update of either optimizer: average the step's gradients over processes (`sync`), clip
        their global norm at max_grad_norm (0: none), and step `optimizers[0]` at `learning_rate` unless the
        norm (or the loss summed over processes, when given) is not finite or the norm is above skip_above
        (when set); every optimizer's gradients are zeroed either way (they all hold the policy's
        parameters). Returns the norm before clipping, whether it (and the loss) was finite, and whether
        the update was made. Collective."""
        self.sync(model, token_id)
        max_norm = max_grad_norm if max_grad_norm > 0 else float("inf")
        grad_norm = float(self.accelerator.clip_grad_norm_(model.parameters(), max_norm))
        finite = math.isfinite(grad_norm) and (loss is None or math.isfinite(self.collective.sum(loss)))
        taken = finite and not (skip_above > 0 and grad_norm > skip_above)
        if taken:
            for group in optimizers[0].param_groups:
                group["lr"] = learning_rate
            optimizers[0].step()
            self.updates += 1
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        return grad_norm, finite, taken

    def deepspeed_update(self, model, optimizer, learning_rate: float, token_id: int, loss: float) -> tuple[float, bool]:
        """`update` under DeepSpeed: the engine clips and steps (`deepspeed_step`), and only a non-finite
        loss (summed over processes) skips. Returns the norm and whether the update was made. Collective."""
        finite = math.isfinite(self.collective.sum(loss))
        self.sync(model, token_id)
        grad_norm = self.deepspeed_step(model, optimizer, learning_rate, finite)
        self.updates += finite
        return grad_norm, finite

    def deepspeed_step(self, model, optimizer, learning_rate: float, take: bool) -> float:
        """DeepSpeed's update after `sync`: it clips at gradient_clipping (= max_grad_norm) and steps the
        optimizer at `learning_rate`; with take=False (a non-finite loss) the gradients are dropped
        instead. Returns DeepSpeed's global gradient norm (before clipping), NaN when not stepped."""
        if not take:
            model.optimizer.zero_grad()
            return float("nan")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate
        model.step()
        norm = model.get_global_grad_norm()
        return float(norm.item() if hasattr(norm, "item") else norm if norm is not None else float("nan"))

    def full_state_dict(self, model, unwrapped) -> dict[str, Any]:
        """The policy's whole weights on every process (collective under FSDP and ZeRO-3)."""
        if self.backend == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if self.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=None):
                return {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        return unwrapped.state_dict()

    def load_full_state_dict(self, model, unwrapped, weights: dict[str, Any]) -> None:
        """Set the policy's weights from a whole state dict (a checkpoint's); collective when sharded."""
        if self.backend == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
        elif self.zero_stage == 3:
            import deepspeed
            with deepspeed.zero.GatheredParameters(list(unwrapped.parameters()), modifier_rank=0):
                unwrapped.load_state_dict(weights)
        else:
            unwrapped.load_state_dict(weights)

    def optimizer_state(self, model, optimizer) -> dict[str, Any]:
        """The optimizer's state as one process holds all of it (collective under FSDP)."""
        if self.backend == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict
            return get_optimizer_state_dict(model, optimizer, options=StateDictOptions(full_state_dict=True))
        return optimizer.state_dict()

    def load_optimizer_state(self, model, optimizer, state: dict[str, Any]) -> None:
        if self.backend == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
            set_optimizer_state_dict(model, optimizer, state, options=StateDictOptions(full_state_dict=True))
        else:
            optimizer.load_state_dict(state)
