"""The Dockerfiles pin what pyproject.toml pins (no Docker here: the images cannot be built in tests).

Reads pyproject.toml and images/*/{Dockerfile,requirements.txt} and checks: every requirement is an
exact pin; it equals pyproject's pin unless marked ``# override:`` with a reason (the GPU image must
follow the vLLM it ships, see images/train/requirements.txt); the vLLM pin lies in the ``gpu`` extra
and in the range TRL 1.16 supports; the train image carries every runtime dependency (the package
is installed with --no-deps); base images are tagged; containers run as a non-root user; the
manifests use the package version as the tag of our own images.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "images"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT_DEPS = {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["project"]["dependencies"])}
GPU_EXTRA = {canonicalize_name(r.name): r for r in map(Requirement, PYPROJECT["project"]["optional-dependencies"]["gpu"])}
TRAIN_OVERRIDES = {"torch", "torchvision", "fastapi"}  # forced by the vLLM pin (documented in the file)


def _requirements(image: str) -> dict[str, tuple[Requirement, str]]:
    out = {}
    for line in (IMAGES / image / "requirements.txt").read_text().splitlines():
        spec, _, comment = line.partition("#")
        if spec.strip():
            req = Requirement(spec.strip())
            out[canonicalize_name(req.name)] = (req, comment.strip())
    return out


def _pin(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


@pytest.mark.parametrize("image", ["train", "toolserver", "mlflow"])
def test_requirements_are_exact_pins_matching_pyproject(image):
    for name, (req, comment) in _requirements(image).items():
        version = _pin(req)
        expected = PROJECT_DEPS.get(name)
        if expected is None or not expected.specifier:
            if expected is not None:
                assert expected.specifier.contains(version), f"{image}: {req} outside pyproject's {expected}"
            continue
        if image == "train" and name in TRAIN_OVERRIDES:
            assert comment.startswith("override:") and "vllm" in comment, f"{name}: override without a reason"
            continue
        assert version == _pin(expected), f"{image}: {req} but pyproject.toml pins {expected}"


def test_train_image_pins_a_trl_supported_vllm_inside_the_gpu_extra():
    reqs = _requirements("train")
    vllm = Version(_pin(reqs["vllm"][0]))
    assert GPU_EXTRA["vllm"].specifier.contains(vllm), f"vllm {vllm} outside pyproject gpu extra"
    assert Version("0.22.0") <= vllm <= Version("0.31.0"), "TRL 1.16 supports vLLM 0.22.0-0.31.0 (docs/facts.md)"
    from components.common.vllm_server import DEFAULT_VLLM_VERSION

    assert Version(DEFAULT_VLLM_VERSION) == vllm, "the vllm serve builder must assume the vLLM the image ships"


def test_train_image_carries_every_runtime_dependency():
    missing = set(PROJECT_DEPS) - set(_requirements("train"))
    assert not missing, f"images/train/requirements.txt lacks {sorted(missing)} (the package is installed --no-deps)"


def test_train_dockerfile_installs_the_pinned_torch_and_the_gpu_extra():
    text = (IMAGES / "train/Dockerfile").read_text()
    reqs = _requirements("train")
    for name in ("torch", "torchvision"):
        assert f"{name}=={_pin(reqs[name][0])}" in text
    assert 'pip install --no-deps ".[gpu]"' in text


def test_toolserver_image_stays_slim():
    names = set(_requirements("toolserver"))
    assert not names & {"torch", "torchvision", "transformers", "trl", "vllm", "peft"}
    assert {"fastapi", "uvicorn", "tantivy", "redis", "typer"} <= names
    assert 'ENTRYPOINT ["dmms"]' in (IMAGES / "toolserver/Dockerfile").read_text()


@pytest.mark.parametrize("image", ["train", "toolserver", "mlflow"])
def test_base_image_is_tagged_and_user_is_not_root(image):
    text = (IMAGES / image / "Dockerfile").read_text()
    bases = re.findall(r"^FROM\s+(\S+)", text, re.M)
    args = dict(re.findall(r"^ARG\s+(\w+)=(\S+)", text, re.M))
    for base in bases:
        base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], base)
        assert re.search(r":[\w.\-]+$", base) and not base.endswith(":latest"), f"{image}: unpinned base {base}"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and users[-1].split(":")[0] not in {"root", "0"}, f"{image}: must end as a non-root USER"


def test_manifests_tag_our_images_with_the_package_version():
    version = PYPROJECT["project"]["version"]
    tags = set(re.findall(r"image:\s*deepmmsearch/(\w+):(\S+)", "\n".join(
        p.read_text() for p in (ROOT / "manifests/base").rglob("*.yaml"))))
    assert {name for name, _ in tags} == {"train", "toolserver", "mlflow"}
    assert {tag for _, tag in tags} == {version}
    for name, _ in tags:
        assert (IMAGES / name / "Dockerfile").is_file()
