"""The one exception type users see: a one-line message saying what is wrong and what to do.

A message may name options of a class (``owner``) as placeholders: ``{field}`` or
``{field=value}``. The library renders them by field name (``FusionOptions.fuse_at``,
``FusionOptions.fuse_at='all'``); the command line renders the same error with its own flags
(``--fuse-at``, ``--fuse-at all``) through :meth:`FusekitError.render`, so the library never
names a flag.

An owner ending in ``()`` is a library function, and its placeholders name the function's
arguments: the library renders them bare (``levels``, ``levels=5``), a command renders them with
the flags it passes to those arguments (``--levels``, ``--levels 5``; see
``fusekit.cli.args.OptionFlags.spell``).
"""
from __future__ import annotations

import re
from typing import Mapping

# {field} or {field=value}; field names are Python identifiers; {{ and }} are literal braces.
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([A-Za-z_]\w*)(?:=([^{}]*))?\}")

# What a command line knows about one option: its flag and, for an on/off flag, the value
# of the field that the flag sets (``--no-mtm`` sets use_mtm to False); None for a valued flag.
Flag = tuple[str, object]


class FusekitError(Exception):
    """A problem with the user's input or environment; the CLI prints it without a traceback.

    ``owner``: the option class whose fields the message names as placeholders, or the function
    (``"decompose()"``) whose arguments they name; none: a plain message.
    """

    def __init__(self, message: str = "", *, owner: str | None = None):
        self.template = message
        self.owner = owner
        super().__init__(self.render() if owner else message)

    def render(self, flags: Mapping[str, Flag] | None = None) -> str:
        """The message with option placeholders spelled by ``flags`` (``field`` or ``Owner.field``
        -> (flag, value the flag sets)); fields without a flag keep their library name
        (``Owner.field``, or the bare argument name for a function owner)."""
        if self.owner is None:
            return str(self)
        flags = flags or {}

        def spell(match: re.Match) -> str:
            name, value = match.group(1), match.group(2)
            if name is None:
                return match.group(0)[0]
            flag = flags.get(f"{self.owner}.{name}", flags.get(name))
            if flag is None:
                # A library caller passed the argument by its name; an option lives in its class.
                spelled = name if self.owner.endswith("()") else f"{self.owner}.{name}"
                return spelled + (f"={value}" if value is not None else "")
            text, sets = flag
            if value is None:
                return text
            value = value.strip("'\"")
            if sets is not None:  # an on/off flag: present when the value is the one it sets
                return text if value == str(sets) else f"no {text}"
            return f"{text} {value}"

        return _PLACEHOLDER.sub(spell, self.template)

    def __reduce__(self):
        # Keeps the placeholders across pickling (worker processes), which rebuilding from args would lose.
        return _restore, (type(self), self.template, dict(self.__dict__))


class OptionError(FusekitError):
    """An option of an option class has a bad value or a bad combination with another option.

    ``field`` is the first field the message names; the message names fields, never flags.
    """

    def __init__(self, message: str, *, owner: str, field: str | None = None):
        found = next((m.group(1) for m in _PLACEHOLDER.finditer(message) if m.group(1)), None)
        self.field = field or found
        super().__init__(message, owner=owner)


def _restore(cls: type, template: str, state: dict) -> FusekitError:
    error = cls.__new__(cls)
    error.__dict__.update(state)
    Exception.__init__(error, error.render() if error.owner else template)
    return error


class TrainingInterrupted(FusekitError):
    """Ctrl-C during training; the last finished epoch is in the checkpoint."""


class TrainingDiverged(OptionError):
    """The training loss became NaN or infinite. ``checkpoint``: the last good epoch's checkpoint,
    named in the message only when it exists."""

    def __init__(self, loss: float, epoch: int, checkpoint: object = None):
        self.loss, self.epoch, self.checkpoint = loss, epoch, checkpoint
        where = f"; the last good epoch is kept in {checkpoint}" if checkpoint is not None else ""
        where = where.replace("{", "{{").replace("}", "}}")
        super().__init__(f"training loss became {loss} in epoch {epoch}{where}; lower {{lr}} and retry",
                         owner="TrainConfig")

    def without_checkpoint(self) -> "TrainingDiverged":
        """The same error once its checkpoint was removed."""
        return TrainingDiverged(self.loss, self.epoch, None)
