"""mixed_precision on a CPU run: bf16 is opt-in and refused in one line on a CPU without bfloat16
instructions; auto stays float32 there; a GPU run is never refused for the CPU it sits on."""

import json

import pytest
import torch
from accelerate.state import AcceleratorState

from sftrl import hardware
from sftrl.errors import ConfigError
from sftrl.validate import check_precision, check_processes, load_config
from test_bad_input import fails_cleanly, train_args


@pytest.fixture()
def fresh_accelerator_state():
    """accelerate keeps one mixed-precision setting per process (a second Accelerator asking for another
    raises): these tests start from none and leave none behind for the float32 runs of other tests."""
    AcceleratorState._reset_state()
    yield
    AcceleratorState._reset_state()


def cpu_bf16(monkeypatch, supported: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(hardware, "cpu_bf16_supported", lambda: supported)
    monkeypatch.setattr(hardware, "cpu_name", lambda: "Test CPU 9000")


def test_bf16_refused_in_one_line_on_a_cpu_without_bf16_instructions(monkeypatch):
    cpu_bf16(monkeypatch, False)
    config = load_config(overrides={"mixed_precision": "bf16"})  # the config itself is valid (GPU recipes use it)
    for check in (lambda: check_precision(config), lambda: check_processes(config, 1, "ddp", {})):
        with pytest.raises(ConfigError) as error:
            check()
        message = str(error.value)
        assert message.startswith("mixed_precision: bf16 on a CPU run needs bfloat16 instructions") and "\n" not in message
        assert "Test CPU 9000" in message and "mixed_precision=no" in message


def test_bf16_accepted_where_the_cpu_has_it_or_the_run_is_on_cuda(monkeypatch):
    config = load_config(overrides={"mixed_precision": "bf16"})
    check_precision(config, cuda=False, cpu_bf16=True)
    check_precision(config, cuda=True, cpu_bf16=False)  # a GPU run: the CPU's instructions do not matter
    cpu_bf16(monkeypatch, True)
    check_precision(config)
    check_processes(config, 1, "ddp", {})


@pytest.mark.parametrize("precision", ["auto", "no", "fp16"])
def test_other_settings_are_never_refused_for_the_cpu(monkeypatch, precision):
    cpu_bf16(monkeypatch, False)
    check_precision(load_config(overrides={"mixed_precision": precision}))


def test_the_detector_answers_and_names_the_cpu():
    assert isinstance(hardware.cpu_bf16_supported(), bool)
    assert hardware.cpu_name().strip()
    assert isinstance(hardware.cpu_flags(), set)


def test_sftrl_train_refuses_bf16_on_such_a_cpu_before_anything_is_written(tmp_path, tiny_model_dir, capsys,
                                                                           monkeypatch, fresh_accelerator_state):
    cpu_bf16(monkeypatch, False)
    fails_cleanly(capsys, tmp_path, train_args(tmp_path, tiny_model_dir, "mixed_precision=bf16"),
                  "mixed_precision: bf16 on a CPU run", "Test CPU 9000")
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    # refused before the accelerator is made: accelerate would keep bf16 for the rest of the process
    assert AcceleratorState._shared_state.get("_mixed_precision") is None


def test_sftrl_compare_refuses_it_before_any_run_starts(tmp_path, capsys, monkeypatch):
    cpu_bf16(monkeypatch, False)
    fails_cleanly(capsys, tmp_path, ["compare", "--methods", "sft", "--seeds", "0", "-o", tmp_path / "cmp",
                                     "mixed_precision=bf16"], "mixed_precision: bf16 on a CPU run")
    assert not (tmp_path / "cmp").exists()


@pytest.mark.parametrize("precision, expected", [("bf16", "bf16"), ("auto", "no")])
def test_where_the_cpu_has_bf16_it_trains_under_bf16_only_when_asked(tmp_path, tiny_model_dir, monkeypatch,
                                                                     fresh_accelerator_state, precision, expected):
    """The detector says yes (monkeypatched: this may run on a CPU without it, where torch emulates bf16,
    slowly but correctly): mixed_precision=bf16 reaches accelerate's autocast; auto stays float32."""
    from sftrl.trainer import Trainer

    cpu_bf16(monkeypatch, True)
    config = load_config(overrides={"model": str(tiny_model_dir), "method": "sft", "max_train_examples": 16,
                                    "eval_data": None, "max_steps": 1, "batch_size": 4, "max_completion_length": 8,
                                    "progress": False, "output_dir": str(tmp_path / "run"), "mixed_precision": precision})
    trainer = Trainer(config)
    assert trainer.accelerator.mixed_precision == expected
    trainer.train()
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses and all(loss == loss and loss > 0 for loss in losses)
