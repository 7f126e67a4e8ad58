import pytest

from fusekit.errors import FusekitError
from fusekit.io import atomic_dir, atomic_file, check_output_dir


def test_atomic_dir_appears_only_on_success(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.txt").write_text("x")
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(target) as tmp:
        (tmp / "done.txt").write_text("y")
    assert (target / "done.txt").read_text() == "y"


def test_non_empty_output_needs_force(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(FusekitError, match="pass force=True"):
        check_output_dir(target, force=False)
    with atomic_dir(target, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_atomic_file_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    with pytest.raises(ValueError):
        with atomic_file(target) as tmp:
            tmp.write_text("partial")
            raise ValueError
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    mask = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
        with atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_portable_path_is_relative_never_absolute(tmp_path):
    from fusekit.io import portable_path

    inner = tmp_path / "runs" / "a" / "parts"
    inner.mkdir(parents=True)
    assert portable_path(inner, tmp_path / "runs" / "b") == "../a/parts"
    assert portable_path(inner, tmp_path) == "runs/a/parts"
    assert not portable_path(inner).startswith("/")
