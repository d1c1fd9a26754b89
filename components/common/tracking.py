"""MLflow tracking and model registry, the one way every step records what it did.

Why: datagen, SFT, GRPO, evaluation and promotion each open ONE MLflow run with the same tags
(profile, step, git sha, KFP run id) and the same masked settings as params, and the registry holds
small *pointers* to checkpoints (``checkpoint.json`` with the object-store URI and manifest sha256),
not 15 GB of weights: checkpoints already live content-addressed in the object store (docs/design.md §5).

Use::

    from components.common.settings import load_settings
    from components.common.tracking import tracked_run, register_checkpoint, set_alias, resolve_alias

    settings = load_settings()
    with tracked_run(settings, step="sft") as run:
        run.log_metrics({"loss": 0.5}, step=10)
        version = register_checkpoint(settings, run.run_id, "s3://store/checkpoints/r1/final", sha)
    set_alias(settings, "champion", version)          # tags the version with the one it replaced
    resolve_alias(settings, "champion").checkpoint_uri

``settings.tracking.uri`` is ``sqlite:///.dmms/mlflow.db`` by default (the folder is created; its
artifacts go next to it in ``.dmms/mlartifacts``) or any ``http(s)://`` MLflow server. With
``DMMS_TRACKING__ENABLED=false`` runs log nothing. HTTP timeouts and bounded retries with backoff are
MLflow's own (``MLFLOW_HTTP_REQUEST_TIMEOUT``, ``MLFLOW_HTTP_REQUEST_MAX_RETRIES``).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from components.common.launch import is_main_process, process_rank
from components.common.settings import Settings

if TYPE_CHECKING:  # mlflow is imported where it is used: training ranks with tracking off need none of it
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000  # mlflow.utils.validation.MAX_PARAM_VAL_LENGTH
MAX_TAG_LEN = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
POINTER_FILE = "checkpoint.json"
POINTER_DIR = "model"
KFP_RUN_ENV = ("KFP_RUN_ID",)  # set by KFP v1/v2-compatible pods, or by our components from
# dsl.PIPELINE_JOB_ID_PLACEHOLDER; KFP v2 launchers themselves set only KFP_POD_NAME / KFP_POD_UID.


class TrackingError(RuntimeError):
    """Tracking or registry cannot do what was asked; the message says what to change."""


class CheckpointPointer(BaseModel):
    """What the registry stores for a checkpoint: where it is, and how to check it."""

    checkpoint_uri: str = Field(description="Object-store URI of the checkpoint version.")
    manifest_sha256: str | None = Field(None, description="sha256 of the checkpoint's manifest.json.")
    run_id: str = Field(description="MLflow run that produced it.")
    model_name: str = Field(description="Registered model name.")
    created_at: float = Field(default_factory=time.time, description="Unix time of registration.")
    tags: dict[str, str] = Field(default_factory=dict, description="Anything else worth keeping.")
    version: str | None = Field(None, description="Registry version (filled when resolved).")


def _clip(value: Any, limit: int) -> str:
    text = "" if value is None else str(value)
    if len(text) <= limit:
        return text
    marker = f"...[{len(text)} chars]"
    return text[: limit - len(marker)] + marker


def _prepare_uri(uri: str) -> str:
    """An embedded SQLite store: create its folder and make the path absolute (MLflow caches stores by
    URI string, so a relative path would keep pointing at the first working directory's file).
    Server URIs pass through."""
    if uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return uri


def _default_artifacts(settings: Settings) -> str | None:
    """Artifact root for a new experiment: the setting, or next to an embedded SQLite file."""
    if settings.tracking.artifact_location:
        return settings.tracking.artifact_location
    uri = settings.tracking.uri
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///")).expanduser().resolve()
        return (db.parent / "mlartifacts").as_uri()
    return None  # a server decides (its --artifacts-destination)


def client(settings: Settings) -> MlflowClient:
    """An MlflowClient on the configured tracking and registry URIs."""
    import mlflow
    from mlflow import MlflowClient

    if not settings.tracking.enabled:
        raise TrackingError("tracking is disabled (DMMS_TRACKING__ENABLED=false): "
                            "the model registry needs it; enable tracking to register or resolve models")
    uri = _prepare_uri(settings.tracking.uri)
    registry = _prepare_uri(settings.tracking.registry_uri) if settings.tracking.registry_uri else uri
    # MLflow resolves some URIs through its process-wide target, not the client's (``runs:/`` sources
    # of model versions, ``models:/`` downloads), and that target defaults to MLFLOW_TRACKING_URI /
    # MLFLOW_REGISTRY_URI from the environment: point it at OUR settings so one step never reads or
    # writes two stores.
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    return MlflowClient(tracking_uri=uri, registry_uri=registry)


def git_sha() -> str:
    """``DMMS_GIT_SHA`` (images have no .git), else ``git rev-parse HEAD``, else ``unknown``."""
    if os.environ.get("DMMS_GIT_SHA"):
        return os.environ["DMMS_GIT_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_tags(settings: Settings, step: str, extra: dict | None = None) -> dict[str, str]:
    """The tags every run gets; KFP ones only when running under KFP."""
    tags = {"dmms.profile": settings.profile, "dmms.step": step, "dmms.git_sha": git_sha()}
    kfp_run = next((os.environ[k] for k in KFP_RUN_ENV if os.environ.get(k)), None)
    if kfp_run:
        tags["dmms.kfp_run_id"] = kfp_run
    if os.environ.get("KFP_POD_NAME"):
        tags["dmms.kfp_pod_name"] = os.environ["KFP_POD_NAME"]
    tags.update({str(k): str(v) for k, v in (extra or {}).items()})
    return {k: _clip(v, MAX_TAG_LEN) for k, v in tags.items()}


def _entities():
    import mlflow.entities

    return mlflow.entities


def _mlflow_exception() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


class RunHandle:
    """What a step logs through; a handle with ``run_id=None`` logs nothing (tracking disabled)."""

    def __init__(self, mlflow_client: MlflowClient | None, run_id: str | None):
        self._client = mlflow_client
        self.run_id = run_id

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._client and self.run_id:
            ts = int(time.time() * 1000)
            self._client.log_batch(self.run_id, metrics=[
                _entities().Metric(str(k), float(v), ts, step or 0) for k, v in metrics.items()])

    def log_params(self, params: dict[str, Any]) -> None:
        if self._client and self.run_id:
            self._client.log_batch(self.run_id, params=[
                _entities().Param(str(k), _clip(v, MAX_PARAM_LEN)) for k, v in params.items()])

    def set_tags(self, tags: dict[str, Any]) -> None:
        if self._client and self.run_id:
            for key, value in tags.items():
                self._client.set_tag(self.run_id, str(key), _clip(value, MAX_TAG_LEN))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        if self._client and self.run_id:
            path = Path(path)
            if path.is_dir():
                self._client.log_artifacts(self.run_id, str(path), artifact_path)
            else:
                self._client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: dict | list, artifact_file: str) -> None:
        if self._client and self.run_id:
            self._client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        if self._client and self.run_id:
            self._client.log_text(self.run_id, text, artifact_file)


def _experiment_id(mlc: MlflowClient, settings: Settings) -> str:
    name = settings.tracking.experiment
    try:
        exp = mlc.get_experiment_by_name(name)
    except _mlflow_exception() as exc:
        if "401" in str(exc) or "403" in str(exc) or "Unauthorized" in str(exc) or "PERMISSION_DENIED" in str(exc):
            who = os.environ.get("MLFLOW_TRACKING_USERNAME")
            raise TrackingError(
                f"MLflow at {settings.tracking.uri} refused the request ({'as ' + who if who else 'no credentials'}):"
                " set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD (on the cluster: the mlflow-auth "
                "Secret, mounted into every step)") from None
        raise
    if exp is not None:
        return exp.experiment_id
    try:
        return mlc.create_experiment(name, artifact_location=_default_artifacts(settings))
    except _mlflow_exception():  # another step created it between our two calls
        exp = mlc.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def tracked_run(settings: Settings, step: str, run_name: str | None = None,
                tags: dict | None = None, nested: bool = False) -> Iterator[RunHandle]:
    """Open an MLflow run for ``step`` tagged and parametrised from ``settings``; yield its handle.

    The run ends FINISHED, or FAILED when the body raises (the exception propagates).
    """
    if not settings.tracking.enabled:
        log.info("tracking disabled (DMMS_TRACKING__ENABLED=false): step %s logs nothing to MLflow", step)
        yield RunHandle(None, None)
        return
    if not is_main_process():  # one run per step: rank 0 logs for all ranks (components/common/launch.py)
        log.debug("rank %d: step %s logs through rank 0's MLflow run", process_rank(), step)
        yield RunHandle(None, None)
        return
    import mlflow

    mlc = client(settings)  # also points MLflow's process-wide target at our stores
    experiment_id = _experiment_id(mlc, settings)
    name = run_name or (f"{settings.run_name}-{step}" if settings.run_name else step)
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, nested=nested,
                          tags=run_tags(settings, step, tags)) as run:
        handle = RunHandle(mlc, run.info.run_id)
        handle.log_params(settings.flat_params())
        handle.log_dict(settings.public_dict(), "settings.json")
        log.info("MLflow run %s (%s) for step %s at %s", run.info.run_id, name, step,
                 settings.tracking.uri)
        yield handle


# ---- registry: pointers to checkpoints, aliases with history -----------------------------------


def register_checkpoint(settings: Settings, run_id: str, checkpoint_uri: str,
                        manifest_sha256: str | None = None, tags: dict | None = None) -> str:
    """Log ``model/checkpoint.json`` under ``run_id`` and register it; return the new version."""
    if not checkpoint_uri:
        raise TrackingError("checkpoint_uri is empty: pass the object-store URI of the checkpoint")
    mlc = client(settings)
    name = settings.tracking.model_name
    extra = {str(k): str(v) for k, v in (tags or {}).items()}
    pointer = CheckpointPointer(checkpoint_uri=checkpoint_uri, manifest_sha256=manifest_sha256,
                                run_id=run_id, model_name=name, tags=extra)
    mlc.log_dict(run_id, pointer.model_dump(exclude={"version"}), f"{POINTER_DIR}/{POINTER_FILE}")
    try:
        mlc.create_registered_model(name)
    except _mlflow_exception() as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    version_tags = {"dmms.checkpoint_uri": checkpoint_uri, **extra}
    if manifest_sha256:
        version_tags["dmms.manifest_sha256"] = manifest_sha256
    mv = mlc.create_model_version(name, f"runs:/{run_id}/{POINTER_DIR}", run_id=run_id,
                                  tags=version_tags)
    log.info("registered %s version %s -> %s", name, mv.version, checkpoint_uri)
    return str(mv.version)


def get_alias(settings: Settings, alias: str) -> ModelVersion | None:
    """The version holding ``alias``, or None when no version (or no model) has it."""
    try:
        return client(settings).get_model_version_by_alias(settings.tracking.model_name, alias)
    except _mlflow_exception() as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def set_version_tags(settings: Settings, version: str | int, tags: dict) -> None:
    """Set tags on one version of the registered model."""
    mlc = client(settings)
    for key, value in tags.items():
        mlc.set_model_version_tag(settings.tracking.model_name, str(version), str(key), str(value))


def alias_history(settings: Settings, alias: str) -> list[dict]:
    """Every move of ``alias``, oldest first: ``{"version", "previous", "at"}``."""
    model = client(settings).get_registered_model(settings.tracking.model_name)
    return json.loads(model.tags.get(f"dmms.alias_history.{alias}", "[]"))


def set_alias(settings: Settings, alias: str, version: str | int) -> str | None:
    """Point ``alias`` at ``version``; return the version it held before (None if none).

    The new version is tagged ``dmms.previous_<alias>=<old>`` and the move is appended to the
    registered model's tag ``dmms.alias_history.<alias>``, so a rollback can find where to go back.
    """
    mlc = client(settings)
    name, version = settings.tracking.model_name, str(version)
    try:
        mlc.get_model_version(name, version)
    except _mlflow_exception() as exc:
        raise TrackingError(f"model {name!r} has no version {version!r} at {settings.tracking.uri}: "
                            f"pass a version that register_checkpoint returned") from exc
    old = get_alias(settings, alias)
    previous = str(old.version) if old is not None else None
    if previous == version:
        return previous
    if previous is not None:
        mlc.set_model_version_tag(name, version, f"dmms.previous_{alias}", previous)
    history = alias_history(settings, alias)
    history.append({"version": version, "previous": previous, "at": time.time()})
    mlc.set_registered_model_tag(name, f"dmms.alias_history.{alias}", json.dumps(history[-200:]))
    mlc.set_registered_model_alias(name, alias, version)
    log.info("alias %s of %s: %s -> %s", alias, name, previous, version)
    return previous


def previous_version(settings: Settings, alias: str) -> str | None:
    """The version ``alias`` held before its current one (from the version tag), or None."""
    current = get_alias(settings, alias)
    return None if current is None else current.tags.get(f"dmms.previous_{alias}")


def resolve_alias(settings: Settings, alias: str) -> CheckpointPointer:
    """Load the checkpoint pointer of ``models:/<name>@<alias>``."""
    import mlflow.artifacts

    current = get_alias(settings, alias)
    name = settings.tracking.model_name
    if current is None:
        raise TrackingError(f"no version of model {name!r} has alias {alias!r} at "
                            f"{settings.tracking.uri}: register and promote a checkpoint first")
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}@{alias}", dst_path=tmp,
            tracking_uri=settings.tracking.uri,
            registry_uri=settings.tracking.registry_uri or settings.tracking.uri)
        path = Path(local) / POINTER_FILE if Path(local).is_dir() else Path(local)
        if not path.is_file():
            raise TrackingError(f"models:/{name}@{alias} (version {current.version}) holds no "
                                f"{POINTER_FILE}: it was not registered by register_checkpoint")
        pointer = CheckpointPointer.model_validate_json(path.read_text())
    return pointer.model_copy(update={"version": str(current.version)})
