"""checkpoint.RunState: what a checkpoint holds besides the weights, captured from a trainer and
restored onto another unchanged; and checkpoints written before it (tests/fixtures/checkpoints-185cb9e,
made by that commit's code) still resume."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sftrl import checkpoint, runlog
from sftrl.checkpoint import RunState
from sftrl.trainer import Trainer
from sftrl.validate import load_config

from conftest import make_config

OLD = Path(__file__).resolve().parent / "fixtures" / "checkpoints-185cb9e"


def same(a, b) -> bool:
    """Equal, looking into dicts, lists, tuples, tensors and arrays."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return type(a) is type(b) and a == b


def test_a_run_state_round_trips_through_a_plain_dict_and_older_dicts_take_defaults():
    state = RunState(step=3, optimizer={"state": {}}, sampler={"epoch": 1}, method_state={"buffer": [2]},
                     rng=checkpoint.capture_rng(), reference_step=2, total_token_passes=40)
    saved = state.to_dict()
    assert list(saved)[:2] == ["step", "skipped_steps"] and same(RunState.from_dict(saved).to_dict(), saved)
    first = {key: saved[key] for key in ("step", "optimizer", "sampler", "method_state", "rng")}  # the oldest form
    old = RunState.from_dict(first)
    assert (old.skipped_steps, old.total_token_passes, old.nonfinite_in_a_row, old.warned_unscorable) == (0, 0, 0, False)
    assert old.demo_sampler is None and old.extra_optimizer is None and old.reference_step is None
    with pytest.raises(ValueError, match="no optimizer, sampler, method_state, rng"):
        RunState.from_dict({"step": 1})


def test_a_checkpoint_without_the_state_it_needs_is_damaged_and_says_what_it_lacks(tmp_path):
    (tmp_path / "step-000001").mkdir()
    torch.save({"step": 1, "optimizer": {}}, tmp_path / "step-000001" / checkpoint.TRAINER_STATE)
    with pytest.raises(checkpoint.DamagedCheckpoint, match="incomplete \\(no sampler, method_state, rng\\)"):
        checkpoint.load_checkpoint(tmp_path / "step-000001", lambda path: {}, lambda path: None)


def test_capture_then_restore_onto_a_new_trainer_gives_the_same_state(tmp_path, tiny_model_dir, even_answer_spec):
    """ReLIFT: a second optimizer and a buffer besides the run's own state; after 3 steps every part moved."""
    values = dict(method="relift", max_steps=3, sft_batch_size=2, reward_funcs=[even_answer_spec], beta=0.04)
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, **values))
    trainer.train()
    state = trainer.run_state()
    assert state.step == 3 and state.total_token_passes > 0 and state.extra_optimizer["state"]
    path = tmp_path / "state.pt"
    torch.save(state.to_dict(), path)
    loaded = RunState.from_dict(torch.load(path, weights_only=False))
    fresh = Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "other"), **values))
    assert not same(fresh.run_state().to_dict(), state.to_dict())
    torch.manual_seed(12345)  # the generators are restored too
    fresh.restore(loaded)
    assert same(fresh.run_state().to_dict(), state.to_dict())
    assert fresh.total_steps == trainer.total_steps


@pytest.mark.parametrize("method", ["relift", "sasr"])
def test_a_checkpoint_written_before_run_state_still_resumes(tmp_path, method):
    run = tmp_path / method
    shutil.copytree(OLD / method, run)
    step_2 = run / "checkpoints" / "step-000002"
    settings = yaml.safe_load((run / "config.yaml").read_text())
    settings.update(model=str(step_2), output_dir=str(run))  # the base model it was made from: any model of its shape
    (run / "config.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    written = runlog.read(run / "metrics.jsonl")
    old = RunState.from_dict(torch.load(step_2 / checkpoint.TRAINER_STATE, weights_only=False))
    assert old.step == 2 and old.total_token_passes == written[1]["total_token_passes"]

    Trainer(load_config(overrides={**settings, "resume": True})).train()
    records = runlog.read(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3] and records[:2] == written[:2]
    # The counters and the method's state went on from the checkpoint's.
    assert records[2]["total_token_passes"] == old.total_token_passes + records[2]["token_passes"]
    if method == "relift":  # its own optimizer's state was loaded (an update was made from it)
        assert old.extra_optimizer["state"] and records[2]["relift/sft_updates"] == written[1]["relift/sft_updates"] + 1
    else:  # the warm-up's gradient norm, and the reference snapshotted at step 1 (reference/)
        assert old.reference_step == 1 and "kl_ref" in records[2]
        assert records[2]["sasr/g_warmup"] == written[1]["sasr/g_warmup"]
    assert (run / "model" / "model.safetensors").exists()
