"""Runs that stop, break or start from a messy directory: restarts before the first checkpoint, damaged
checkpoints, cut-off metrics lines, non-finite steps, long demonstrations, and evaluation that is graded
by the task's verifier whatever the training reward says."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from sftrl.errors import RunError
from sftrl.evaluate import evaluate_accuracy
from sftrl.sandbox.task import verify
from sftrl.trainer import Trainer

from conftest import comparable, files_of, make_config


def strict_records(run_dir):
    """metrics.jsonl read as strict JSON: NaN or Infinity anywhere fails the test."""
    def reject(constant):
        raise AssertionError(f"{constant} in metrics.jsonl")

    return [json.loads(line, parse_constant=reject) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(a, b):
    assert [r["step"] for r in a] == [r["step"] for r in b]
    for x, y in zip(comparable(a), comparable(b)):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == (pytest.approx(y[key], rel=1e-5, abs=1e-7) if isinstance(x[key], float) else y[key]), key


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_killed_before_its_first_checkpoint_starts_again_cleanly(tmp_path, tiny_model_dir, resume):
    common = dict(method="sft", max_steps=3, save_every=0)
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "full"), **common)).train()
    full = strict_records(tmp_path / "full")
    killed = tmp_path / "killed"  # what kill -9 at step 2 leaves: the config and two steps of metrics, one cut off
    killed.mkdir()
    shutil.copy(tmp_path / "full" / "config.yaml", killed / "config.yaml")
    lines = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    (killed / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:25])
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(killed), resume=resume, **common)).train()
    assert_same_metrics(full, strict_records(killed))
    torch.testing.assert_close(load_file(killed / "model" / "model.safetensors"),
                               load_file(tmp_path / "full" / "model" / "model.safetensors"))


def truncate_state(checkpoints):
    state = checkpoints / "step-000003" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:100])  # cut off mid-write by a full disk, say


def remove_state(checkpoints):
    (checkpoints / "step-000003" / "trainer_state.pt").unlink()


def add_empty_newer(checkpoints):
    (checkpoints / "step-000004").mkdir()  # e.g. a copy that never finished


# (damage, the checkpoint it spoils, what the warning says is wrong, the step resumed from, steps redone)
DAMAGES = [(truncate_state, "step-000003", "trainer_state.pt is truncated or damaged (100 bytes; ", 2, "1 step "),
           (remove_state, "step-000003", "trainer_state.pt is missing", 2, "1 step "),
           (add_empty_newer, "step-000004", "the folder is empty", 3, "1 step ")]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before_and_says_why(tmp_path, tiny_model_dir, capsys):
    common = dict(method="sft", max_steps=4, save_every=1, save_total_limit=3)
    full_dir = tmp_path / "full"
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(full_dir), **common)).train()
    full = strict_records(full_dir)
    lines = (full_dir / "metrics.jsonl").read_text().splitlines()
    capsys.readouterr()
    for damage, spoiled, what, resumed, redone in DAMAGES:
        part = tmp_path / f"part-{damage.__name__}"
        part.mkdir()
        shutil.copytree(full_dir / "checkpoints", part / "checkpoints")
        shutil.copy(full_dir / "config.yaml", part / "config.yaml")
        damage(part / "checkpoints")
        (part / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][:40])  # and a cut-off last line
        Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(part), resume=True, **common)).train()
        out = capsys.readouterr().out
        # The skipped checkpoint, what is wrong with it, and the cost, each said once.
        assert f"warning: skipped checkpoint {part / 'checkpoints' / spoiled}: {what}" in out, out
        assert out.count("skipped checkpoint") == 1, out
        older = part / "checkpoints" / f"step-{resumed:06d}"
        assert (f"warning: resuming from {older} (step {resumed}), not from the newest checkpoint "
                f"{part / 'checkpoints' / spoiled}: {redone}will be trained again") in out, out
        assert f"resumed from {older} at step {resumed}" in out
        assert_same_metrics(full, strict_records(part))
    part = tmp_path / "part-truncate_state"
    # Every checkpoint damaged: one line naming each, nothing changed.
    assert [p.name for p in sorted((part / "checkpoints").iterdir())] == ["step-000001", "step-000002", "step-000003"]
    for checkpoint in (part / "checkpoints").iterdir():
        (checkpoint / "model.safetensors").write_bytes(b"not weights")
    (part / "summary.json").unlink()
    before = files_of(part)
    with pytest.raises(RunError, match="no checkpoint in .* can be loaded: step-000003 .*; step-000002 .*; step-000001"):
        Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(part), resume=True, **common)).train()
    assert files_of(part) == before


def poison(monkeypatch, bad_steps, mode="grad"):
    """Make the SFT backward of the given 1-based steps non-finite: a NaN gradient, or a NaN loss."""
    original = Trainer.sft_backward

    def sft_backward(self, examples, **kwargs):
        metrics = original(self, examples, **kwargs)
        if self.step + 1 in bad_steps:
            if mode == "grad":
                next(self.model.parameters()).grad.view(-1)[0] = float("nan")
            else:  # the loss the step back-propagated (what `loss` logs) is not finite
                self.terms.loss += float("inf")  # Terms.loss: what take_loss sums
        return metrics

    monkeypatch.setattr(Trainer, "sft_backward", sft_backward)


def test_a_non_finite_step_is_skipped_and_reported(tmp_path, tiny_model_dir, monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=4, output_dir=str(run)))
    poison(monkeypatch, {2}, "grad")
    poison(monkeypatch, {3}, "loss")
    seen = []
    original_step = Trainer.optimizer_step

    def optimizer_step(self, *args, **kwargs):
        before = [p.detach().clone() for p in self.policy.parameters()]
        moments = {k: v.clone() for k, v in self.optimizer.state[next(self.model.parameters())].items()} \
            if self.optimizer.state else {}
        result = original_step(self, *args, **kwargs)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, self.policy.parameters()))
        same_moments = all(torch.equal(v, self.optimizer.state[next(self.model.parameters())][k])
                           for k, v in moments.items())
        seen.append((result[1], unchanged, same_moments))
        return result

    monkeypatch.setattr(Trainer, "optimizer_step", optimizer_step)
    summary = trainer.train()
    assert [taken for taken, _, _ in seen] == [True, False, False, True]
    assert [unchanged for taken, unchanged, _ in seen if not taken] == [True, True]  # no update on a skipped step
    assert all(same for taken, _, same in seen if not taken)  # AdamW's moments untouched too
    records = [r for r in strict_records(run) if "step_type" in r]
    assert [r["skipped_steps"] for r in records] == [0, 1, 2, 2] and summary["skipped_steps"] == 2
    assert records[1]["grad_norm"] is None and records[2]["loss"] is None  # null, never NaN/Infinity
    assert all(torch.isfinite(v).all() for v in load_file(run / "model" / "model.safetensors").values())


def test_non_finite_steps_in_a_row_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path, tiny_model_dir,
                                                                                   monkeypatch):
    run = tmp_path / "run"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=10, save_every=2,
                                  max_nonfinite_steps=3, output_dir=str(run)))
    poison(monkeypatch, {5, 6, 7, 8, 9, 10}, "grad")
    good = {}
    original_save = Trainer.save_checkpoint

    def save_checkpoint(self):
        good[self.step] = {k: v.clone() for k, v in self.policy.state_dict().items()}
        return original_save(self)

    monkeypatch.setattr(Trainer, "save_checkpoint", save_checkpoint)
    with pytest.raises(RunError, match=r"stopped at step 7: 3 steps in a row had a non-finite loss or gradient "
                                       r"\(max_nonfinite_steps=3\); no model was written, the last good checkpoint is "
                                       r".*step-000006"):
        trainer.train()
    assert not (run / "model").exists() and not (run / "summary.json").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    saved = load_file(run / "checkpoints" / "step-000006" / "model.safetensors")
    for name, value in saved.items():
        assert torch.isfinite(value).all()
        torch.testing.assert_close(value, good[4][name])  # steps 5 and 6 were skipped: the weights of step 4
    assert [r["skipped_steps"] for r in strict_records(run) if "step_type" in r] == [0, 0, 0, 0, 1, 2, 3]


def test_weights_that_are_not_finite_are_never_saved(tmp_path, tiny_model_dir):
    run = tmp_path / "run"
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="sft", max_steps=2, save_every=1, output_dir=str(run)))
    trainer.start()
    trainer.save_checkpoint()
    before = files_of(run)
    with torch.no_grad():
        next(trainer.policy.parameters()).view(-1)[0] = float("inf")
    with pytest.raises(RunError, match="weights are not finite .* the last good checkpoint is .*step-000000"):
        trainer.save_checkpoint()
    with pytest.raises(RunError, match="not writing the final model"):
        trainer.save_final()
    assert files_of(run) == before


LONG_DEMOS = [("Compute 1+2.", "3", "1+2=3\n\\boxed{3}"),  # 16 characters + EOS
              ("Compute 10+20+30.", "60", "10+20=30\n30+30=60\nso the answer is\n\\boxed{60}"),
              ("Compute 2+2.", "4", "2+2=4\n\\boxed{4}"),
              ("Compute 40+50+60.", "150", "40+50=90\n90+60=150\nso the answer is\n\\boxed{150}")]


@pytest.fixture()
def long_demo_data(tmp_path):
    path = tmp_path / "demos.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a, "demonstration": d}) + "\n" for p, a, d in LONG_DEMOS))
    return path


@pytest.mark.parametrize("mode", ["cut", "drop", "keep"])
def test_demonstrations_longer_than_the_completion_limit_are_counted_and_handled_as_asked(
        tmp_path, tiny_model_dir, long_demo_data, capsys, mode):
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="luffy", train_data=str(long_demo_data),
                                  reward_funcs=["sandbox"], max_completion_length=20, demo_truncation=mode,
                                  batch_size=2))
    out = capsys.readouterr().out
    assert "2 of 4 demonstrations are longer than max_completion_length=20 tokens (the longest has 48)" in out
    assert f"demo_truncation={mode}" in out
    assert trainer.demo_report == {"total": 4, "longer_than_max_completion_length": 2, "demo_truncation": mode}
    long = [e for e in trainer.rows.examples if len(e.demonstration) > 20]
    if mode == "drop":
        assert len(trainer.rows.examples) == 2 and not long
        return
    ids, cut = trainer.demonstration_ids(long[0])
    assert (len(ids), cut) == ((20, True) if mode == "cut" else (len(long[0].demonstration) + 1, False))
    rollouts = trainer.rollouts(long, "replace")
    # LUFFY grades the demonstration inside its group: a cut one lost its \boxed{} answer
    assert rollouts.metrics["demo/reward"] == (0.0 if mode == "cut" else 1.0)


def test_evaluation_is_graded_by_the_task_verifier_not_the_training_reward(tmp_path, tiny_model_dir):
    yes = tmp_path / "yes.py"
    yes.write_text("def always_right(prompts, completions, **kwargs):\n    return [1.0] * len(completions)\n")
    trainer = Trainer(make_config(tmp_path, tiny_model_dir, method="grpo", reward_funcs=[f"{yes}:always_right"],
                                  eval_data="sandbox:test", max_eval_examples=6))
    metrics = trainer.evaluate()
    texts = evaluate_accuracy(trainer.policy, trainer.tokenizer, trainer.eval_examples, "sandbox",
                              max_new_tokens=trainer.config.max_completion_length)["completions"]
    by_hand = sum(verify(t, e.answer) for t, e in zip(texts, trainer.eval_examples)) / len(texts)
    assert metrics["eval/accuracy"] == by_hand < 1.0  # the training reward would have said 1.0


def _held_by_subprocess(tmp_path, code):
    """Start a Python process running `code` (which prints 'ready' when set); return it once ready."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_a_run_directory_in_use_by_another_process_is_refused_until_that_process_dies(tmp_path, tiny_model_dir,
                                                                                     capsys):
    """Two processes never train into one directory (a rerun while the first still runs, or an orphan); the
    lock goes with its process, kill -9 included."""
    from sftrl.cli import main

    run = tmp_path / "run"
    holder = _held_by_subprocess(tmp_path, "import pathlib, time; from sftrl.checkpoint import lock_run_dir; "
                                           f"h = lock_run_dir(pathlib.Path({str(run)!r})); print('ready', flush=True); "
                                           "time.sleep(120)")
    args = ["train", f"model={tiny_model_dir}", "train_data=sandbox", "eval_data=null", "max_steps=1", "method=sft",
            "sft_batch_size=4", "max_completion_length=8", f"output_dir={run}", "progress=false"]
    try:
        assert main(args) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("sftrl: error: ")]
        assert errors == [f"sftrl: error: output_dir: {run} is in use by another sftrl process (pid {holder.pid}); "
                          "wait for it to end or choose another output_dir"]
        assert not (run / "config.yaml").exists() and not (run / "metrics.jsonl").exists()  # nothing written
    finally:
        holder.kill()  # SIGKILL: the system drops the lock with the process
        holder.wait()
    assert main(args) == 0
    assert (run / "summary.json").exists()


def test_compare_workers_die_with_the_compare(tmp_path):
    """kill -9 of a parallel compare takes its worker processes with it, so none goes on writing a run
    directory that a rerun resumes (Linux; elsewhere the run directory's lock refuses the rerun)."""
    import os
    import signal
    import sys
    import time

    if not sys.platform.startswith("linux"):
        pytest.skip("PR_SET_PDEATHSIG is Linux's")
    parent = _held_by_subprocess(tmp_path, (
        "import os, time\n"
        "from concurrent.futures import ProcessPoolExecutor\n"
        "from multiprocessing import get_context\n"
        "from sftrl.compare import _die_with_parent\n"
        "if __name__ == '__main__':\n"
        "    pool = ProcessPoolExecutor(1, mp_context=get_context('spawn'), initializer=_die_with_parent,\n"
        "                               initargs=(os.getpid(),))\n"
        "    worker = pool.submit(os.getpid).result()\n"
        "    pool.submit(time.sleep, 120)\n"
        "    print('ready', worker, flush=True)\n"
        "    time.sleep(120)\n").replace("print('ready', worker", "print('ready', flush=True); print(worker"))
    worker = int(parent.stdout.readline())

    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as stat:
                return stat.read().split(")")[-1].split()[0] != "Z"  # a zombie is dead, waiting to be reaped
        except FileNotFoundError:
            return False

    assert alive(worker)
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 20
    while alive(worker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(worker)


def test_a_run_killed_with_sigkill_resumes_to_the_run_that_was_never_killed(tmp_path, tiny_model_dir):
    """A real kill -9 (not a simulated leftover): `sftrl train` in a subprocess is killed once its first
    checkpoint exists; resume=true then ends with the weights and metrics of an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    import yaml

    common = dict(method="grpo", max_steps=40, save_every=2, seed=3)
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "full"), **common)).train()
    killed = tmp_path / "killed"
    config = make_config(tmp_path, tiny_model_dir, output_dir=str(killed), **common)
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(config.to_dict()))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "sftrl.cli", "train", "--config", str(tmp_path / "recipe.yaml")],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (killed / "checkpoints" / "step-000002").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "summary.json").exists(), "the run finished before it could be killed"
    Trainer(make_config(tmp_path, tiny_model_dir, output_dir=str(killed), resume=True, **common)).train()
    assert_same_metrics(strict_records(tmp_path / "full"), strict_records(killed))
    torch.testing.assert_close(load_file(killed / "model" / "model.safetensors"),
                               load_file(tmp_path / "full" / "model" / "model.safetensors"))
