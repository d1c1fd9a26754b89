"""Send a pipeline to Kubeflow Pipelines: ``dmms submit`` (one run) and ``dmms schedule`` (recurring).

    run_id = submit(load_settings(), "full", run_name="full-2026-11-23")
    job_id = schedule(load_settings(), "retrain", cron="0 3 * * 0")

The host comes from ``--host``, else ``KFP_HOST``, else ``DMMS_PIPELINES__KFP_HOST``. Before anything
is compiled the host is probed with a short timeout (``DMMS_PIPELINES__CONNECT_TIMEOUT_S``), so an
unset or unreachable host fails fast with a message saying what to set. The run joins the
experiment ``DMMS_PIPELINES__EXPERIMENT``, runs as ``DMMS_PIPELINES__SERVICE_ACCOUNT`` and keeps its
artifacts under ``DMMS_PIPELINES__PIPELINE_ROOT``.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import httpx

from components.common.settings import Settings, env_name
from pipelines.compile import compile_one

log = logging.getLogger(__name__)


class SubmitError(RuntimeError):
    """Submitting cannot proceed; the message says what to set or fix."""


def resolve_host(settings: Settings, host: str | None = None) -> str:
    host = host or os.environ.get("KFP_HOST") or settings.pipelines.kfp_host
    if not host:
        raise SubmitError(f"no Kubeflow Pipelines host: set KFP_HOST (e.g. KFP_HOST=http://localhost:8080 after "
                          f"`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`) or "
                          f"{env_name('pipelines', 'kfp_host')}")
    if "://" not in host:
        host = f"http://{host}"
    return host.rstrip("/")


def check_reachable(host: str, timeout_s: float) -> None:
    """Fail fast with a clear message if nothing answers HTTP at ``host``."""
    try:
        httpx.get(f"{host}/apis/v2beta1/healthz", timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise SubmitError(f"Kubeflow Pipelines at {host} is unreachable ({type(exc).__name__}: {exc}): check "
                          f"KFP_HOST and that the API is up (kubectl -n kubeflow get svc ml-pipeline-ui)") from None


def _client(settings: Settings, host: str | None):
    import kfp

    url = resolve_host(settings, host)
    check_reachable(url, settings.pipelines.connect_timeout_s)
    return kfp.Client(host=url, namespace=settings.pipelines.namespace)


def submit(settings: Settings, name: str, run_name: str | None = None, params: dict[str, Any] | None = None,
           host: str | None = None) -> str:
    """Compile ``name`` and start one run of it; return the KFP run id."""
    p = settings.pipelines
    client = _client(settings, host)
    with tempfile.TemporaryDirectory(prefix="dmms-submit-") as tmp:
        path = compile_one(name, settings, Path(tmp))
        run = client.create_run_from_pipeline_package(
            str(path), arguments=params or {}, run_name=run_name or f"dmms-{name}",
            experiment_name=p.experiment, namespace=p.namespace, pipeline_root=p.pipeline_root,
            service_account=p.service_account)
    log.info("submitted %s as run %s", name, run.run_id)
    return run.run_id


def kfp_cron(cron: str) -> str:
    """KFP wants six cron fields (seconds first): ``"0 3 * * 0"`` → ``"0 0 3 * * 0"``."""
    fields = cron.split()
    if len(fields) == 5:
        return " ".join(["0", *fields])
    if len(fields) == 6:
        return " ".join(fields)
    raise SubmitError(f"CRON={cron!r} is not a cron expression: use 5 fields (min hour day month weekday), "
                      "e.g. CRON=\"0 3 * * 0\"")


def schedule(settings: Settings, name: str, cron: str, job_name: str | None = None,
             params: dict[str, Any] | None = None, host: str | None = None) -> str:
    """Create a recurring run of ``name`` on ``cron``; return the recurring run id."""
    p = settings.pipelines
    expression = kfp_cron(cron)
    client = _client(settings, host)
    experiment = client.create_experiment(name=p.experiment, namespace=p.namespace)
    with tempfile.TemporaryDirectory(prefix="dmms-schedule-") as tmp:
        path = compile_one(name, settings, Path(tmp))
        job = client.create_recurring_run(
            experiment_id=experiment.experiment_id, job_name=job_name or f"dmms-{name}-recurring",
            cron_expression=expression, pipeline_package_path=str(path), params=params or {},
            pipeline_root=p.pipeline_root, service_account=p.service_account, max_concurrency=1,
            no_catchup=True)
    log.info("scheduled %s on %r as %s", name, expression, job.recurring_run_id)
    return job.recurring_run_id
