"""What a person sees while ``dmms run`` works: one line per pipeline step, the rest in a log file.

Why: the KFP local runner streams every task's output — executor JSON, warnings, each step's own
logs — hundreds of lines in which the results table drowns. :func:`step_lines` routes everything
written to ``sys.stdout`` (the runner writes its logs and the tasks' streamed output there) into
``.dmms/logs/run-<time>.log`` and prints, for each task, its name, status and duration; on a
terminal the running task's line shows its progress (pretraining and trainer steps, tqdm bars). With
``verbose`` (``dmms run -v`` or ``DMMS_VERBOSE=1``) the full stream is shown as before.

    with step_lines(Path(".dmms/logs"), verbose=False) as log_path:
        run the pipeline
"""

from __future__ import annotations

import io
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import TextIO

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_START = re.compile(r"Executing task '([^']+)'")
_END = re.compile(r"Task '([^']+)' finished with status (\w+)")
_PIPELINE = re.compile(r"Running pipeline: '([^']+)'")
# Progress the steps log: "copy pretraining step 450/1700", the trainers' "step 302/750 loss=...",
# tqdm bars ("trajectories:  32%|███▏ | 84/265").
_PROGRESS = (re.compile(r"(copy pretraining|visual pretraining) step (\d+)/(\d+)"),
             re.compile(r"()\bstep (\d+)/(\d+) loss="),
             re.compile(r"(\w[\w ]*?):\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)"))


class StepReporter(io.TextIOBase):
    """A ``sys.stdout`` stand-in: every line to the log file, a summary line per task to ``out``."""

    def __init__(self, log: TextIO, out: TextIO):
        self.log, self.out = log, out
        self._buf = ""
        self._started: dict[str, float] = {}
        self.failed: list[str] = []
        self._tty = bool(getattr(out, "isatty", lambda: False)())
        self._shown = ""  # the progress last drawn on the running task's line (a TTY only)

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        self.log.write(s)
        self._buf += s
        if "\n" in s:
            self.log.flush()  # the log is what a person tails while a long step runs
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            self._line(_ANSI.sub("", line))
        return len(s)

    def flush(self) -> None:
        self.log.flush()
        self.out.flush()

    def _line(self, line: str) -> None:
        if m := _PIPELINE.search(line):
            self.out.write(f"pipeline {m.group(1)}\n")
        elif m := _START.search(line):
            self._started[m.group(1)] = time.monotonic()
            if self._tty:  # a person watching: say what runs now; the result line overwrites it
                self.out.write(f"  {m.group(1):<28} running… (tail -f {self.log.name})")
        elif self._tty and self._started and (progress := progress_of(line)) and progress != self._shown:
            self._shown = progress
            name = next(reversed(self._started))
            took = time.monotonic() - self._started[name]
            self.out.write(f"\r\x1b[2K  {name:<28} running  {took:7.0f} s  {progress}")
        elif m := _END.search(line):
            name, status = m.group(1), m.group(2)
            took = time.monotonic() - self._started.pop(name, time.monotonic())
            if status != "SUCCESS":
                self.failed.append(name)
            self.out.write(("\r\x1b[2K" if self._tty else "") + f"  {name:<28} {status:<8} {took:7.1f} s\n")
        self.out.flush()


def progress_of(line: str) -> str | None:
    """``"copy pretraining 450/1700 (26%)"`` for a line that reports progress, else None (a tqdm
    line holds many ``\\r``-separated updates: the last one counts)."""
    line = next((part for part in reversed(line.split("\r")) if part.strip()), "")
    for pattern in _PROGRESS:
        if m := pattern.search(line):
            what, done, total = (m.group(1) or "step").strip(), int(m.group(2)), int(m.group(3))
            return f"{what} {done}/{total} ({100 * done // max(total, 1)}%)"
    return None


@contextmanager
def step_lines(log_dir: Path, verbose: bool = False) -> Iterator[Path]:
    """Route ``sys.stdout`` to a log file, one line per task to the terminal; yields the log's path.
    On an error the log's last lines are shown, so the failure is never hidden."""
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / f"run-{datetime.now().strftime('%Y%m%d-%H%M%S')}.log"
    if verbose:
        yield path
        return
    real = sys.stdout
    with path.open("w", encoding="utf-8") as log:
        reporter = StepReporter(log, real)
        sys.stdout = reporter
        try:
            yield path
        except BaseException:
            sys.stdout = real
            log.flush()
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-40:]
            real.write("\n".join(_ANSI.sub("", t) for t in tail) + f"\n(full log: {path})\n")
            raise
        finally:
            sys.stdout = real
