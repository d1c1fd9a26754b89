"""Logging setup shared by the CLI, servers and KFP components.

Why: one format everywhere (plain lines for people, JSON lines for log collectors in the cluster),
chosen by ``DMMS_LOG_FORMAT=json|text`` and ``DMMS_LOG_LEVEL``. Library code only calls
``logging.getLogger(__name__)``; entry points call :func:`setup_logging` once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, and any ``extra=`` fields."""

    _skip = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}

    def format(self, record: logging.LogRecord) -> str:
        payload = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in self._skip:
                payload[key] = value if isinstance(value, str | int | float | bool | None) else repr(value)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload)


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure the root logger once (idempotent)."""
    level = (level or os.environ.get("DMMS_LOG_LEVEL", "INFO")).upper()
    fmt = fmt or os.environ.get("DMMS_LOG_FORMAT", "text")
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "urllib3", "alembic", "botocore"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
