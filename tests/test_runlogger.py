"""runlog.RunLogger: what a run logs goes to metrics.jsonl and the trackers from the main process only, and
printed lines go above the progress bar while it is shown."""

from types import SimpleNamespace

from sftrl import runlog


class Accelerator(SimpleNamespace):
    def log(self, numbers, step):
        self.logged.append((step, numbers))


def test_records_reach_the_file_and_the_trackers_from_the_main_process_only(tmp_path):
    main = runlog.RunLogger(tmp_path, Accelerator(is_main_process=True, log_with=["tensorboard"], logged=[]))
    other = runlog.RunLogger(tmp_path, Accelerator(is_main_process=False, log_with=["tensorboard"], logged=[]))
    record = {"step": 1, "loss": 0.5, "step_type": "sft", "sasr/updated": True, "eval/accuracy": 0.25}
    main.log(record)
    other.log({"step": 1, "loss": 9.0})
    assert runlog.read(tmp_path / "metrics.jsonl") == [record]
    assert main.accelerator.logged == [(1, {"loss": 0.5, "eval/accuracy": 0.25})] and other.accelerator.logged == []
    assert main.logged_eval(1) == {"eval/accuracy": 0.25}
    main.log({"step": 2, "loss": 0.4})
    main.keep_until(1)
    assert [r["step"] for r in runlog.read(tmp_path / "metrics.jsonl")] == [1]
    main.clear()
    assert not (tmp_path / "metrics.jsonl").exists()


def test_printed_lines_go_above_the_bar_and_the_bar_shows_the_step(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("SFTRL_PROGRESS", raising=False)
    logger = runlog.RunLogger(tmp_path, Accelerator(is_main_process=True, log_with=None, logged=[]))
    logger.print("before")
    logger.advance({"step_type": "sft", "loss": 1.0})  # no bar: nothing to show
    logger.open_bar(2, "sft", enabled=True, initial=0)
    logger.print("during")
    logger.advance({"step_type": "sft", "loss": -1e-17, "grad_norm": 2.0})
    logger.advance({"step_type": "grpo", "loss": 0.123456})
    logger.close_bar()
    out, err = capsys.readouterr()
    assert out == "before\n" and err.startswith("during\n")  # captured output is no terminal: lines, not a bar
    assert "sft: 2/2 step (100%)" in err and "step=grpo loss=0.123 |g|=2" in err
    assert "-0" not in err  # numbers through formatting.number
    runlog.RunLogger(tmp_path, Accelerator(is_main_process=False, log_with=None, logged=[])).print("not shown")
    assert capsys.readouterr() == ("", "")
