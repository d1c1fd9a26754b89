"""Datagen's journal: what a run has already paid for survives a crash, so a restart pays nothing twice.

Why: a teacher is a hosted model billed per call, and a datagen run makes tens of thousands of
them. A run killed at 90% (a preempted node, an OOM, SIGKILL) must not lose them. The journal is a
folder next to the run's record (``<out>.journal/``) holding, append-only and flushed per line:

- ``teacher.jsonl`` — every teacher completion, keyed by a hash of the request (messages, image
  hashes, sampling parameters) and its occurrence number, so a restarted run REPLAYS the turns of
  trajectories that were in flight instead of asking the teacher again (:class:`JournaledGenerator`);
- ``trajectories.jsonl`` — every trajectory as it finishes, with its crops under ``images/``;
  a restarted run skips those samples (:meth:`Journal.done`);
- ``journal.json`` — the run it belongs to (seed, teacher, limits): a journal of another run is
  refused with its path, never mixed in.

A torn last line (the process died mid-write) is ignored. After the dataset is published the
journal is removed; the run's record keeps every trajectory.

    journal = Journal.open(Path("out/datagen.journal"), fingerprint={"seed": "...", "teacher": "llm"})
    generator = JournaledGenerator(teacher, journal)       # replays known completions
    journal.done()                                          # {sample_id: Trajectory} already finished
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from collections import Counter
from pathlib import Path
from typing import Any

from components.agent.generators.base import GenOutput, GenRequest
from components.agent.trajectory import Trajectory

log = logging.getLogger(__name__)


class JournalError(ValueError):
    """The journal cannot be used; the message names its path and what to do."""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if n < len(lines) - 1:  # only the last line may be torn by a crash
                raise JournalError(f"{path}:{n}: not valid JSON in the middle of the journal: it is corrupt; "
                                   f"delete {path.parent} to start the run afresh") from None
            log.warning("%s: ignoring a torn last line (the run died while writing it)", path)
    return rows


class _Appender:
    """One append-only JSONL file, one line per record, flushed and fsynced (thread-safe)."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        if path.is_file() and path.stat().st_size:
            with path.open("rb+") as fh:  # drop a torn tail so the next record starts on its own line
                data = fh.read()
                keep = data.rfind(b"\n") + 1
                fh.truncate(keep)
        self._fh = path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, separators=(",", ":")) + "\n"
        with self._lock:
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        with self._lock:
            self._fh.close()


class Journal:
    """The folder of one datagen run's journal (see the module docstring)."""

    def __init__(self, root: Path, completions: dict[str, dict[str, Any]], done: dict[str, Trajectory]):
        self.root = root
        self._completions = completions
        self._done = done
        self._teacher = _Appender(root / "teacher.jsonl")
        self._trajectories = _Appender(root / "trajectories.jsonl")
        self.replayed = 0
        self.recorded = 0

    @classmethod
    def open(cls, root: Path, fingerprint: dict[str, Any]) -> Journal:
        root = Path(root)
        header = root / "journal.json"
        if header.is_file():
            old = json.loads(header.read_text(encoding="utf-8"))
            if old != fingerprint:
                changed = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
                raise JournalError(f"the journal {root} belongs to another datagen run (differs in "
                                   f"{', '.join(changed)}): delete it, or give this run another --out")
        else:
            (root / "images").mkdir(parents=True, exist_ok=True)
            tmp = root / "journal.json.tmp"
            tmp.write_text(json.dumps(fingerprint, sort_keys=True), encoding="utf-8")
            tmp.replace(header)
        completions = {r["key"]: r["output"] for r in _read_jsonl(root / "teacher.jsonl")}
        done = {}
        for r in _read_jsonl(root / "trajectories.jsonl"):
            traj = Trajectory.model_validate(r)
            done[traj.sample_id] = traj
        if completions or done:
            log.info("journal %s: resuming with %d finished trajectories and %d teacher completions",
                     root, len(done), len(completions))
        return cls(root, completions, done)

    @property
    def has_completions(self) -> bool:
        return bool(self._completions)

    # ---- trajectories -------------------------------------------------------------------------
    def done(self) -> dict[str, Trajectory]:
        return dict(self._done)

    def images(self) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in (self.root / "images").iterdir() if p.is_file()}

    def record(self, traj: Trajectory, images: dict[str, bytes]) -> None:
        """Keep one finished trajectory (its crops first, so a recorded trajectory has its images)."""
        for ref in traj.images:
            data = images.get(ref.sha256)
            path = self.root / "images" / ref.sha256
            if ref.role == "crop" and data is not None and not path.exists():
                tmp = path.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(path)
        self._trajectories.write(json.loads(traj.model_dump_json()))
        self._done[traj.sample_id] = traj

    # ---- teacher completions ------------------------------------------------------------------
    def completion(self, key: str) -> GenOutput | None:
        out = self._completions.get(key)
        return GenOutput(**out) if out is not None else None

    def keep_completion(self, key: str, out: GenOutput) -> None:
        record = {"text": out.text, "stop_reason": out.stop_reason, "stop": out.stop}
        self._completions[key] = record
        self._teacher.write({"key": key, "output": record})

    def close(self) -> None:
        self._teacher.close()
        self._trajectories.close()

    def remove(self) -> None:
        self.close()
        shutil.rmtree(self.root, ignore_errors=True)


def request_hash(req: GenRequest) -> str:
    """What makes two teacher requests the same request: the conversation, its images, sampling."""
    h = hashlib.sha256()
    h.update(json.dumps([req.messages, req.max_new_tokens, list(req.stop), req.temperature, req.top_p],
                        sort_keys=True, default=str).encode())
    for image in req.images:
        h.update(image.tobytes() if hasattr(image, "tobytes") else bytes(image))
    return h.hexdigest()


class JournaledGenerator:
    """A teacher generator whose every completion is journaled, and replayed on a restart.

    The n-th occurrence of the same request maps to the n-th journaled answer to it, so two samples
    that happen to share a prompt keep their own answers. Failed generations are not journaled.
    """

    def __init__(self, inner: Any, journal: Journal):
        self.inner, self.journal = inner, journal
        self.name = getattr(inner, "name", "teacher")
        self.lockstep = getattr(inner, "lockstep", False)
        self.processor = getattr(inner, "processor", None)
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()

    def _key(self, req: GenRequest) -> str:
        base = request_hash(req)
        with self._lock:
            self._seen[base] += 1
            return f"{base}#{self._seen[base]}"

    async def generate(self, requests: list[GenRequest]) -> list[GenOutput]:
        keys = [self._key(r) for r in requests]
        outputs: list[GenOutput | None] = [self.journal.completion(k) for k in keys]
        todo = [i for i, o in enumerate(outputs) if o is None]
        self.journal.replayed += len(requests) - len(todo)
        if todo:
            fresh = await self.inner.generate([requests[i] for i in todo])
            for i, out in zip(todo, fresh, strict=True):
                outputs[i] = out
                if out.error is None:
                    self.journal.keep_completion(keys[i], out)
                    self.journal.recorded += 1
        return [o for o in outputs if o is not None]

    async def aclose(self) -> None:
        await self.inner.aclose()
