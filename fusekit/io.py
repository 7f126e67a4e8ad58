"""Atomic writes: outputs appear complete or not at all."""
from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from fusekit.errors import FusekitError
from fusekit.options import literal


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def portable_path(path: Path | str, base: Path | str | None = None, *, home: bool = False) -> str:
    """``path`` as written into outputs: relative to ``base`` (default: the working directory).

    Records name files relative to the run or the repository, never by an absolute path of
    the machine that made them. With ``home``, a path under the home directory and outside
    ``base`` is written ``~/...``; a file on another drive keeps only its name.
    """
    start = Path(os.path.abspath(base if base is not None else Path.cwd()))
    target = Path(os.path.abspath(start / Path(path).expanduser()))
    if home and target != start and start not in target.parents:
        user = Path(os.path.abspath(Path.home()))
        if user in target.parents and user != Path(target.anchor):
            return "~/" + target.relative_to(user).as_posix()
    try:
        return Path(os.path.relpath(target, start)).as_posix()
    except ValueError:  # no relative path across drives
        return target.name


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# The function whose arguments the output-directory messages name.
OUTPUT_OWNER = "check_output_dir()"


def check_output_dir(path: Path, force: bool) -> None:
    """Refuse an existing, non-empty output directory unless ``force``.

    The message names the ``out_dir`` and ``force`` arguments of the function that was given them
    (decompose, fuse, run_bench ...); a command prints its own flags for them.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FusekitError(f"output path {literal(path)} exists and is not a directory; choose another {{out_dir}}",
                           owner=OUTPUT_OWNER)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FusekitError(f"output directory {literal(path)} exists and is not empty; choose another {{out_dir}} "
                           "or pass {force=True}", owner=OUTPUT_OWNER)


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is left as it was.
    """
    path = Path(path)
    check_output_dir(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # mkdtemp makes the directory private (0700); give it the permissions of a normal mkdir.
    os.chmod(tmp, 0o777 & ~_umask())
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
        os.replace(path, old / "x")
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, path)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; renamed onto ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are private (0600)
    os.replace(tmp, path)
