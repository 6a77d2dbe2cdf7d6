"""Two CPU processes (`torchrun --nproc_per_node 2 -m sftrl.cli train`, gloo, accelerate's DDP): SFT
logs the same per-step loss and gradient norm and ends with the same weights as one process; GRPO logs
the whole step's reward statistics; methods whose prompts decide per prompt (HPT's gate, ReLIFT's
buffer), or that draw and gather rows (GAC, UFT), or sum statistics of their own (ASFT's k3), finish
without a deadlock, and decide and train exactly as one process does. FSDP2 runs too, through tests/fsdp_on_cpu.py: accelerate turns FSDP on only
for GPUs, so that script sets the state accelerate sets there, and torch shards over gloo.

The reward (`even_answer`) is fixed by the prompt, so a prompt's decision does not depend on what was
sampled, and every group's advantage is 0: the policy-gradient terms contribute nothing and the weights
move through the SFT terms only, which depend on the data alone. So the per-step decisions must be
equal, and the SFT losses and final weights equal up to float summation order, in 1 and 2 processes.
A batch of 4 prompts gives each process 2, so in most steps one process sends all its prompts one way
while the other does not: the case that deadlocked before the collectives were made unconditional.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sftrl.trainer import Trainer
from sftrl.validate import load_config

from conftest import read_metrics

TORCHRUN = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
SRC = Path(__file__).resolve().parents[1] / "src"

SETTINGS = {
    "hpt": dict(hpt_gate=0, entropy_coef=0.0, seed=7),  # seed 7: in step 2 one process's prompts all go to SFT
    "relift": dict(sft_batch_size=2),
    "gac": dict(gac_update_every=1),
    "uft": dict(beta=0.0, entropy_coef=0.0),
    "asft": dict(),  # DFT + k3 to the reference, whose statistics are summed over the processes
}
# What must agree step by step between 1 and 2 processes (exactly, or to float precision).
EXACT = {"hpt": ["step_type", "hpt/sft_prompts", "hpt/rl_prompts", "hpt/k0_prompts", "hpt/kG_prompts"],
         "relift": ["step_type", "relift/added", "relift/sft_update", "relift/buffer_size", "relift/sft_updates"],
         "gac": ["step_type", "chord/expert_rows", "gac/updated"],
         "uft": ["step_type", "uft/hinted_prompts", "uft/hint_share"], "asft": ["step_type"]}
CLOSE = {"hpt": ["sft/loss", "loss"], "relift": ["sft/loss", "relift/sft_objective"], "gac": [], "uft": ["sft/loss"],
         "asft": ["sft/loss", "asft/k3", "dft/mean_p", "loss"]}


def overrides(method, model_dir, reward, run_dir):
    values = dict(method=method, model=str(model_dir), train_data="sandbox", max_train_examples=64, eval_data=None,
                  max_steps=4, batch_size=4, num_generations=2, max_completion_length=8, progress=False,
                  output_dir=str(run_dir), save_every=0, reward_funcs=[reward], learning_rate=1e-3,
                  sft_learning_rate=1e-3, **{"seed": 1, **SETTINGS[method]})
    return values


def cli_args(values):
    return [f"{key}={json.dumps(value) if not isinstance(value, str) else value}" for key, value in values.items()]


def run_two_processes(values, what, fsdp=False):
    """`torchrun` 2 processes of `sftrl.cli train`; with fsdp=True through tests/fsdp_on_cpu.py (FSDP2).
    Returns the processes' stderr."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    entry = [str(Path(__file__).with_name("fsdp_on_cpu.py"))] if fsdp else ["-m", "sftrl.cli"]
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", *entry, "train", *cli_args(values)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=240)
    except subprocess.TimeoutExpired as exc:  # a process waiting in a collective the other never joined
        raise AssertionError(f"2-process {what} run did not finish (deadlock?): {exc.stderr}") from exc
    assert done.returncode == 0, done.stderr[-3000:]
    if fsdp:  # the parameters were sharded (DTensors), on both processes (each reports its own, in any order)
        for rank in (0, 1):
            assert f"fsdp_on_cpu: process {rank} parameters DTensor\n" in done.stderr, done.stderr[-3000:]
    return done.stderr


@pytest.mark.float_sensitive
def test_sft_on_two_processes_ddp_and_fsdp_is_sft_on_one(tmp_path, tiny_model_dir, even_answer_spec):
    """Micro-batches of 1 row: each process accumulates 2 unsynchronised backwards, then DDP averages in
    the step's one synchronised backward; the losses are whole-step token means either way. FSDP2
    (sharded parameters, gradients and AdamW moments; forwards through the wrapped module, checkpoints
    of full state dicts at step 2) gives the same per-step values and final weights."""
    runs = {name: tmp_path / name for name in ("one", "ddp", "fsdp")}
    values = dict(overrides("hpt", tiny_model_dir, even_answer_spec, runs["one"]), method="sft", micro_batch_size=1,
                  learning_rate=1e-2, sft_learning_rate=1e-2, max_grad_norm=0.5, save_every=2)
    Trainer(load_config(overrides=values)).train()
    run_two_processes({**values, "output_dir": str(runs["ddp"])}, "sft (DDP)")
    run_two_processes({**values, "output_dir": str(runs["fsdp"])}, "sft (FSDP)", fsdp=True)
    logs = {name: [r for r in read_metrics(path) if "step_type" in r] for name, path in runs.items()}
    weights = {name: load_file(path / "model" / "model.safetensors") for name, path in runs.items()}
    assert any(r["grad_norm"] > 0.5 for r in logs["one"])  # clipping took part, so the norm compared is the global one
    assert any(not torch.equal(weights["one"][name], w_0) for name, w_0 in load_file(
        tiny_model_dir / "model.safetensors").items())  # the weights moved
    for two in ("ddp", "fsdp"):
        assert [r["step"] for r in logs[two]] == [1, 2, 3, 4]
        for a, b in zip(logs["one"], logs[two]):
            for key in ("loss", "sft/loss", "grad_norm", "sft/entropy", "sft/mean_length"):
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=5e-5), (two, a["step"], key, a[key], b[key])
        for name in weights["one"]:
            torch.testing.assert_close(weights[two][name], weights["one"][name], atol=5e-5, rtol=1e-4)
    for name in weights["one"]:
        torch.testing.assert_close(weights["fsdp"][name], weights["ddp"][name], atol=5e-5, rtol=1e-4)


def test_grpo_on_two_processes_logs_the_whole_steps_rewards(tmp_path, tiny_model_dir, even_answer_spec):
    """The reward is fixed by the prompt, so the step's reward statistics do not depend on what was sampled:
    logged over both processes' rollouts they equal one process's (process 0's share would differ)."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    values = dict(overrides("hpt", tiny_model_dir, even_answer_spec, one_dir), method="grpo", micro_batch_size=3)
    Trainer(load_config(overrides=values)).train()
    run_two_processes({**values, "output_dir": str(two_dir)}, "grpo")
    one = [r for r in read_metrics(one_dir) if "step_type" in r]
    two = [r for r in read_metrics(two_dir) if "step_type" in r]
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert len({r["reward"] for r in one}) > 1  # steps differ, so a share would show
    for a, b in zip(one, two):
        for key in ("reward", "reward_std", "frac_reward_zero_std", "frac_reward_unscorable"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), (a["step"], key, a[key], b[key])
        assert all(math.isfinite(b[key]) for key in ("loss", "entropy", "grad_norm", "completions/mean_length"))


# HPT under FSDP too: its processes run different numbers of SFT and GRPO passes (their prompts decide),
# which sharded forwards must even out (it deadlocked before the pass count was agreed up front).
@pytest.mark.parametrize("method,fsdp", [(method, False) for method in SETTINGS] + [("hpt", True)])
def test_two_processes_decide_and_train_as_one(tmp_path, tiny_model_dir, even_answer_spec, method, fsdp):
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    single = Trainer(load_config(overrides=overrides(method, tiny_model_dir, even_answer_spec, one_dir)))
    sampler = dict(single.rows.sampler.state_dict())
    single.train()
    run_two_processes(overrides(method, tiny_model_dir, even_answer_spec, two_dir),
                      f"{method} (FSDP)" if fsdp else method, fsdp=fsdp)
    one = [r for r in read_metrics(one_dir) if "step_type" in r]
    two = [r for r in read_metrics(two_dir) if "step_type" in r]
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        for key in EXACT[method]:
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        for key in CLOSE[method]:
            assert (key in a) == (key in b), (a["step"], key)
            if key in a:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)
    if method == "hpt":  # in some step one process sent all its prompts to SFT and the other did not
        single.rows.sampler.load_state_dict(sampler)
        odd = [[int(single.rows.examples[i].answer) % 2 for i in single.rows.sampler.next_batch(4)] for _ in range(4)]
        assert any(all(batch[0::2]) != all(batch[1::2]) for batch in odd), odd
        assert [r["hpt/sft_prompts"] for r in one] == [sum(batch) for batch in odd]
    if method == "relift":
        assert one[-1]["relift/sft_updates"] >= 1
    if method == "gac":
        # σ_s² comes from the demonstrations gathered from both processes; at step 1 the weights are the
        # initial ones, so it must agree. Later μ depends on Δg², which the sampled rollouts' φ enter, so the
        # runs part: only the statistics' cadence and μ's bounds are compared.
        assert one[0]["gac/measured_sigma_s2"] == pytest.approx(two[0]["gac/measured_sigma_s2"], rel=1e-4)
        assert one[0]["sft/loss"] == pytest.approx(two[0]["sft/loss"], rel=1e-4)
        assert all(0.05 <= r["gac/mu"] <= 0.9 for r in two)
        return
    w_one = load_file(one_dir / "model" / "model.safetensors")
    w_two = load_file(two_dir / "model" / "model.safetensors")
    for name in w_one:
        torch.testing.assert_close(w_one[name], w_two[name], atol=2e-5, rtol=1e-4)


FSDP_SETTINGS = {"luffy": {}, "srft": {"beta": 0.04}, "relift": {"sft_batch_size": 2}, "gac": {"gac_update_every": 1},
                 "uft": {"beta": 0.0}, "sasr": {"sasr_warmup_steps": 2, "sasr_reference": "warmup"},
                 "sft-then-grpo": {"sft_steps": 2}, "opsd": {"opsd_teacher_template": "{demonstration}|{prompt}"}}


@pytest.mark.parametrize("method", list(FSDP_SETTINGS))
def test_every_kind_of_step_finishes_under_fsdp(tmp_path, tiny_model_dir, even_answer_spec, method):
    """Demonstrations inside groups (LUFFY, SRFT with a KL reference), a second optimizer and a buffer
    (ReLIFT), gathered statistics (GAC), hinted rollouts (UFT), a reference snapshot of the sharded
    policy (SASR), a fresh optimizer between stages (SFT→GRPO), the sharded policy as its own teacher in
    another context (OPSD, score_rows): 2 FSDP2 processes finish every step."""
    values = dict(overrides("hpt", tiny_model_dir, even_answer_spec, tmp_path / "run"), method=method,
                  **FSDP_SETTINGS[method])
    run_two_processes(values, f"{method} (FSDP)", fsdp=True)
    rows = [r for r in read_metrics(tmp_path / "run") if "step_type" in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows)
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    if method == "sasr":  # the reference is a snapshot of the sharded policy taken after the warm-up
        assert "kl_ref" not in rows[0] and "kl_ref" in rows[-1]
    if method == "sft-then-grpo":  # the RL stage, with its fresh optimizer, ran
        assert [r["step_type"] for r in rows] == ["sft", "sft", "grpo", "grpo"]


def test_prefix_rft_on_two_processes_draws_and_counts_as_one(tmp_path, tiny_model_dir, even_answer_spec):
    """Prefix-RFT (uft_schedule=prefix-rft): every process draws every prompt's prefix share from the same
    stream and the counts are summed over processes, so the prefix schedule, the prefixed rollouts and
    their share of the demonstrations' tokens are the same in 1 and 2 processes. The weights are not
    compared: the prefixed rollout's sampled tokens carry advantage r (not 0) and come from each process's
    own random stream, and its prefix tokens are ranked by entropy within each process's micro-batch."""
    one_dir, two_dir = tmp_path / "one", tmp_path / "two"
    values = dict(overrides("uft", tiny_model_dir, even_answer_spec, one_dir), uft_schedule="prefix-rft",
                  uft_hint_steps=3, loss_type="dapo")
    Trainer(load_config(overrides=values)).train()
    run_two_processes({**values, "output_dir": str(two_dir)}, "uft prefix-rft")
    one = [r for r in read_metrics(one_dir) if "step_type" in r]
    two = [r for r in read_metrics(two_dir) if "step_type" in r]
    assert [r["step"] for r in two] == [1, 2, 3, 4]
    assert one[0]["uft/prefix_low"] > one[-1]["uft/prefix_low"]  # the cosine decayed
    assert all(r["uft/hinted_prompts"] == 4 for r in one)  # one prefixed rollout per prompt of the step
    for a, b in zip(one, two):
        for key in ("step_type", "uft/hinted_prompts", "uft/prefix_low"):
            assert a[key] == b[key], (a["step"], key, a[key], b[key])
        for key in ("uft/hint_share", "uft/prefixed_reward", "reward"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["step"], key, a[key], b[key])
        assert math.isfinite(b["loss"]) and math.isfinite(b["grad_norm"])


def test_two_processes_stop_together_when_the_run_directory_is_in_use(tmp_path, tiny_model_dir, even_answer_spec):
    """The main process holds the run directory (checkpoint.lock_run_dir); when another process has it, both
    processes stop with the error, rather than the second waiting in a collective for the first."""
    from sftrl.checkpoint import lock_run_dir

    run = tmp_path / "run"
    held = lock_run_dir(run)  # this test's process is the other user of the directory
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "sftrl.cli", "train",
               *cli_args(overrides("asft", tiny_model_dir, even_answer_spec, run))]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    finally:
        held.close()
    assert done.returncode != 0
    assert f"is in use by another sftrl process (pid {os.getpid()})" in done.stderr, done.stderr[-3000:]
    assert "was refused by the main process" in done.stderr, done.stderr[-3000:]
    assert not (run / "config.yaml").exists()
