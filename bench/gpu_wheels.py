"""Fill ``wheels/`` with what the lent GPU machine lacks to run ``make gpu-check`` (at most 60 MB).

Why: that machine has no network; it has Python 3.12 with torch 2.11 (CUDA 13), transformers 5.17,
accelerate, peft, safetensors, tokenizers, pyarrow, pandas, pillow, httpx, prometheus-client and
pytest, and nothing of ours. ``bench/gpu_check.py`` needs TRL, datasets, the tool-server's FastAPI /
uvicorn / tantivy, our settings and storage libraries — and transformers >= 5.18 (assistant-only
loss on vision models in TRL). This downloads, for CPython 3.12 on manylinux x86_64, the wheel of
every distribution in the requirement closure of :data:`ROOTS` that the machine does not already
have (:data:`PREINSTALLED` and their requirements, as this environment's metadata states them),
at the versions installed HERE (the tested ones), plus the ones we bring on purpose
(:data:`BRING_OUR_OWN`: newer than the machine's). ``torchvision`` (Qwen2.5-VL's video processor
needs it) goes to ``wheels/optional/``, at the release that matches torch 2.11: ``make gpu-check``
installs it only when the machine has none. ``wheels/manifest.json`` lists what is there.

Run: ``make gpu-wheels`` (or ``.venv/bin/python -m bench.gpu_wheels --out wheels``).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement

log = logging.getLogger("gpu_wheels")

ROOTS = ("trl", "datasets", "transformers", "accelerate", "peft", "pydantic-settings", "fastapi", "uvicorn",
         "tantivy", "minio", "pyyaml", "stamina")
PREINSTALLED = ("torch", "transformers", "accelerate", "peft", "safetensors", "tokenizers", "pyarrow", "pandas",
                "pillow", "httpx", "prometheus-client", "pytest")
# on the machine, but older than what we test with: bring ours (first on PYTHONPATH)
BRING_OUR_OWN = {"transformers", "huggingface-hub", "tokenizers", "safetensors", "accelerate", "peft", "pydantic",
                 "pydantic-core"}
OPTIONAL = {"torchvision": "0.26.0"}  # the torchvision of torch 2.11
TARGET = {"python_version": "3.12", "sys_platform": "linux", "platform_machine": "x86_64",
          "platform_system": "Linux", "implementation_name": "cpython", "os_name": "posix", "extra": ""}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64", "any")
LIMIT_MB = 60.0


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots, skip=frozenset(), target: dict[str, str] | None = None) -> set[str]:
    """Distributions ``roots`` need (their non-optional requirements for ``target``'s markers: the GPU
    machine by default, this machine with ``{}``), by this environment's metadata."""
    markers = TARGET if target is None else target
    seen: set[str] = set()
    stack = [_norm(r) for r in roots]
    while stack:
        name = stack.pop()
        if name in seen or name in skip:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue  # e.g. a requirement only another platform installs
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": "", **markers}):
                stack.append(_norm(req.name))
    return seen


def wanted() -> dict[str, str]:
    """{distribution: version} to download: what ROOTS need minus what the GPU machine has."""
    have = closure(PREINSTALLED) - BRING_OUR_OWN
    return {name: md.version(name) for name in sorted(closure(ROOTS, skip=frozenset(have)))}


def download(specs: list[str], dest: Path, python_version: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(dest),
           "--python-version", python_version, "--implementation", "cp", "--quiet"]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + specs, check=True, timeout=900)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="wheels")
    parser.add_argument("--python-version", default="3.12", help="the GPU machine's Python")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    out = Path(args.out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "optional").mkdir(parents=True)
    pins = wanted()
    log.info("downloading %d wheels for CPython %s: %s", len(pins), args.python_version, ", ".join(pins))
    download([f"{n}=={v}" for n, v in pins.items()], staging, args.python_version)
    download([f"{n}=={v}" for n, v in OPTIONAL.items()], staging / "optional", args.python_version)
    files = sorted(p for p in staging.rglob("*.whl"))
    total = sum(p.stat().st_size for p in files) / 2**20
    manifest = {"python_version": args.python_version, "total_mb": round(total, 1), "limit_mb": LIMIT_MB,
                "wheels": {str(p.relative_to(staging)): round(p.stat().st_size / 2**20, 2) for p in files}}
    (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if total > LIMIT_MB:
        log.error("wheels come to %.1f MB, over the %.0f MB a device run may carry: see %s", total, LIMIT_MB, staging)
        return 1
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)  # complete or absent: never a half-filled folder
    log.info("%s: %d wheels, %.1f MB (limit %.0f MB)", out, len(files), total, LIMIT_MB)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
