"""Run a pipeline with the KFP local runner on this machine: ``dmms run --pipeline smoke`` (``make run``).

Why: the same components and DAG as on the cluster, on the embedded default (local object store
folder, MLflow on SQLite, tiny model). KFP's ``SubprocessRunner(use_venv=False)`` runs each task as
a subprocess of this Python environment, in this folder. The run goes: the data stage (world →
index) → a tool-server on a free loopback port over that index, up for the rest of the run → the
main stage (datagen → sft → grpo → evaluate → promote for smoke/full) → the results from MLflow.

    result = run_local(load_settings(), "smoke", {"datagen_n": 4})
    result.table_md, result.eval_run_id, result.decision
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from components.common.settings import Settings
from pipelines.catalog import build
from pipelines.console import step_lines
from pipelines.results import collect_results, write_results

log = logging.getLogger(__name__)
DATA_OUTPUTS = ("world_uri", "train_uri", "val_uri", "test_uri", "index_uri")


class LocalRunError(RuntimeError):
    """The local run could not proceed; the message says what to change."""


@dataclass
class LocalResult:
    pipeline: str
    data: dict[str, str]
    eval_run_id: str | None = None
    table_md: str = ""
    decision: dict[str, Any] = field(default_factory=dict)
    tracking_uri: str = ""
    pipeline_root: str = ""
    results: dict[str, Any] = field(default_factory=dict)  # pipelines/results.py: before/after rows
    results_path: str = ""
    log_path: str = ""  # every task's output (pipelines/console.py)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_tools(settings: Settings, index_uri: str, ready_timeout_s: float = 120.0) -> Iterator[str]:
    """The tool-server over ``index_uri`` under uvicorn on a free loopback port; yields its URL."""
    import uvicorn

    from components.search.app import create_app

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings, index_uri), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="dmms-toolserver", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(url, ready_timeout_s, thread)
        log.info("tool-server on %s serving %s", url, index_uri)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _wait_ready(url: str, timeout_s: float, thread: threading.Thread) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            raise LocalRunError(f"the tool-server at {url} stopped before it was ready: see the log above")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise LocalRunError(f"the tool-server at {url} was not ready within {timeout_s:.0f}s (index not loadable?)")


def run_local(settings: Settings, name: str = "smoke", overrides: dict[str, Any] | None = None,
              verbose: bool = False) -> LocalResult:
    """Run pipeline ``name`` with the KFP local runner; return where the results are. Unless
    ``verbose``, each task is one line on the terminal and its output goes to ``.dmms/logs/``."""
    from kfp import local

    overrides = dict(overrides or {})
    p = build(name, settings, cluster=False)
    unknown = sorted(set(overrides) - set(p.params))
    if unknown:
        raise LocalRunError(f"unknown parameter(s) {unknown} of pipeline {name}: use {sorted(p.params)}")
    root = Path(settings.pipelines.local_root).resolve()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars between our lines
    # the local runner warns on every task that our images are not plain Python ones: true, and the
    # point of running the same components here (the tasks use this environment instead)
    warnings.filterwarnings("ignore", message="You may be attemping to run a task that uses custom")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    started_ms, t0 = int(time.time() * 1000), time.perf_counter()
    with step_lines(Path(settings.pipelines.local_root).parent / "logs", verbose) as log_path:
        data_task = p.data(**p.data_args(overrides))
        data = {k: str(data_task.outputs[k]) for k in DATA_OUTPUTS}
        wall = {"data": round(time.perf_counter() - t0, 1)}
        with serve_tools(settings, data["index_uri"]) as url:
            t1 = time.perf_counter()
            p.main(**p.main_args(data, overrides, url))
            wall["main"] = round(time.perf_counter() - t1, 1)
    result = LocalResult(name, data, tracking_uri=settings.tracking.uri, pipeline_root=str(root),
                         log_path=str(log_path))
    _collect(settings, result)
    wall["total"] = round(time.perf_counter() - t0, 1)
    result.results = collect_results(settings, started_ms, wall)
    result.results_path = str(write_results(result.results, Path(settings.pipelines.results_path)))
    return result


def _collect(settings: Settings, result: LocalResult) -> None:
    """The newest evaluation run's table and the promotion decision on it, from MLflow."""
    from components.common.tracking import client

    mlc = client(settings)
    exp = mlc.get_experiment_by_name(settings.tracking.experiment)
    if exp is None:
        return
    runs = (mlc.search_runs([exp.experiment_id], "tags.`dmms.step` = 'evaluate' and tags.`dmms.checkpoint` = 'rl'",
                            max_results=1, order_by=["attributes.start_time DESC"])  # the gated one
            or mlc.search_runs([exp.experiment_id], "tags.`dmms.step` = 'evaluate'", max_results=1,
                               order_by=["attributes.start_time DESC"]))
    if not runs:
        return
    run = runs[0]
    result.eval_run_id = run.info.run_id
    table = Path(mlc.download_artifacts(run.info.run_id, "evaluation/table.md"))
    result.table_md = table.read_text(encoding="utf-8")
    versions = mlc.search_model_versions(f"name = '{settings.tracking.model_name}'")
    for v in versions:
        if v.tags.get("dmms.eval_run_id") == run.info.run_id:
            result.decision = {"version": v.version, "decision": v.tags.get("dmms.promotion.decision"),
                               "reasons": v.tags.get("dmms.promotion.reasons")}
