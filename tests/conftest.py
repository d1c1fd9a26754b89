"""Root test configuration.

Shared server fixtures live in ``tests/fixtures/<name>.py`` (one module per real server: the S3
server, the MLflow server, the tool-server, ...) and are loaded here as plugins, so any test can ask
for them by name. Each fixture starts the real thing on free loopback ports.
"""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = [
    "tests.fixtures.s3",
    "tests.fixtures.mlflow_server",
    "tests.fixtures.openai_server",
    "tests.fixtures.toolserver",
]


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch, tmp_path):
    """No test sees the developer's own DMMS_*/MLFLOW_* variables or .env; each runs in its own
    folder; and whatever a test (or a library it calls: ``mlflow.set_tracking_uri`` exports
    MLFLOW_TRACKING_URI) puts into the environment is gone after it, so subprocesses of later tests
    start clean."""
    saved = dict(os.environ)
    for key in list(os.environ):
        if (key.startswith("DMMS_") and not key.startswith("DMMS_TEST_")) or key in MLFLOW_TARGETS:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.chdir(tmp_path)
    yield
    os.environ.clear()
    os.environ.update(saved)


MLFLOW_TARGETS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KFP_RUN_ID")
