"""staged_dir: all or nothing."""

import pytest

from components.common.atomic import staged_dir


def test_success_replaces_the_folder(tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with staged_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
        assert not (out / "new.txt").exists()  # invisible until done
    assert sorted(p.name for p in out.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]  # no staging left


def test_failure_leaves_the_old_folder_and_no_staging(tmp_path):
    out = tmp_path / "idx"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with staged_dir(out) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("boom")
    assert (out / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["idx"]


def test_failure_without_previous_folder_leaves_nothing(tmp_path):
    with pytest.raises(ValueError):
        with staged_dir(tmp_path / "a" / "b"):
            raise ValueError("x")
    assert list((tmp_path / "a").iterdir()) == []
