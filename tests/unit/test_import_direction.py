"""Imports run one way (docs: layout and import rules): ``common`` uses nothing of ours; ``search``
and ``world`` use ``common``; ``agent`` uses ``common`` and ``search`` (its client); the steps
(datagen, sft, grpo, evaluate, registry) use those layers and ``world`` but never each other; no core imports
``pipelines`` or kfp — only the thin wrappers in ``components/kfp`` and the CLI front door do.

An AST walk over every module (imports inside functions included), so a lazy import cannot hide.
"""

from __future__ import annotations

import ast
from pathlib import Path

COMPONENTS = Path(__file__).resolve().parents[2] / "components"
STEPS = {"datagen", "sft", "grpo", "evaluate", "registry"}
ALLOWED = {
    "common": set(),
    "search": {"common"},
    "world": {"common"},
    "agent": {"common", "search"},
    # the offline world is a base layer too: datagen's oracle reads it, SFT draws fresh names from it
    **{step: {"common", "search", "world", "agent"} for step in STEPS},
}


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def test_every_core_imports_only_what_its_layer_may():
    bad = []
    for path in sorted(COMPONENTS.rglob("*.py")):
        rel = path.relative_to(COMPONENTS)
        if len(rel.parts) < 2 or rel.parts[0] == "kfp":
            continue  # components/cli.py (the front door) and the KFP wrappers may import anything
        layer = rel.parts[0]
        for module in _imports(path):
            top = module.split(".")
            if top[0] in ("pipelines", "kfp"):
                bad.append(f"{rel}: imports {module} (no core imports pipelines or kfp)")
            elif top[0] == "components" and len(top) > 1 and top[1] != layer and top[1] in ALLOWED:
                if top[1] not in ALLOWED[layer]:
                    bad.append(f"{rel}: imports {module} ({layer} may use {sorted(ALLOWED[layer]) or 'nothing'})")
    assert not bad, "\n".join(bad)


def test_the_walk_sees_lazy_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from components.datagen.run import run_datagen\n")
    assert "components.datagen.run" in _imports(f)
