"""A tool-server in its own processes for the benchmarks (not a benchmark itself: `make bench` skips it).

Why: the serving path and the rollout benchmarks measure the tool-server as it is deployed —
``dmms tools serve`` apart from its clients, ``workers`` processes on one port — so they start the
real CLI on loopback, wait until ``/readyz`` answers, and stop it afterwards.

    with served_tools(index_dir, cache_db, workers=2, env={"DMMS_TOOLS__SIMULATED_LATENCY_MS": "300"}) as (url, pid):
        ...  # token "bench"
"""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

TOKEN = "bench"


@contextmanager
def served_tools(index: Path, cache_db: Path, workers: int = 1, env: dict[str, str] | None = None,
                 start_timeout_s: float = 120.0) -> Iterator[tuple[str, int]]:
    """``(url, pid)`` of ``dmms tools serve --index index`` with its own SQLite cache, once every worker
    is ready; the server is terminated on exit."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    full_env = {**os.environ, "DMMS_PROFILE": "tiny", "DMMS_TOOLS__TOKEN": TOKEN, "DMMS_LOG_LEVEL": "WARNING",
                "DMMS_TOOLS__WORKERS": str(workers), "DMMS_TOOLS__INDEX_POLL_S": "600",
                "DMMS_TOOLS__CACHE_URL": f"sqlite:///{cache_db}", **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "components.cli", "tools", "serve", "--index", str(index),
                             "--port", str(port)], env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + start_timeout_s
        while True:
            try:
                if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                err = proc.stderr.read()[-2000:] if proc.poll() is not None and proc.stderr else "timed out"
                raise SystemExit(f"the tool-server did not start: {err}")
            time.sleep(0.2)
        if workers > 1:  # /readyz was answered by one worker: wait until the others have loaded too
            _all_ready(url, workers, deadline)
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _all_ready(url: str, workers: int, deadline: float) -> None:
    """Ready in every worker: each worker listens on its own socket and the kernel spreads new
    connections over them by address, so ``8 * workers`` answers of 200 in a row, each on a fresh
    connection, leave a worker still loading a chance under 1 in 1000 of never having been asked."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    streak = 0
    while streak < 8 * workers:
        conn = http.client.HTTPConnection(host, int(port), timeout=2)  # a new connection each time
        try:
            conn.request("GET", "/readyz")
            ok = conn.getresponse().status == 200
        except OSError:
            ok = False
        finally:
            conn.close()
        streak = streak + 1 if ok else 0
        if not ok:
            if time.monotonic() > deadline:
                raise SystemExit("the tool-server's workers did not all become ready")
            time.sleep(0.2)
