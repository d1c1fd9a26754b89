"""The repository stands on its own: nothing tracked refers to a folder beside the clone, and the
docs that code cites (docs/design.md, docs/contributing.md, docs/facts.md) are in it."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tracked() -> list[Path]:
    out = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    return [REPO / line for line in out.splitlines() if line and (REPO / line).is_file()]


def test_nothing_refers_to_a_folder_beside_the_repository():
    outside = re.compile(r"\.\./shared|(?<![\w/])(DESIGN|FACTS|STYLE)\.md")
    bad = []
    for path in _tracked():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        bad += [f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1) if outside.search(line)]
    assert not bad, bad


def test_cited_docs_exist():
    for name in ("design.md", "contributing.md", "facts.md"):
        assert (REPO / "docs" / name).is_file()
