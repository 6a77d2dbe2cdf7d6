"""Checkpoints and run directories: atomic saves, what a run directory allows, resuming.

A checkpoint is ``checkpoints/step-NNNNNN`` with the model and tokenizer (``from_pretrained`` loads it;
a LoRA run's holds the adapter, which ``PeftModel.from_pretrained`` loads onto the base model),
``trainer_state.pt`` (a :class:`RunState` as a plain dict: optimizers, samplers, method state, counters,
random generators) and, when the reference model is a snapshot taken during training, ``reference/``. It is written to a temporary directory and
renamed into place, so a crash never leaves a half-written checkpoint.

Before a run starts, :func:`plan_run` decides from the run directory what may happen, writing nothing:
a finished run (``summary.json``) is never touched; a run started with settings that change the
result is never continued or overwritten (the differing fields are named; the fields in
``RESULT_NEUTRAL_FIELDS``, and ``coin_reward_prob`` without a coin reward, may differ); a run that
stopped before its first checkpoint starts again;
one with checkpoints resumes only with ``resume=true``, from the newest checkpoint that loads.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np
import torch
import yaml

from .config import Config, result_neutral
from .errors import RunError, one_line
from . import models

TRAINER_STATE = "trainer_state.pt"
RUN_FILES = ("config.yaml", "metrics.jsonl", "checkpoints", "model")  # what makes a directory hold a run
LOCK_FILE = ".sftrl-lock"  # held by the process training into the directory (lock_run_dir)


@dataclass
class RunPlan:
    """What to do with the run directory: resume from one of `checkpoints` (newest first), or start
    (`restart`: clear what a run of the same settings left before its first checkpoint)."""

    checkpoints: list[Path] = field(default_factory=list)
    restart: bool = False


@dataclass(kw_only=True)
class RunState:
    """Everything a resumed run needs besides the weights, as one checkpoint holds it. Saved as a plain
    dict (`to_dict`; trainer_state.pt), so a checkpoint loads without this class; `from_dict` reads one
    written by any sftrl since checkpoints began: a field it lacks takes the default here (0 for the
    counters that came later). The trainer captures it (`Trainer.run_state`) and restores it (`resume`).
    """

    step: int  # optimizer steps finished
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    total_token_passes: int = 0  # every process's, over the run
    total_train_sequences: int = 0
    nonfinite_in_a_row: int = 0
    warned_unscorable: bool = False  # the warning about unscorable rollouts was given
    optimizer: dict[str, Any]  # the policy optimizer's state dict, whole (FSDP: gathered)
    sampler: dict[str, Any]  # the step's prompt sampler
    demo_sampler: dict[str, Any] | None = None  # CHORD's expert rows' sampler; None: written before it
    extra_optimizer: dict[str, Any] | None = None  # Method.extra_optimizer's state (ReLIFT)
    method_state: dict[str, Any]
    reference_step: int | None = None  # the step of the reference snapshot saved in reference/; None: none
    rng: dict[str, Any]  # python, numpy, torch and cuda generators (`capture_rng`)

    # Counters the trainer keeps as attributes of the same names.
    COUNTERS: ClassVar[tuple[str, ...]] = ("step", "skipped_steps", "total_token_passes", "total_train_sequences", "nonfinite_in_a_row",
                "warned_unscorable", "reference_step")

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> "RunState":
        """A ValueError names the fields a dict lacks that have no default."""
        missing = [f.name for f in fields(cls) if f.name not in state
                   and f.default is MISSING and f.default_factory is MISSING]
        if missing:
            raise ValueError(f"no {', '.join(missing)}")
        return cls(**{f.name: state[f.name] for f in fields(cls) if f.name in state})


def capture_rng() -> dict[str, Any]:
    """The state of every random generator a run draws from (python, numpy, torch, and cuda's where present)."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def restore_rng(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


def config_differences(old: dict[str, Any], new: Config) -> list[str]:
    """'field old -> new' for each field that differs and can change the result; a field the old
    config lacks (written by an older sftrl) counts as its default."""
    defaults = Config().to_dict()
    neutral = result_neutral(new.to_dict()) & result_neutral({**defaults, **old})
    differences = []
    for name, value in new.to_dict().items():
        if name in neutral or name == "output_dir":
            continue
        before = old.get(name, defaults[name])
        if before != value:
            differences.append(f"{name} {before!r} -> {value!r}")
    return differences


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    try:
        loaded = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise RunError(f"{path}: cannot be read ({one_line(exc)[:200]}); choose another output_dir") from exc
    if not isinstance(loaded, dict):
        raise RunError(f"{path}: is not a config mapping; choose another output_dir")
    return loaded


def plan_run(config: Config) -> RunPlan:
    """What `config`'s run directory allows (module docstring); a RunError says why not, before
    anything is written."""
    run_dir = config.run_dir
    if not run_dir.exists():
        if config.resume:
            raise RunError(f"resume=true but {run_dir} does not exist, so there is nothing to resume; "
                           "leave resume out to start a run there")
        return RunPlan()
    if not run_dir.is_dir():
        raise RunError(f"output_dir: {run_dir} is a file, not a directory")
    if (run_dir / "summary.json").exists():
        raise RunError(f"output_dir: {run_dir} holds a finished run (summary.json); a finished run is never "
                       "overwritten or continued: choose another output_dir")
    present = [name for name in RUN_FILES if (run_dir / name).exists()]
    if not present:
        return RunPlan()  # an empty (or unrelated) directory: the run's files go beside what is there
    if "config.yaml" not in present:
        raise RunError(f"output_dir: {run_dir} holds {', '.join(present)} but no config.yaml, so it cannot be "
                       "checked or continued: choose another output_dir")
    differences = config_differences(read_run_config(run_dir), config)
    if differences:
        why = ("resume=true continues a run only with the settings it started with"
               if config.resume else "it is not overwritten")
        raise RunError(f"output_dir: {run_dir} holds a run with other settings ({'; '.join(differences)}); {why}: "
                       "use the same settings or choose another output_dir")
    checkpoints = checkpoint_dirs(run_dir)
    if not checkpoints:
        return RunPlan(restart=True)  # stopped before its first checkpoint: nothing to resume, nothing to lose
    if not config.resume:
        raise RunError(f"output_dir: {run_dir} already holds a run (checkpoints up to {checkpoints[-1].name}); "
                       "pass resume=true to continue it, or choose another output_dir")
    return RunPlan(checkpoints=checkpoints[::-1])


def lock_run_dir(run_dir: Path):
    """Hold `run_dir` for this process until the returned file is closed or the process ends (kill -9
    included: the system drops the lock), so a second sftrl process training into the same directory is
    refused in one line instead of writing beside this one (e.g. a rerun while an earlier one still
    runs). A POSIX record lock (lockf: a process never blocks itself); where fcntl does not exist, None."""
    try:
        import fcntl
    except ImportError:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    handle = open(run_dir / LOCK_FILE, "a+")
    try:
        fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise RunError(f"output_dir: {run_dir} is in use by another sftrl process"
                       f"{f' (pid {holder})' if holder.isdigit() else ''}; wait for it to end or choose another "
                       "output_dir") from None
    handle.seek(0)
    handle.truncate()
    handle.write(str(os.getpid()))
    handle.flush()
    return handle


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """The run's checkpoints, oldest first."""
    return sorted(p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir())


def save_checkpoint(run_dir: Path, step: int, policy, tokenizer, state: RunState, reference=None,
                    keep: int = 2) -> Path:
    """Write checkpoints/step-NNNNNN atomically and keep only the newest `keep` checkpoints."""
    root = run_dir / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f".tmp-step-{step:06d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    torch.save(state.to_dict(), tmp / TRAINER_STATE)
    if reference is not None:  # a snapshot taken during training: keep it for resuming
        reference.save_pretrained(tmp / "reference")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in checkpoint_dirs(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def save_model(run_dir: Path, policy, tokenizer, name: str = "model") -> Path:
    """Write the final model to run_dir/`name` atomically (a LoRA policy writes its adapter)."""
    tmp, final = run_dir / f".tmp-{name}", run_dir / name
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    return final


class DamagedCheckpoint(Exception):
    """A checkpoint that cannot be resumed from; the message says which part is wrong and how."""


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc)[:200]}"


def load_checkpoint(path: Path, load_weights: Callable[[str], dict[str, torch.Tensor]], load_model: Callable[[str], Any]
                    ) -> tuple[RunState, dict[str, torch.Tensor], Any]:
    """(run state, policy weights, reference model or None) of one checkpoint; `load_weights(path)`
    reads the policy's weights (the whole model's, or a LoRA run's adapter), `load_model(path)` loads a
    model directory. A DamagedCheckpoint names what is wrong (an empty folder, a missing or truncated
    trainer_state.pt, weights that do not load)."""
    if not path.is_dir() or not any(path.iterdir()):
        raise DamagedCheckpoint("the folder is empty")
    state_file = path / TRAINER_STATE
    if not state_file.is_file():
        raise DamagedCheckpoint(f"{TRAINER_STATE} is missing")
    try:
        state = torch.load(state_file, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001: a cut-off zip shows up as RuntimeError, EOFError, UnpicklingError...
        raise DamagedCheckpoint(f"{TRAINER_STATE} is truncated or damaged ({state_file.stat().st_size} bytes; "
                                f"{_why(exc)})") from exc
    if not isinstance(state, dict) or "step" not in state:
        raise DamagedCheckpoint(f"{TRAINER_STATE} holds no trainer state (no step)")
    try:
        state = RunState.from_dict(state)
    except ValueError as exc:
        raise DamagedCheckpoint(f"{TRAINER_STATE} is incomplete ({exc})") from exc
    try:
        weights = load_weights(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DamagedCheckpoint(f"its model weights cannot be loaded ({_why(exc)})") from exc
    try:
        reference = load_model(str(path / "reference")) if state.reference_step is not None else None
    except Exception as exc:  # noqa: BLE001
        raise DamagedCheckpoint(f"its reference/ model cannot be loaded ({_why(exc)})") from exc
    return state, weights, reference


def checkpoint_step(path: Path) -> int | None:
    """The step in a checkpoint folder's name (step-000004 -> 4), None for another name."""
    number = path.name.rpartition("-")[2]
    return int(number) if number.isdigit() else None


def load_newest_readable(checkpoints: list[Path], load_weights: Callable[[str], dict[str, torch.Tensor]],
                         load_model: Callable[[str], Any], warn: Callable[[str], None]
                         ) -> tuple[Path, tuple[RunState, dict[str, torch.Tensor], Any]]:
    """The first of `checkpoints` (newest first) that loads, and what it holds. Nothing falls back
    silently: each damaged one skipped on the way is named with what is wrong with it, and a resume
    from an older checkpoint says how many steps will be trained again. A RunError when none loads."""
    damaged = []
    for path in checkpoints:
        try:
            loaded = load_checkpoint(path, load_weights, load_model)
        except DamagedCheckpoint as exc:
            damaged.append(f"{path.name} ({exc})")
            warn(f"warning: skipped checkpoint {path}: {exc}")
            continue
        if damaged:
            step, newest = loaded[0].step, checkpoint_step(checkpoints[0])
            redo = newest - step if newest is not None and newest > step else None
            lost = f"{redo} step{'s' if redo != 1 else ''}" if redo else "the steps after it"
            warn(f"warning: resuming from {path} (step {step}), not from the newest checkpoint {checkpoints[0]}: "
                 f"{lost} will be trained again")
        return path, loaded
    raise RunError(f"resume=true but no checkpoint in {checkpoints[0].parent} can be loaded: {'; '.join(damaged)}")


def write(run_dir: Path, step: int, whole_policy: Callable[[], Any], tokenizer, capture: Callable[[], RunState],
          reference, keep: int, barrier: Callable[[], None], main: bool) -> Path:
    """A training run's checkpoint at `step` (save_checkpoint), written by the main process (`main`) between
    two barriers; never with non-finite weights. `whole_policy` and `capture` (the run's state) are called on
    every process (collective under FSDP and ZeRO-3)."""
    refuse_nonfinite_weights(whole_policy(), run_dir, step, "a checkpoint")
    barrier()
    path = run_dir / "checkpoints" / f"step-{step:06d}"
    state = capture()  # collective under FSDP (the optimizer's shards), so on every process
    if main:
        path = save_checkpoint(run_dir, step, whole_policy(), tokenizer, state, reference, keep)
    barrier()
    return path


def newest_for_resume(config: Config, checkpoints: list[Path], warn: Callable[[str], None]
                      ) -> tuple[Path, RunState, dict[str, torch.Tensor], Any]:
    """The newest of `checkpoints` that loads (load_newest_readable): its path, run state, the policy's
    weights as the run holds them (the whole model's; a use_peft run's adapter) and its reference snapshot
    or None."""
    def model_at(path: str):
        return models.load_model(path, config.dtype, config.trust_remote_code)

    if config.use_peft:  # a checkpoint holds the adapter only
        peft = models.import_peft("resuming a use_peft run")
        weights_at = lambda path: peft.utils.load_peft_weights(path, device="cpu")  # noqa: E731
    else:
        weights_at = lambda path: model_at(path).state_dict()  # noqa: E731
    latest, (state, weights, reference) = load_newest_readable(checkpoints, weights_at, model_at, warn)
    return latest, state, weights, reference


def parameters_finite(model) -> bool:
    norms = torch.stack([torch.linalg.vector_norm(p.detach().float()) for p in model.parameters()])
    return bool(torch.isfinite(norms).all())


def refuse_nonfinite_weights(model, run_dir: Path, step: int, what: str) -> None:
    """A RunError when `model`'s weights are not all finite: `what` (a checkpoint, the final model) is
    then never written, and the older checkpoints it would rotate out stay."""
    if not parameters_finite(model):
        kept = checkpoint_dirs(run_dir)
        raise RunError(f"not writing {what} at step {step}: the model's weights are not finite (NaN or "
                       f"inf); the last good checkpoint is {kept[-1] if kept else 'none'}. Lower learning_rate")


def save_final(run_dir: Path, step: int, whole_policy: Callable[[], Any], policy, tokenizer, merge_lora: bool,
               barrier: Callable[[], None], main: bool) -> None:
    """run_dir/model (a LoRA run: the adapter) and, with merge_lora, run_dir/model-merged: the adapters
    merged into `policy` in place (no second copy of the weights: the last thing a run does with it);
    written by the main process (`main`) after a barrier, never with non-finite weights. `whole_policy` is
    called on every process (collective under FSDP and ZeRO-3)."""
    refuse_nonfinite_weights(whole_policy(), run_dir, step, "the final model")
    barrier()
    if main:
        save_model(run_dir, whole_policy(), tokenizer)
        if merge_lora:
            save_model(run_dir, policy.merge_and_unload(), tokenizer, name="model-merged")


def nonfinite_stop(run_dir: Path, step: int, in_a_row: int, limit: int) -> RunError:
    """The error that stops a run after `limit` non-finite steps in a row."""
    kept = checkpoint_dirs(run_dir)
    return RunError(f"stopped at step {step}: {in_a_row} steps in a row had a non-finite loss or gradient "
                    f"(max_nonfinite_steps={limit}); no model was written, the last good checkpoint is "
                    f"{kept[-1] if kept else 'none'}. Lower learning_rate, or check the data and reward functions")
