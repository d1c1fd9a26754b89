"""Input/output plumbing the KFP component bodies share (no kfp import, no step logic).

Why: a component receives URIs (local paths in the embedded default, ``s3://`` on the cluster) but
some cores read local folders (benchmarks, model checkpoints). ``local_dir`` makes a local copy when
needed; ``bind_run`` exports the KFP run id so every MLflow run of the step is tagged with it
(``components.common.tracking`` reads ``KFP_RUN_ID``; KFP v2 launchers set only the pod name).

    settings = bind_run(run_id)                   # load_settings() with KFP_RUN_ID exported
    path = local_dir(settings, uri, tmp)          # a folder on this machine holding uri's files
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from components.common.settings import Settings, load_settings
from components.common.storage import MANIFEST, fetch_version, is_s3, join_uri, open_store

log = logging.getLogger(__name__)


def bind_run(run_id: str) -> Settings:
    """Export the pipeline run id for the tracking tags and return the settings from the env."""
    if run_id:
        os.environ["KFP_RUN_ID"] = run_id
    return load_settings()


def scratch_uri(settings: Settings, run_id: str, *parts: str) -> str:
    """Where a run keeps its temporary objects (the exit handler deletes ``tmp/<run_id>``)."""
    return open_store(settings).uri("tmp", run_id or "local", *parts)


def local_dir(settings: Settings, uri: str, tmp: str | Path) -> Path:
    """A local folder with the files at ``uri``: the folder itself when local; a version
    (``manifest.json``) fetched and verified, or a plain prefix downloaded, when remote."""
    if not is_s3(uri):
        path = Path(uri.removeprefix("file://"))
        if not path.exists():
            raise FileNotFoundError(f"{uri} does not exist: pass the URI an earlier step printed")
        return path
    store = open_store(settings)
    dest = Path(tmp) / Path(uri.rstrip("/")).name
    if store.exists(join_uri(uri, MANIFEST)):
        return fetch_version(store, uri, dest)
    return store.download_dir(uri, dest)


def local_model(settings: Settings, model: str, tmp: str | Path) -> str:
    """A loadable model: a store URI is made local; a hub id or a local folder is returned as is."""
    if is_s3(model):
        return str(local_dir(settings, model, tmp))
    return model


def local_benchmarks(settings: Settings, specs: list[str], tmp: str | Path) -> list[str]:
    """``NAME=URI`` benchmark specs with every URI made local (``evaluate`` reads folders)."""
    out = []
    for i, spec in enumerate(specs):
        name, sep, uri = spec.rpartition("=")
        folder = local_dir(settings, uri, Path(tmp) / f"bench{i}")
        out.append(f"{name}={folder}" if sep else str(folder))
    return out
