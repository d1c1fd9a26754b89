"""Checkpoint retention: the store keeps the newest N step checkpoints plus final, the pod's disk
none once published; resume still finds the newest valid one (a corrupt newest is skipped)."""

from __future__ import annotations

from types import SimpleNamespace

from components.common.checkpoints import (
    PublishCheckpointCallback,
    newest_valid_checkpoint,
    prune_step_checkpoints,
    step_checkpoints,
)
from components.common.settings import StorageSettings
from components.common.storage import join_uri, list_versions, open_store, publish_dir


def _ckpt(folder, step):
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(f"weights {step}".encode() * 100)
    (folder / "optimizer.pt").write_bytes(f"adam {step}".encode() * 100)
    return folder


def test_callback_publishes_deletes_locally_and_keeps_the_newest(tmp_path):
    store = open_store(StorageSettings(root=str(tmp_path / "store"), keep_step_checkpoints=2))
    out = store.uri("checkpoints", "run1")
    publish_dir(store, _ckpt(tmp_path / "final-src", 0), out, version="final")
    cb = PublishCheckpointCallback(store, out)
    args = SimpleNamespace(output_dir=str(tmp_path / "trainer"))
    for step in (1, 2, 3, 4):
        local = _ckpt(tmp_path / "trainer" / f"checkpoint-{step}", step)
        cb.on_save(args, SimpleNamespace(is_world_process_zero=True, global_step=step), None)
        assert not local.exists()                           # published, then gone from the pod's disk
    assert sorted(v.version for v in list_versions(store, out)) == ["final", "step-3", "step-4"]
    assert [s for s, _ in step_checkpoints(store, out)] == [4, 3]
    assert newest_valid_checkpoint(store, out).version == "step-4"
    # a corrupt newest is skipped on resume: the one kept before it is there to fall back to
    (tmp_path / "store" / "checkpoints" / "run1" / "step-4" / "optimizer.pt").write_bytes(b"torn")
    assert newest_valid_checkpoint(store, out).version == "step-3"


def test_prune_keeps_final_and_deletes_manifest_first(tmp_path):
    store = open_store(StorageSettings(root=str(tmp_path / "store")))
    out = store.uri("checkpoints", "run2")
    for step in (1, 2, 3):
        publish_dir(store, _ckpt(tmp_path / f"s{step}", step), out, version=f"step-{step}")
    assert prune_step_checkpoints(store, out, keep=1) == ["step-2", "step-1"]
    assert [v.version for v in list_versions(store, out)] == ["step-3"]
    assert not store.exists(join_uri(out, "step-1", "model.safetensors"))
    assert prune_step_checkpoints(store, out, keep=1) == []
