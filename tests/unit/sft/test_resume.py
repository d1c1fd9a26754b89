"""Preemption: ``dmms sft`` is SIGKILLed after its first step checkpoint is published, then started
again with the same ``--out``; it resumes from that step (global step continues, optimizer state
loaded), and no half-written checkpoint is ever visible (a version without manifest is never listed).

Run: ``.venv/bin/python -m pytest -q tests/unit/sft/test_resume.py``
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from components.agent.models import ensure_model
from components.common.checkpoints import newest_valid_checkpoint, step_checkpoints
from components.common.storage import join_uri, list_versions, open_store, verify_version
from tests.unit.sft.test_train import publish_train_set, tiny_settings

REPO = Path(__file__).resolve().parents[3]
SAVE_STEPS, MAX_STEPS = 4, 12


def _start(env: dict, out_uri: str, work: Path, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "components.cli", "sft", "--data", "vqa", "--out", out_uri,
           "--work-dir", str(work)]
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=log.open("wb"))


def _visible_versions_are_whole(store, out_uri) -> list[str]:
    refs = list_versions(store, out_uri)
    for ref in refs:
        verify_version(store, ref.uri)  # every listed version is complete and matches its manifest
    return [r.version for r in refs]


def test_sigkill_then_resume_from_newest_step(tmp_path):
    settings = tiny_settings(tmp_path, max_steps=MAX_STEPS, epochs=100)
    ensure_model(settings)
    publish_train_set(settings, n=8)
    store = open_store(settings)
    out_uri = store.uri("checkpoints", "preempted")
    env = {**os.environ, "DMMS_PROFILE": "tiny", "DMMS_STORAGE__ROOT": settings.storage.root,
           "DMMS_TRACKING__ENABLED": "false", "DMMS_MODEL__NAME_OR_PATH": settings.model.name_or_path,
           "DMMS_SFT__MAX_STEPS": str(MAX_STEPS), "DMMS_SFT__SAVE_STEPS": str(SAVE_STEPS),
           "DMMS_SFT__EPOCHS": "100", "PYTHONPATH": str(REPO)}

    first = _start(env, out_uri, tmp_path / "work1", tmp_path / "first.log")
    deadline = time.monotonic() + 240
    seen: set[str] = set()
    while time.monotonic() < deadline and first.poll() is None:
        seen.update(_visible_versions_are_whole(store, out_uri))
        if any(v.startswith("step-") for v in seen):
            break
        time.sleep(0.05)
    assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    killed_at = [s for s, _ in step_checkpoints(store, out_uri)]
    assert killed_at and max(killed_at) < MAX_STEPS and "final" not in _visible_versions_are_whole(store, out_uri)

    second = _start(env, out_uri, tmp_path / "work2", tmp_path / "second.log")
    stdout, _ = second.communicate(timeout=300)
    assert second.returncode == 0, (tmp_path / "second.log").read_text()[-3000:]
    result = json.loads(stdout)
    resumed = max(killed_at)
    assert result["resumed_from"] == join_uri(out_uri, f"step-{resumed}")
    assert result["global_step"] == MAX_STEPS
    assert f"resuming from {join_uri(out_uri, f'step-{resumed}')}" in (tmp_path / "second.log").read_text()

    # The last step checkpoint's state continues the first run's: its log history starts at step 1
    # (written by the killed process) and AdamW's step counter counts every step, not just the new ones.
    last = newest_valid_checkpoint(store, out_uri)
    assert last.version == f"step-{MAX_STEPS}"
    local = store.get_bytes(join_uri(last.uri, "trainer_state.json"))
    state = json.loads(local)
    assert state["global_step"] == MAX_STEPS
    logged = [h["step"] for h in state["log_history"] if "loss" in h]
    assert logged[0] == 1 and logged[-1] == MAX_STEPS
    opt_path = tmp_path / "optimizer.pt"
    opt_path.write_bytes(store.get_bytes(join_uri(last.uri, "optimizer.pt")))
    optimizer = torch.load(opt_path, weights_only=True)
    steps = {int(s["step"]) for s in optimizer["state"].values()}
    assert steps == {MAX_STEPS}
    # retention (DMMS_STORAGE__KEEP_STEP_CHECKPOINTS, 2): the two newest steps and final, no more
    assert set(_visible_versions_are_whole(store, out_uri)) == {"final", f"step-{MAX_STEPS}",
                                                                 f"step-{MAX_STEPS - SAVE_STEPS}"}

    # A corrupt newest step is skipped when looking for a checkpoint to resume from.
    part = Path(last.uri) / "optimizer.pt"
    part.write_bytes(b"torn")
    assert newest_valid_checkpoint(store, out_uri).version == f"step-{MAX_STEPS - SAVE_STEPS}"
