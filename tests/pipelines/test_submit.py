"""``dmms submit`` / ``dmms schedule`` fail fast and clearly without a reachable KFP host.

No KFP API server can run here (it needs Kubernetes): these tests cover the host checks; the
payload they would send is the compiled YAML checked in test_compiled.py."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from components.common.settings import load_settings
from pipelines.submit import SubmitError, kfp_cron, schedule, submit
from tests.support import free_port

DMMS = str(Path(sys.executable).parent / "dmms")


def _dmms(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "KFP_HOST"} | env
    return subprocess.run([DMMS, *args], capture_output=True, text=True, env=full_env, timeout=120)


def test_submit_without_host_names_what_to_set(monkeypatch):
    monkeypatch.delenv("KFP_HOST", raising=False)
    with pytest.raises(SubmitError, match="KFP_HOST.*DMMS_PIPELINES__KFP_HOST"):
        submit(load_settings(), "full")
    out = _dmms("submit", "--pipeline", "full", "--allow-synthetic", env={})
    assert out.returncode == 2
    assert "no Kubeflow Pipelines host: set KFP_HOST" in out.stderr
    assert "Traceback" not in out.stderr
    out = _dmms("submit", "--pipeline", "full", env={})  # real data is checked first, before any host
    assert out.returncode == 2 and "seed_vqa_uri" in out.stderr and "Traceback" not in out.stderr


def test_unreachable_host_is_reported(monkeypatch):
    host = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("KFP_HOST", host)
    with pytest.raises(SubmitError, match=f"{host} is unreachable"):
        submit(load_settings(), "full")
    with pytest.raises(SubmitError, match="unreachable"):
        schedule(load_settings(), "retrain", "0 3 * * 0")
    out = _dmms("schedule", "--pipeline", "retrain", "--cron", "0 3 * * 0", env={"KFP_HOST": host})
    assert out.returncode == 2
    assert f"Kubeflow Pipelines at {host} is unreachable" in out.stderr
    assert "Traceback" not in out.stderr


def test_cron_is_converted_or_refused():
    assert kfp_cron("0 3 * * 0") == "0 0 3 * * 0"
    assert kfp_cron("0 0 3 * * 0") == "0 0 3 * * 0"
    with pytest.raises(SubmitError, match="not a cron expression"):
        kfp_cron("every sunday")


def test_unknown_pipeline_and_parameter_are_refused():
    out = _dmms("submit", "--pipeline", "nope", env={})
    assert out.returncode == 2 and "unknown pipeline 'nope'" in out.stderr
    out = _dmms("run", "--pipeline", "smoke", "--param", "bogus=1", env={})
    assert out.returncode == 2 and "bogus=1" in out.stderr
