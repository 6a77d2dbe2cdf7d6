"""Golden outputs of the training loop: what every method logs and trains to, recorded before the loop is
refactored (issue 22), so that each move can be shown to change no number.

What a case runs: one of the methods (``sftrl.methods.METHODS``; OPD, whose teacher would have to be
trained first, is left out) trains the shipped sandbox base
model on the sandbox task for 4 optimizer steps (``CASES``: settings chosen so that each method's phases
occur within them: SASR's warm-up, reference snapshot and coin; SFT→GRPO's and GRPO→SFT's two stages;
the static schedule's cycle; HPT's gate, ReLIFT's buffer and its second optimizer; GAC's statistics;
UFT's hints; demonstrations inside LUFFY's and SRFT's groups), with several micro-batches per term,
a warm-up + cosine schedule, evaluation before, at step 2 and after training, and a checkpoint at step 2.
Then a copy of the run resumes from that checkpoint and trains steps 3 and 4 again.

What is recorded per case, for the run and for its resumed copy: every record of metrics.jsonl with the
``time/*`` keys left out, summary.json without ``train_seconds``, the keys of the step-2 checkpoint's
trainer_state.pt, and a sha256 of the final weights (model/model.safetensors, tensor by tensor). And the
environment the floats came from (``environment()``): torch's version, its CPU capability
(ATEN_CPU_CAPABILITY), the thread count, the CPU's model name and the number of processes. Two runs agree
to the last bit only where all of these are the same, so tests/test_golden.py compares exactly only then.

Regenerate (only for a change that is meant to change numbers; say why in its commit), from the
repository root (machine load does not matter: the thread count is fixed, and times are not recorded):

    HF_HUB_OFFLINE=1 PYTHONPATH=src python tests/golden/record.py                # -> tests/golden/one-process.json
    HF_HUB_OFFLINE=1 PYTHONPATH=src python tests/golden/record.py --processes 2  # -> tests/golden/two-processes.json

``--processes 2`` launches ``torchrun --nproc_per_node 2`` (gloo, accelerate's DDP, one thread each) of
this file once, which runs every case in turn; every process uses one thread.
``--methods a,b`` runs some cases only, and ``--out FILE`` writes elsewhere (both for trying settings).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SRC = HERE.parents[1] / "src"
FILES = {1: HERE / "one-process.json", 2: HERE / "two-processes.json"}

# Shared by every case: 4 steps of 4 prompts (3 rollouts each) in micro-batches of 4 rows, so each term
# accumulates several; a warm-up step and a cosine decay; KL to a reference where the method has one.
COMMON: dict[str, Any] = dict(
    model="sandbox", train_data="sandbox", max_train_examples=64, max_eval_examples=4, eval_every=2,
    max_steps=4, batch_size=4, sft_batch_size=2, num_generations=3, micro_batch_size=4,
    max_completion_length=40, learning_rate=1e-3, sft_learning_rate=1e-3, warmup_steps=1,
    lr_scheduler="cosine", save_every=2, progress=False, seed=3,
    kl_from_base_examples=0)  # recorded before kl_from_base existed (tests/test_kl_from_base.py tests it)
CASES: dict[str, dict[str, Any]] = {
    "sasr": dict(sasr_warmup_steps=2, sasr_reference="warmup", sasr_gamma=10.0),  # warm-up, snapshot, coins
    "srft": dict(beta=0.04),
    "luffy": dict(),
    "hpt": dict(hpt_gate=1),  # a prompt with at most 1 of 3 right goes to SFT
    "relift": dict(sft_batch_size=4),  # the buffer fills in some steps: an update of its own optimizer
    "chord": dict(chord_mu_warmup_steps=2, chord_mu_decay_steps=2, chord_mu_peak=0.5),
    "gac": dict(gac_update_every=2),
    "uft": dict(uft_hint_steps=3),
    "sft": dict(),
    "grpo": dict(beta=0.04, mask_truncated_completions=True, entropy_coef=0.01),
    "sft-then-grpo": dict(sft_steps=2),  # the RL stage starts with a fresh optimizer
    "grpo-then-sft": dict(grpo_steps=2, sft_kl_coef=0.1),  # the SFT stage's KL to the end-of-RL snapshot
    "static": dict(static_sft_steps=1, static_grpo_steps=2),
    "dft": dict(),
    "asft": dict(),  # DFT + λ·k3 to the reference on demonstration tokens
    "opsd": dict(),  # the live teacher with the demonstration in its context
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(processes: int) -> dict[str, Any]:
    """What the recorded floats depend on besides the code (compare two before comparing their numbers)."""
    import torch

    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(), "cpu": cpu_model(), "processes": processes}


def weights_hash(model_dir: Path) -> str:
    """sha256 over the saved weights, tensor by tensor in name order (name, dtype, shape, bytes)."""
    import torch
    from safetensors.torch import load_file

    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(model_dir / "model.safetensors").items()):
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.contiguous().view(-1).view(dtype=torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def outputs(run_dir: Path, checkpoint: Path | None) -> dict[str, Any]:
    """What one finished run directory holds, as recorded (module docstring)."""
    import torch

    from sftrl import runlog

    records = [{k: v for k, v in r.items() if not k.startswith("time/")} for r in runlog.read(run_dir / "metrics.jsonl")]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("train_seconds", None)
    result = {"metrics": records, "summary": summary, "weights": weights_hash(run_dir / "model")}
    if checkpoint is not None:
        state = torch.load(checkpoint / "trainer_state.pt", map_location="cpu", weights_only=False)
        result["checkpoint_keys"] = sorted(state)
    return result


def run_case(method: str, workdir: Path) -> dict[str, Any]:
    """Train case `method` in workdir/<method>, resume a copy from its step-2 checkpoint in
    workdir/<method>-resumed, and return their outputs; every process calls it (under torchrun, with the
    same workdir)."""
    from sftrl.trainer import Trainer
    from sftrl.validate import load_config

    full, part = workdir / method, workdir / f"{method}-resumed"
    values = {**COMMON, **CASES[method], "method": method}
    Trainer(load_config(overrides={**values, "output_dir": str(full)})).train()
    checkpoint = full / "checkpoints" / "step-000002"
    if rank() == 0:
        shutil.copytree(checkpoint, part / "checkpoints" / checkpoint.name)
        for name in ("config.yaml", "metrics.jsonl"):  # the resumed run keeps the records up to its step
            shutil.copy(full / name, part / name)
    barrier()
    Trainer(load_config(overrides={**values, "output_dir": str(part), "resume": True})).train()
    barrier()  # process 0 writes the files read here
    return {"run": outputs(full, checkpoint), "resumed": outputs(part, None)}


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def barrier() -> None:
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def run_all(workdir: Path, methods: list[str] | None = None, processes: int = 1) -> dict[str, Any]:
    """{"environment": ..., "cases": {method: {"run": ..., "resumed": ...}}}; with processes=2 through
    torchrun (one launch for every case)."""
    methods = list(CASES) if methods is None else methods
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # A fresh interpreter even for one process: what other code run in the caller's process left behind
    # (a test suite's caches and globals) must not reach the recorded floats.
    launcher = [sys.executable] if processes == 1 else [
        shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun")),
        "--standalone", "--nproc_per_node", str(processes)]
    command = [*launcher, __file__, "--worker", "--workdir", str(workdir), "--methods", ",".join(methods)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads((workdir / "result.json").read_text())


def set_threads() -> None:
    """One thread: the floats depend on the thread count, one is the same on every machine, and on a
    busy machine it is much faster than two."""
    import torch

    torch.set_num_threads(1)


def worker(workdir: Path, methods: list[str]) -> None:
    """The recording process (or one of torchrun's): every case in turn; rank 0 writes workdir/result.json."""
    import torch

    from sftrl.trainer import Trainer  # noqa: F401: imports first, so the cases' timings do not include them

    set_threads()
    cases = {m: run_case(m, workdir) for m in methods}
    if rank() == 0:
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        result = {"environment": environment(torch.distributed.get_world_size() if distributed else 1), "cases": cases}
        (workdir / "result.json").write_text(json.dumps(result))


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--processes", type=int, choices=sorted(FILES), default=1)
    parser.add_argument("--methods", help="comma-separated: these cases only")
    parser.add_argument("--out", help="where to write (default: the golden file of --processes)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    methods = args.methods.split(",") if args.methods else None
    if args.worker:
        worker(Path(args.workdir), methods or list(CASES))
        return
    if methods is not None and args.out is None:
        parser.error("--methods records some cases only: pass --out too, so the golden file stays whole")
    with tempfile.TemporaryDirectory(prefix="sftrl-golden-") as workdir:
        result = run_all(Path(workdir), methods, args.processes)
    out = Path(args.out) if args.out else FILES[args.processes]
    out.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    print(f"wrote {out} ({len(result['cases'])} cases; {result['environment']})")


if __name__ == "__main__":
    sys.path.insert(0, str(SRC))
    main()
