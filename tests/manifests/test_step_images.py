"""Every step body starts on the image it runs on: its imports resolve from that image's requirements.

No Docker here, so each image is emulated: a ``site-packages`` folder holding links to exactly the
distributions of the image's ``requirements.txt`` and their requirement closure (at the versions
installed here, which are the pins), and a ``python -S`` that sees nothing else. In it we import,
for every KFP step body (components/kfp/steps.py), the modules its body imports — as the pod would
when KFP runs it — and, for the tool-server image, what ``dmms tools serve`` imports. A static pass
over every module of ours a body can reach (its imports, and theirs, function-level ones included)
adds the packages only a rarely taken path imports. A missing package fails here, not on a
cluster. A real image adds the CUDA wheels, vLLM and the OS packages, which cannot be checked here.

``test_a_step_body_whose_package_the_image_lacks_fails`` takes ``datasets`` out of the train image
and shows the check failing, naming the step and the package.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from bench.gpu_wheels import closure
from components.kfp import steps

ROOT = Path(__file__).resolve().parents[2]
OURS = {"components", "pipelines"}
# Imported inside functions only on paths the image does not take (and says so in its requirements)
OPTIONAL = {"toolserver": {"torch", "transformers", "open_clip"}, "train": {"vllm"}}


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_requirements(image: str) -> set[str]:
    names = set()
    for line in (ROOT / "images" / image / "requirements.txt").read_text().splitlines():
        spec = line.partition("#")[0].strip()
        if spec:
            names.add(_norm(Requirement(spec).name))
    return names


def _emulate(image: str, tmp: Path, drop: set[str] = frozenset()) -> Path:
    """A site-packages folder with exactly the image's distributions (links), minus ``drop``."""
    site = tmp / image / "site-packages"  # "site-packages" in the path: dill pickles other paths by value
    site.mkdir(parents=True)
    for name in sorted(closure(_image_requirements(image), target={}) - set(drop)):
        dist = md.distribution(name)
        base = Path(dist.locate_file(""))
        for top in {Path(f).parts[0] for f in dist.files or [] if Path(f).parts and Path(f).parts[0] != ".."}:
            if (base / top).exists() and not (site / top).exists():
                os.symlink(base / top, site / top)
    return site


def _body_imports(fn) -> list[str]:
    """Modules a step body imports (its function-level import statements)."""
    tree = ast.parse(inspect.getsource(fn))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append(node.module)
    return out


STEP_BODIES = {name.removesuffix("_op"): fn for name, fn in vars(steps).items()
               if name.endswith("_op") and inspect.isfunction(fn)}

_PROBE = r'''
import ast, importlib, importlib.util, json, sys
from pathlib import Path
wanted = json.loads(sys.argv[1]); optional = set(json.loads(sys.argv[2])); root = Path(sys.argv[3])
failures = []
for step, modules in wanted.items():  # what the pod does: run the body's imports
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:
            failures.append(f"{step}: import {module}: {type(exc).__name__}: {exc}")


def imports_of(module):
    path = root / (module.replace(".", "/") + ".py")
    if not path.is_file():
        path = root / module.replace(".", "/") / "__init__.py"
    if not path.is_file():
        return []
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.append(node.module)
    return names


for step, modules in wanted.items():  # and every import of ours they can reach, lazy ones included
    seen, stack, missing = set(), list(modules), {}
    while stack:
        module = stack.pop()
        if module in seen:
            continue
        seen.add(module)
        for name in imports_of(module):
            top = name.split(".")[0]
            if top in ("components", "pipelines"):
                stack.append(name)
            elif top not in sys.stdlib_module_names and top not in optional and importlib.util.find_spec(top) is None:
                missing.setdefault(top, module)
    failures += [f"{step}: {where} imports {top}, which the image lacks" for top, where in sorted(missing.items())]
print(json.dumps(failures))
'''


def _check(site: Path, wanted: dict[str, list[str]], optional: set[str]) -> list[str]:
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "PATH": os.environ.get("PATH", ""), "HOME": str(site.parent),
           "DMMS_PROFILE": "tiny", "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run([sys.executable, "-S", "-c", _PROBE, json.dumps(wanted), json.dumps(sorted(optional)),
                          str(ROOT)],
                         env=env, capture_output=True, text=True, timeout=600, cwd=site.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def train_site(tmp_path_factory):
    return _emulate("train", tmp_path_factory.mktemp("images"))


def test_every_step_body_imports_on_the_train_image(train_site):
    from components.common.settings import load_settings

    p = load_settings().pipelines
    assert p.base_image == p.train_image  # CPU steps run on the train image too: it has their packages
    wanted = {step: _body_imports(fn) for step, fn in STEP_BODIES.items()}
    assert {"world", "index", "datagen", "sft", "grpo", "evaluate", "promote"} <= set(wanted)
    assert _check(train_site, wanted, OPTIONAL["train"]) == []


def test_the_toolserver_image_starts_the_tool_server(tmp_path):
    site = _emulate("toolserver", tmp_path)
    wanted = {"tools serve": ["components.cli", "components.search.app", "components.search.cli",
                              "components.search.grounding_service"]}
    assert _check(site, wanted, OPTIONAL["toolserver"]) == []


def test_a_step_body_whose_package_the_image_lacks_fails(tmp_path):
    site = _emulate("train", tmp_path, drop={"datasets"})
    wanted = {step: _body_imports(STEP_BODIES[step]) for step in ("sft", "world")}
    failures = _check(site, wanted, OPTIONAL["train"])
    assert any(f.startswith("sft: ") and "datasets" in f for f in failures), failures
    assert not any(f.startswith("world:") for f in failures)  # the world step does not need it


def test_components_do_not_pip_install_at_pod_start():
    from components.common.settings import load_settings
    from components.kfp.ops import make_ops

    ops = make_ops(load_settings().pipelines)
    for name in ops.__dataclass_fields__:
        command = " ".join(getattr(ops, name).component_spec.implementation.container.command)
        assert "pip install" not in command and "kfp.dsl.executor_main" in command, name
