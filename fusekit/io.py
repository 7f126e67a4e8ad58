"""Outputs: atomic writes (complete or not at all), checks of output paths against the inputs,
and write errors of the system (full, read-only, forbidden) as one-line FusekitErrors."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

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
    check_output_paths(path)
    if path.exists() and not path.is_dir():
        raise FusekitError(f"output path {literal(path)} exists and is not a directory; choose another {{out_dir}}",
                           owner=OUTPUT_OWNER)
    if path.is_dir() and any(path.iterdir()) and not force:
        raise FusekitError(f"output directory {literal(path)} exists and is not empty; choose another {{out_dir}} "
                           "or pass {force=True}", owner=OUTPUT_OWNER)


# What the system says when an output cannot be written, and what to do about it.
_ADVICE = {
    errno.ENOSPC: "free disk space or write the output to another file system",
    errno.EDQUOT: "free space in your quota or write the output elsewhere",
    errno.EFBIG: "write the output to a file system that takes larger files",
    errno.EROFS: "the file system is read-only; write the output elsewhere",
    errno.EACCES: "you may not write there; write the output elsewhere or change the folder's permissions",
    errno.EPERM: "you may not write there; write the output elsewhere or change the folder's permissions",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another output",
    errno.EISDIR: "a folder is in the way; choose another output",
    errno.ENAMETOOLONG: "choose a shorter output path",
}
# Errors of the system while a body of atomic_dir / atomic_file writes; others (a missing input
# file, say) are the body's own and pass through unchanged.
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM})


def write_error(exc: OSError, output: Path | str) -> FusekitError:
    """The one-line FusekitError of an OSError met while writing ``output``: what the system said,
    the file it said it of, and what to do."""
    what = exc.strerror or type(exc).__name__
    name = exc.filename if exc.filename is not None else output
    advice = _ADVICE.get(exc.errno, "check the output path and retry")
    return FusekitError(f"cannot write {literal(output)}: {literal(what)} ({literal(name)}); {advice}")


@contextlib.contextmanager
def _writing(output: Path) -> Iterator[None]:
    """OSErrors of the system (full, read-only, forbidden) become write_error's FusekitError."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in WRITE_ERRNOS and exc.errno not in _ADVICE:
            raise
        raise write_error(exc, output) from None


def _resolved(path: Path | str) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


def check_output_paths(output: Path | str, inputs: Iterable[Path | str | None] = (), *,
                       owner: str = OUTPUT_OWNER, argument: str = "out_dir",
                       around: Iterable[Path | str | None] = ()) -> None:
    """Refuse an output that is, contains or lies inside one of ``inputs``, or lies below a file.

    ``--force`` replaces its output as a whole, so an output holding an input would delete it.
    ``inputs``: files or folders the run reads (a name that is not an existing path, such as
    ``census-income``, is skipped). ``around``: folders the output may lie in but must not be
    nor contain (a data folder, where writing a new file beside the data harms nothing). The
    message names the ``argument`` of the function ``owner`` that was given the output.
    """
    out = _resolved(output)
    for parent in [out, *out.parents]:
        if parent.exists():
            if not parent.is_dir() and parent != out:
                raise FusekitError(f"output {literal(output)} lies below {literal(parent)}, which is a file; choose "
                                   f"another {{{argument}}}", owner=owner)
            break
    inputs, around = list(inputs), list(around)
    for item in inputs + around:
        if item is None or not isinstance(item, (str, os.PathLike)) or not Path(item).exists():
            continue
        source = _resolved(item)
        if source == out:
            raise FusekitError(f"output {literal(output)} is the input {literal(item)}; writing it would destroy the "
                               f"input: choose another {{{argument}}}", owner=owner)
        if out in source.parents:
            raise FusekitError(f"output {literal(output)} contains the input {literal(item)}; replacing it would "
                               f"delete the input: choose another {{{argument}}}", owner=owner)
        if source in out.parents and not any(item is other for other in around):
            raise FusekitError(f"output {literal(output)} lies inside the input folder {literal(item)}; choose "
                               f"another {{{argument}}} outside it", owner=owner)


@contextlib.contextmanager
def atomic_dir(path: Path, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path``.

    On any exception the temporary directory is removed and ``path`` is left as it was. A full,
    read-only or forbidden file system is a FusekitError naming the path and what to do.
    """
    path = Path(path)
    check_output_dir(path, force)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        with _writing(path):
            yield tmp
            # mkdtemp makes the directory private (0700); give it the permissions of a normal mkdir.
            os.chmod(tmp, 0o777 & ~_umask())
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old / "x")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary file path beside ``path``; renamed onto ``path`` on success.

    A full, read-only or forbidden file system is a FusekitError naming the path and what to do.
    """
    path = Path(path)
    with _writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(fd)
    tmp = Path(name)
    try:
        with _writing(path):
            yield tmp
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp files are private (0600)
            os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
