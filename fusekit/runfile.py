"""Run files: a command's options written down in TOML (read with tomllib, or tomli before 3.11)."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from fusekit.errors import FusekitError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's table; FusekitError when it is missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"config file {path} does not exist; check the path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FusekitError(f"{path} is not valid TOML: {str(exc).splitlines()[0]}") from None
