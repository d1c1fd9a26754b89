"""Write a folder all at once: build it in a hidden sibling, then swap it into place.

Why: an index, a world, a model folder or a dataset that a crash left half-written looks valid to
the next reader. Every step that produces a local folder builds it through :func:`staged_dir`, so
readers see either the old folder, the new one, or nothing — never a partial one.

    with staged_dir(Path("out/index")) as tmp:
        (tmp / "meta.json").write_text("{}")
    # out/index now holds meta.json; had the block raised, out/index would be untouched
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def staged_dir(out: Path | str, mode: int = 0o755) -> Iterator[Path]:
    """Yield an empty staging folder next to ``out``; on success it replaces ``out``.

    On any exception (KeyboardInterrupt included) the staging folder is removed and ``out`` is
    left as it was. The staging folder is on the same filesystem, so the final rename is atomic;
    replacing an existing ``out`` removes it first (a reader in that instant sees no folder).
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(mode)  # mkdtemp makes it private; these folders are data, not secrets
    try:
        yield tmp
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
