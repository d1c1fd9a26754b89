"""``dmms run``'s console: the KFP local runner's stream goes to a log file, one line per task to
the terminal; on an error the log's tail is shown."""

from __future__ import annotations

import io
import sys

import pytest

from pipelines.console import step_lines

RUNNER_OUTPUT = """\x1b[36m'datagen-op'\x1b[0m
12:00:01.000 - INFO - Running pipeline: \x1b[36m'dmms-smoke-train'\x1b[0m
12:00:01.100 - INFO - Executing task \x1b[36m'datagen-op'\x1b[0m
12:00:01.100 - INFO - Streamed logs:
    {"executor": "json", "lots": "of it"}
    WARNING some library warning
12:00:03.100 - INFO - Task \x1b[36m'datagen-op'\x1b[0m finished with status \x1b[32mSUCCESS\x1b[0m
12:00:03.200 - INFO - Executing task \x1b[36m'sft-op'\x1b[0m
12:00:05.100 - INFO - Task \x1b[36m'sft-op'\x1b[0m finished with status \x1b[31mFAILURE\x1b[0m
"""


def test_one_line_per_task_and_everything_in_the_log(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    with step_lines(tmp_path, verbose=False) as log_path:
        print(RUNNER_OUTPUT, end="")
    shown = terminal.getvalue().splitlines()
    assert shown[0] == "pipeline dmms-smoke-train"
    assert shown[1].split()[:2] == ["datagen-op", "SUCCESS"] and shown[1].endswith(" s")
    assert shown[2].split()[:2] == ["sft-op", "FAILURE"]
    assert len(shown) == 3
    assert "executor" in log_path.read_text() and "some library warning" in log_path.read_text()
    assert sys.stdout is terminal


def test_an_error_shows_the_log_tail_and_where_it_is(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    with pytest.raises(RuntimeError), step_lines(tmp_path) as log_path:
        print("Traceback: the step broke because X")
        raise RuntimeError("Task 'sft-op' finished with status FAILURE")
    assert "the step broke because X" in terminal.getvalue() and str(log_path) in terminal.getvalue()


def test_verbose_streams_everything(tmp_path, monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stdout", terminal)
    with step_lines(tmp_path, verbose=True):
        print(RUNNER_OUTPUT, end="")
    assert "executor" in terminal.getvalue()


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_sees_the_running_steps_progress(tmp_path, monkeypatch):
    from pipelines.console import progress_of

    assert progress_of("    2026 INFO components.sft.pretrain: copy pretraining step 450/1700 loss 1.97") == \
        "copy pretraining 450/1700 (26%)"
    assert progress_of("INFO components.common.checkpoints: step 302/750 loss=0.32 grad_norm=1.5") == \
        "step 302/750 (40%)"
    assert progress_of("    trajectories:  32%|███▏      | 84/265 [00:11<00:29,  6.15traj/s]") == \
        "trajectories 84/265 (31%)"
    assert progress_of("eval:  10%|█ | 1/10 [00:01]\reval:  20%|██ | 2/10 [00:02]\r") == "eval 2/10 (20%)"
    assert progress_of("WARNING some library warning") is None
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    with step_lines(tmp_path, verbose=False):
        print("12:00:03.200 - INFO - Executing task \x1b[36m'sft-op'\x1b[0m")
        print("    INFO components.sft.pretrain: copy pretraining step 50/100 loss 2.0")
        print("12:00:05.100 - INFO - Task \x1b[36m'sft-op'\x1b[0m finished with status \x1b[32mSUCCESS\x1b[0m")
    shown = terminal.getvalue()
    assert "copy pretraining 50/100 (50%)" in shown
    assert shown.rstrip().splitlines()[-1].split("\x1b[2K")[-1].split()[:2] == ["sft-op", "SUCCESS"]
