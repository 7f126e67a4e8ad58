"""Run records: what a run was asked to do, on which data, with which software.

:func:`run_record` returns a JSON-ready dict that goes beside a run's results (metrics.json), so
that the run can be repeated and its data recognised. It names no absolute path of the machine:
every path in it is relative to the directory the command ran in (``cwd``), or ``~/...`` for a
path under the home directory outside it. In the layering it sits above ``fusekit.data``.
"""
from __future__ import annotations

import datetime
import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

from fusekit import __version__
from fusekit.errors import FusekitError
from fusekit.io import portable_path as relative_path, sha256_file
from fusekit.runfile import read_toml
from fusekit.threads import current_threads

# Distributions whose versions decide a run's numbers; read from their metadata, not imported.
PACKAGES = ("torch", "onnx", "onnxruntime", "numpy")


def portable_path(path: str | os.PathLike, cwd: Path | None = None) -> str:
    """``path`` relative to ``cwd`` (default: the current directory), or ``~/...`` when it is under
    the home directory and not under ``cwd``; never absolute."""
    return relative_path(path, cwd, home=True)


def portable_command(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """The command line with every absolute path (``/x``, ``~/x``, ``--opt=/x``) made portable;
    relative arguments stay as typed, since they already are relative to the directory it ran in."""
    out = []
    for token in argv:
        flag, sep, value = token.partition("=") if token.startswith("--") and "=" in token else ("", "", token)
        if os.path.isabs(value) or value.startswith("~"):
            value = portable_path(value, cwd)
        out.append(f"{flag}{sep}{value}" if sep else value)
    return out


def versions() -> dict[str, str | None]:
    """fusekit, torch, onnx, onnxruntime, numpy and python versions (None: not installed)."""
    found: dict[str, str | None] = {"fusekit": __version__}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    found["python"] = platform.python_version()
    return found


def _file(path: Path, cwd: Path | None) -> dict[str, str]:
    return {"path": portable_path(path, cwd), "sha256": sha256_file(path)}


def data_record(data_source: Any, data_dir: Path | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """Where the data came from and the sha256 of its files.

    ``data_source``: ``"census-income"`` (its two files, found in ``data_dir`` or the cache), a
    CSV/Parquet path, or a dataset object (recorded by its feature fingerprint, if it has one).
    """
    if isinstance(data_source, (str, os.PathLike)) and str(data_source) == "census-income":
        from fusekit.data import census

        files = census.locate(data_dir, fetch=False)
        return {"source": "census-income", "files": {part: _file(Path(p), cwd) for part, p in files.items()}}
    if isinstance(data_source, (str, os.PathLike)):
        path = Path(data_source)
        if path.is_dir():  # a folder of Parquet files: each file's checksum
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in (".parquet", ".pq"))
            return {"source": portable_path(path, cwd),
                    "files": {p.relative_to(path).as_posix(): _file(p, cwd) for p in files}}
        if not path.is_file():
            raise FusekitError(f"data file {path} does not exist; check the path")
        return {"source": portable_path(path, cwd), "files": {"data": _file(path, cwd)}}
    spec = getattr(data_source, "spec", None)
    record: dict[str, Any] = {"source": f"in-memory {type(data_source).__name__}", "files": {}}
    if spec is not None and hasattr(spec, "fingerprint"):
        record["feature_fingerprint"] = spec.fingerprint()
    return record


def _config(argv: Sequence[str], cwd: Path | None) -> dict[str, Any] | None:
    """The ``--config`` file named in ``argv``: its path, sha256 and settings (the command line alone
    does not say what it held)."""
    for i, token in enumerate(argv):
        if token == "--config" and i + 1 < len(argv):
            name = argv[i + 1]
        elif token.startswith("--config="):
            name = token.split("=", 1)[1]
        else:
            continue
        path = Path(cwd or Path.cwd()) / Path(name).expanduser()
        if not path.is_file():
            return {"path": portable_path(path, cwd), "sha256": None}
        return {**_file(path, cwd), "settings": read_toml(path)}
    return None


def run_record(argv: Sequence[str] | None, data_source: Any, *, split_seed: int = 0,
               data_dir: Path | None = None, cwd: Path | None = None) -> dict[str, Any]:
    """The record of one run: its command line, its data (with sha256 checksums), the split seed,
    the config file it read, the thread count it computed with, and the software versions.
    JSON-ready; no absolute paths.

    ``argv``: the command line as typed (``["fusekit", "fuse", ...]``; None for a library call).
    ``cwd``: the directory the command ran in (default: the current one).
    """
    data = data_record(data_source, data_dir, cwd)
    if data_dir is not None:
        data["data_dir"] = portable_path(data_dir, cwd)
    record: dict[str, Any] = {
        "command": portable_command(argv, cwd) if argv is not None else None,
        "paths_relative_to": "the directory the command ran in",
        "data": data,
        "split_seed": split_seed,
        "versions": versions(),
        "threads": current_threads(),
        "system": f"{platform.system()} {platform.machine()}",
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    config = _config(argv or [], cwd)
    if config is not None:
        record["config"] = config
    return record
