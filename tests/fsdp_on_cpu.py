"""`python tests/fsdp_on_cpu.py train ...` under torchrun: `sftrl.cli` with accelerate's state set to FSDP2.

accelerate 1.15 turns FSDP on only for GPU-like devices (on CPU, ACCELERATE_USE_FSDP is ignored and
sftrl refuses it), yet torch's FSDP2 (`fully_shard`) runs on CPU processes over gloo. This sets the state
accelerate would set on GPUs (distributed_type FSDP, the FSDP2 plugin of examples/accelerate/fsdp.yaml),
so the code paths an FSDP run takes (sharded parameters, forwards through the wrapped module, evened-out
passes, full state dicts) run in CI. It prints the prepared parameters' type, so a test can check they
were sharded.
"""

import sys

from accelerate import Accelerator
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init, _prepare = Accelerator.__init__, Accelerator.prepare


def _fsdp_init(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    self.state.distributed_type = DistributedType.FSDP
    self.state.fsdp_plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, auto_wrap_policy="transformer_based_wrap", reshard_after_forward=True,
        state_dict_type="FULL_STATE_DICT", cpu_ram_efficient_loading=False)


def _reporting_prepare(self, *args, **kwargs):
    prepared = _prepare(self, *args, **kwargs)
    model = next(obj for obj in prepared if hasattr(obj, "parameters"))
    kinds = sorted({type(p).__name__ for p in model.parameters()})
    # One write per line: both processes share torchrun's stderr, and print() writes the text and its
    # newline separately, so two processes' lines could interleave (seen on a loaded 2-core machine).
    sys.stderr.write(f"fsdp_on_cpu: process {self.process_index} parameters {','.join(kinds)}\n")
    sys.stderr.flush()
    return prepared


Accelerator.__init__, Accelerator.prepare = _fsdp_init, _reporting_prepare

if __name__ == "__main__":
    from sftrl.cli import main

    sys.exit(main())
