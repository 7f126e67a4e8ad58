"""Flags made from option classes, and the conventions every command shares.

:class:`OptionFlags` adds a flag per option field with the field's default, choices and help,
remembers which flag sets which field (so an OptionError prints with the flag), and builds the
option object from the parsed arguments. Results go to stdout, progress and notes to stderr.
Nothing here imports torch.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from fusekit.errors import Flag, FusekitError
from fusekit.options import check_value, default_of, option_fields
from fusekit.train_config import TrainConfig


def int_list(text: str) -> list[int]:
    """``"64,32,16"`` -> ``[64, 32, 16]``."""
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


# Rows of a default table (decompose, inspect): a pool of 10,000-node models has thousands of layers.
TABLE_ROWS = 20


def add_verbose(parser: argparse.ArgumentParser, what: str) -> None:
    """``-v`` / ``--verbose``: the full table instead of at most TABLE_ROWS rows of ``what``."""
    parser.add_argument("-v", "--verbose", action="store_true",
                        help=f"list every {what} (by default at most {TABLE_ROWS} rows)")


# What a table cut short says about the rows it left out.
TABLE_HINT = "use --verbose or --json"

_TYPES = {"int": int, "float": float, "str": str, "path": Path, "int_list": int_list}


class OptionFlags:
    """The flags of one command that set fields of option classes."""

    def __init__(self, parser: argparse.ArgumentParser):
        self.parser = parser
        # (class name, field) -> (flag as printed, dest, value an on/off flag sets or None)
        self.fields: dict[tuple[str, str], tuple[str, str, Any]] = {}
        # "Owner.name" -> (flag, value it sets): flags made by hand that give a library name its value.
        self.spellings: dict[str, Flag] = {}
        self.classes: dict[str, type] = {}
        parser.set_defaults(_option_flags=self)

    def add(self, cls: type, name: str, *flags: str, dest: str | None = None, help: str | None = None,
            also: tuple[type, ...] = (), **kwargs: Any) -> argparse.Action:
        """Add the flag of field ``name`` of ``cls`` (default spelling ``--field-name``); ``also``:
        other classes whose field of the same name this flag sets too (``--seed``)."""
        meta = option_fields(cls)[name].metadata
        default = default_of(cls, name)
        for other in also:
            if default_of(other, name) != default:  # one flag cannot show two defaults
                raise ValueError(f"{cls.__name__}.{name} and {other.__name__}.{name} have different defaults")
        flags = flags or ("--" + name.replace("_", "-"),)
        dest = dest or name
        text = meta["help"] if help is None else help
        if meta["kind"] == "bool":
            # A flag switches an option away from its default: --batch-norm on, --no-mtm off.
            sets = not default
            action = self.parser.add_argument(*flags, dest=dest, action="store_true" if sets else "store_false",
                                              default=default, help=text, **kwargs)
        else:
            sets = None
            kwargs.setdefault("default", default)
            if not meta["choices"]:
                kwargs.setdefault("metavar", max(flags, key=len).lstrip("-").upper().replace("-", "_"))
            shown_default = kwargs["default"]
            if shown_default is not None and "default" not in text:
                # A list is typed as comma-separated values, so it is shown that way.
                text += (f" (default {','.join(map(str, shown_default))})" if isinstance(shown_default, list)
                         else " (default %(default)s)")
            action = self.parser.add_argument(*flags, dest=dest, type=_TYPES[meta["kind"]], choices=meta["choices"],
                                              help=text, **kwargs)
        shown = max(flags, key=lambda f: (f.startswith("--"), len(f)))
        for owner in (cls, *also):
            self.fields[(owner.__name__, name)] = (shown, dest, sets)
            self.classes[owner.__name__] = owner
        return action

    def spell(self, owner: str, **flags: str | Flag) -> None:
        """Say which of this command's hand-made flags give ``owner``'s names their values, so that
        an error naming them prints the flag: ``spell("decompose()", levels="--levels",
        verify=("--no-verify", False))``; a plain string is a valued flag, a pair an on/off flag
        and the value it sets. ``owner``: a function (``"name()"``) or an option class name."""
        for name, flag in flags.items():
            self.spellings[f"{owner}.{name}"] = (flag, None) if isinstance(flag, str) else flag

    def check(self, args: argparse.Namespace) -> None:
        """OptionError for the first flag whose value its option class would refuse, also for a
        command that passes the value on without building the class (eval's --split-seed)."""
        for (owner, name), (_, dest, _) in self.fields.items():
            # None: a flag not given, whose library default applies.
            if getattr(args, dest, None) is not None:
                check_value(self.classes[owner], name, getattr(args, dest))

    def values(self, cls: type, args: argparse.Namespace) -> dict[str, Any]:
        """The fields of ``cls`` that this command's flags set, from ``args``."""
        return {name: getattr(args, dest) for (owner, name), (_, dest, _) in self.fields.items()
                if owner == cls.__name__}

    def build(self, cls: type, args: argparse.Namespace, **extra: Any) -> Any:
        """``cls`` made from the parsed flags plus ``extra`` (it checks itself)."""
        return cls(**self.values(cls, args), **extra)

    def table(self) -> dict[str, Flag]:
        """field or Class.field -> (flag, value it sets), for :meth:`FusekitError.render`."""
        out: dict[str, Flag] = {}
        for (owner, name), (flag, _, sets) in self.fields.items():
            out[f"{owner}.{name}"] = (flag, sets)
            out.setdefault(name, (flag, sets))
        # A bare name too: a helper (check_output_dir) raises for the argument its caller was given.
        for key, flag in self.spellings.items():
            out[key] = flag
            out.setdefault(key.rpartition(".")[2], flag)
        return out


class _Deprecated(argparse.Action):
    """An old spelling of a flag: works as the new one and says so on stderr."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        note(f"{option_string} is deprecated; use {self.new}")
        setattr(namespace, self.dest, self.const if self.nargs == 0 else values)


def deprecated(parser: argparse.ArgumentParser, old: str, new: argparse.Action) -> None:
    """Accept ``old`` as a hidden, deprecated spelling of the flag ``new``."""
    on_off = new.nargs == 0
    parser.add_argument(old, dest=new.dest, action=_Deprecated, new=new.option_strings[-1], type=new.type,
                        nargs=0 if on_off else None, const=new.const if on_off else None,
                        default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_threads(flags: "OptionFlags") -> None:
    """``--threads N``, from ``TrainConfig.threads``: every command that computes has it."""
    flags.add(TrainConfig, "threads")


def use_threads(args: argparse.Namespace, torch: bool | None = None) -> int:
    """Apply ``--threads`` (or the default rule) to this process before any work; returns the count.
    ``torch``: as :func:`fusekit.threads.apply_threads` (True for commands that train)."""
    from fusekit.threads import apply_threads

    return apply_threads(args.threads, torch=torch)


def add_quiet(parser: argparse.ArgumentParser, what: str = "progress lines on stderr",
              dest: str = "quiet") -> None:
    """The one spelling of quiet: ``-q`` / ``--quiet``."""
    parser.add_argument("-q", "--quiet", dest=dest, action="store_true", help=f"no {what}")


def add_json(parser: argparse.ArgumentParser) -> None:
    """``--json``: one JSON document on stdout and nothing else there."""
    parser.add_argument("--json", action="store_true", help="print the result as one JSON document on stdout")


def note(text: str) -> None:
    """A progress line or a note, on stderr."""
    print(f"fusekit: {text}", file=sys.stderr, flush=True)


def progress_printer(quiet: bool):
    """A function printing progress lines on stderr, or doing nothing when ``quiet``."""
    return (lambda text: None) if quiet else note


def print_json(data: Any) -> None:
    """The one JSON document of a command's result."""
    print(json.dumps(data, indent=1, default=str))


def parse_pairs(items: list[str] | None, flag: str, key: str = "TASK", value: str = "COLUMN") -> dict[str, str] | None:
    """``["income=y"]`` -> ``{"income": "y"}``, for the repeatable ``KEY=VALUE`` flags (``--label``,
    ``--task-kind``, ``--task-output``, ``--input-map``); None when none was given."""
    if not items:
        return None
    pairs = {}
    for item in items:
        name, sep, given = item.partition("=")
        if not sep or not name or not given:
            raise FusekitError(f"{flag} expects {key}={value}, got {item!r}")
        pairs[name] = given
    return pairs
