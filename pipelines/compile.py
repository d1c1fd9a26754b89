"""Compile every pipeline to KFP v2 YAML: ``dmms compile --out build/pipelines`` (``make compile``).

    paths = compile_all(load_settings(), Path("build/pipelines"))   # {name: path}
"""

from __future__ import annotations

import logging
from pathlib import Path

from kfp import compiler

from components.common.settings import Settings
from pipelines.catalog import NAMES, build

log = logging.getLogger(__name__)


def compile_one(name: str, settings: Settings, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.yaml"
    compiler.Compiler().compile(build(name, settings, cluster=True).whole, str(path))
    log.info("compiled %s -> %s", name, path)
    return path


def compile_all(settings: Settings, out_dir: Path, names: tuple[str, ...] = NAMES) -> dict[str, Path]:
    return {name: compile_one(name, settings, out_dir) for name in names}
