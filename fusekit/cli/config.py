"""``--config run.toml``: a command's options written down in a TOML file.

Keys are the command's option names (``batch-size`` or ``batch_size``, ``no-mtm = true``, the
positional ``parts``); flags on the command line override the file; an unknown key is refused.
Relative paths in the file are relative to the current directory, as on the command line.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fusekit.errors import FusekitError
from fusekit.runfile import read_toml

NOT_KEYS = {"help", "config"}


def config_keys(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """The keys a config file may hold for the command of ``parser`` (dashed spelling) -> its action."""
    keys = {}
    for action in parser._actions:
        if action.help == argparse.SUPPRESS:  # deprecated spellings
            continue
        longs = [o for o in action.option_strings if o.startswith("--")]
        if action.option_strings and not longs:
            continue
        key = longs[0][2:] if longs else action.dest.replace("_", "-")
        if key not in NOT_KEYS:
            keys[key] = action
    return keys


def _pairs(key: str, value: Any, where: str) -> list[str]:
    """A table ``{task = ["a", "b"]}`` or a list of ``"task=a,b"`` strings -> ``["task=a,b"]``."""
    if isinstance(value, dict):
        out = []
        for name, item in value.items():
            if isinstance(item, list) and all(isinstance(x, str) for x in item):
                item = ",".join(item)
            if not isinstance(item, str):
                raise FusekitError(f"{where}: {key}.{name} must be a string or a list of strings, got {item!r}")
            out.append(f"{name}={item}")
        return out
    if isinstance(value, list) and all(isinstance(x, str) for x in value):
        return list(value)
    if isinstance(value, str):
        return [value]
    raise FusekitError(f"{where}: {key} must be a table or a list of strings, got {value!r}")


def _value(key: str, value: Any, action: argparse.Action, where: str) -> Any:
    """The file's value as the command line's parser would have produced it."""
    if action.nargs == 0:  # an on/off flag: true means "given"
        if not isinstance(value, bool):
            raise FusekitError(f"{where}: {key} must be true or false, got {value!r}")
        return action.const if value else action.default
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        return _pairs(key, value, where)
    if action.type is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise FusekitError(f"{where}: {key} must be a whole number, got {value!r}")
    if action.type is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise FusekitError(f"{where}: {key} must be a number, got {value!r}")
    if action.type in (None, str, Path) and not isinstance(value, str):
        raise FusekitError(f"{where}: {key} must be a string, got {value!r}")
    if action.type is Path:
        value = Path(value)
    elif action.type is float:
        value = float(value)
    if action.choices is not None and value not in action.choices:
        raise FusekitError(f"{where}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
    return value


def apply_config(parser: argparse.ArgumentParser, argv: list[str], args: argparse.Namespace) -> argparse.Namespace:
    """Parse ``argv`` again with the config file's values as defaults, so that flags override the file."""
    command = args._parser
    path = Path(args.config)
    keys = config_keys(command)
    values: dict[str, Any] = {}
    for key, value in read_toml(path).items():
        action = keys.get(key.replace("_", "-"))
        if action is None:
            raise FusekitError(f"unknown key {key!r} in {path}; valid keys: {', '.join(sorted(keys))}")
        values[action.dest] = _value(key, value, action, str(path))
    command.set_defaults(**values)
    parsed = parser.parse_args(argv)
    parsed._argv = argv
    return parsed
