"""Fields of fusekit's option classes: each carries its choices, range and help, and checks itself.

An option class is a dataclass whose fields are made with :func:`option`; its ``__post_init__``
calls :func:`check_fields` (plus its own checks of combinations), so a bad value raises
:class:`fusekit.errors.OptionError` naming the field, never a raw ValueError or TypeError.
The command line builds its flags from the same metadata (``fusekit.cli.args``), so defaults
and choices are written once. Nothing here imports torch.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from typing import Any, Callable

from fusekit.errors import OptionError

# Seeds reach numpy, whose seeds are 32-bit: every seed option is below this.
SEED_LIMIT = 2**32
# No whole-number option is bigger (what torch and numpy take as a 64-bit integer).
INT_LIMIT = 2**63

# What a field holds; checked by check_fields. "path": str or os.PathLike; "str_map": dict of str -> str.
KINDS = ("bool", "int", "float", "str", "path", "int_list", "str_list", "str_map", "callable", "object")


def option(default: Any = dataclasses.MISSING, *, default_factory: Callable[[], Any] | Any = dataclasses.MISSING,
           kind: str | type | None = None, choices: tuple | None = None, pattern: str | None = None,
           minimum: float | None = None, above: float | None = None, below: float | None = None,
           help: str = "") -> Any:
    """A dataclass field with its checks and help as metadata.

    ``kind`` defaults to the default value's type; a default of None makes the field optional.
    ``choices`` (with ``pattern``, a regex further accepted values match); ``minimum`` (inclusive),
    ``above`` and ``below`` (exclusive) bound numbers and the items of an ``int_list``.
    """
    if kind is None:
        sample = default_factory() if callable(default_factory) else default
        kind = _kind_of(sample)
    if isinstance(kind, str) and kind not in KINDS:
        raise ValueError(f"unknown option kind {kind!r}")  # a programming error, not a user's
    metadata = {"kind": kind, "choices": tuple(choices) if choices else None, "pattern": pattern,
                "minimum": minimum, "above": above, "below": below, "help": help}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def seed_option(help: str) -> Any:
    """A seed field: a whole number from 0 to SEED_LIMIT - 1, default 0."""
    return option(0, minimum=0, below=SEED_LIMIT, help=help)


def _kind_of(value: Any) -> str:
    for kind, types in (("bool", bool), ("int", int), ("float", float), ("str", str)):
        if isinstance(value, types):
            return kind
    if isinstance(value, list) and value and all(isinstance(v, int) for v in value):
        return "int_list"
    raise ValueError(f"give the kind of an option whose default is {value!r}")


def option_fields(cls_or_obj: Any) -> dict[str, dataclasses.Field]:
    """The fields of an option class that were made with :func:`option`, by name."""
    return {f.name: f for f in dataclasses.fields(cls_or_obj) if "kind" in f.metadata}


def default_of(cls: type, name: str) -> Any:
    """The default value of field ``name`` of ``cls``."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return f.default


def literal(text: Any) -> str:
    """``str(text)`` safe inside an error message with field placeholders (braces doubled)."""
    return str(text).replace("{", "{{").replace("}", "}}")


def quote(value: Any) -> str:
    """``repr(value)`` safe inside an error message with field placeholders."""
    return literal(repr(value))


def _number(value: Any, integer: bool) -> bool:
    if isinstance(value, bool):
        return False
    if integer:
        return isinstance(value, int) and abs(value) < INT_LIMIT
    return isinstance(value, (int, float)) and math.isfinite(value)


def _check_kind(name: str, value: Any, kind: str | type) -> str | None:
    """What is wrong with the type of ``value``, or None."""
    if isinstance(kind, type):
        return None if isinstance(value, kind) else f"must be a {kind.__name__}"
    ok = {
        "bool": lambda v: isinstance(v, bool),
        "int": lambda v: _number(v, True),
        "float": lambda v: _number(v, False),
        "str": lambda v: isinstance(v, str),
        "path": lambda v: isinstance(v, (str, os.PathLike)),
        "int_list": lambda v: isinstance(v, (list, tuple)) and all(_number(x, True) for x in v),
        "str_list": lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v),
        "str_map": lambda v: isinstance(v, dict) and all(isinstance(k, str) and isinstance(x, str)
                                                         for k, x in v.items()),
        "callable": callable,
        "object": lambda v: True,
    }[kind]
    if ok(value):
        return None
    return {"bool": "must be true or false", "int": "must be a whole number (of at most 63 bits)", "float": "must be a finite number",
            "str": "must be a string", "path": "must be a path", "int_list": "must be a list of whole numbers",
            "str_list": "must be a list of strings", "str_map": "must map names to strings",
            "callable": "must be callable"}[kind]


def _check_range(value: float, meta: dict) -> str | None:
    if meta["minimum"] is not None and value < meta["minimum"]:
        return f"at least {meta['minimum']}"
    if meta["above"] is not None and value <= meta["above"]:
        return "positive" if meta["above"] == 0 else f"above {meta['above']}"
    if meta["below"] is not None and value >= meta["below"]:
        return f"below {meta['below']}"
    return None


class Options:
    """Base of the option classes: every field checked when made and by :meth:`validate`;
    a subclass checks combinations of fields in :meth:`_check`."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "Options":
        # The arguments are checked here, before the dataclass's generated __init__ would raise a
        # bare TypeError; pickling, copying and dataclasses.replace keep working (they either call
        # __new__ without arguments or pass only field names).
        names = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = [k for k in kwargs if k not in names]
        if unknown:
            near = difflib.get_close_matches(unknown[0], names, n=1)
            raise OptionError(f"{cls.__name__} has no option {quote(unknown[0])}"
                              + (f" (did you mean {near[0]}?)" if near else "")
                              + f"; its options are {', '.join(names)}", owner=cls.__name__)
        if len(args) > len(names):
            raise OptionError(f"{cls.__name__} takes at most {len(names)} options, got {len(args)} positional "
                              f"values; pass them by name ({', '.join(names)})", owner=cls.__name__)
        return super().__new__(cls)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """OptionError naming the field when a value or a combination is impossible (again after
        a field was changed)."""
        check_fields(self)
        self._check()

    def _check(self) -> None:
        """Checks across fields; none by default."""


def check_fields(obj: Any) -> None:
    """OptionError for the first field of ``obj`` whose value has the wrong type, is not among
    its choices or is out of its range."""
    for name, f in option_fields(obj).items():
        _check_field(type(obj).__name__, name, f, getattr(obj, name))


def check_value(cls: type, name: str, value: Any) -> None:
    """OptionError when ``value`` cannot be field ``name`` of option class ``cls`` (the field's own
    checks, without the class's checks of combinations): for a value a caller passes on without
    building the class."""
    _check_field(cls.__name__, name, option_fields(cls)[name], value)


def _check_field(owner: str, name: str, f: dataclasses.Field, value: Any) -> None:
    meta = f.metadata
    if value is None and f.default is None:
        return
    wrong = _check_kind(name, value, meta["kind"])
    if wrong:
        raise OptionError(f"{{{name}}} {wrong}, got {quote(value)}", owner=owner)
    if meta["choices"] and value not in meta["choices"] and not (
            meta["pattern"] and isinstance(value, str) and re.fullmatch(meta["pattern"], value)):
        raise OptionError(f"{{{name}}} must be one of {', '.join(map(str, meta['choices']))}; got {quote(value)}",
                          owner=owner)
    if meta["kind"] in ("int", "float"):
        bound = _check_range(value, meta)
        if bound:
            raise OptionError(f"{{{name}}} must be {bound}, got {quote(value)}", owner=owner)
    if meta["kind"] == "int_list":
        if not value:
            raise OptionError(f"{{{name}}} needs at least one value", owner=owner)
        bad = [x for x in value if _check_range(x, meta)]
        if bad:
            raise OptionError(f"{{{name}}} values must each be {_check_range(bad[0], meta)}, got {quote(list(value))}",
                              owner=owner)
