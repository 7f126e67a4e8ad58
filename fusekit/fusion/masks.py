"""Which input marks the padding of sequence boundaries, so that AKF pools real positions only.

AKF sees a sequence boundary [B, T, D] as its mean over the positions (fusion/boundaries.py).
Over padded rows that mean would include the padding, and the fused model's output would then
change with how far a row was padded, which the sources' own masked layers do not. With a mask
input [B, T] (by default one named ``attention_mask``, nonzero at real tokens, as tokenizers give
it), the mean is taken over the real positions of each row.

The option (``FusionOptions.sequence_mask``): ``auto`` (``attention_mask`` when the models read
one), ``none``, an input name (nonzero = a real position), or ``NAME:padding`` (nonzero = padding,
as torch's ``src_key_padding_mask``). A level's boundary is masked when its length dim is the
mask's second dim; ``auto`` masks nothing when no boundary matches, a named mask is refused then.
"""
from __future__ import annotations

from dataclasses import dataclass

from fusekit.errors import FusekitError, OptionError

AUTO_NAME = "attention_mask"
_POSITION_AXIS = {"sequence": 1, "time_major": 0}


@dataclass(frozen=True)
class SequenceMask:
    """The mask input, its polarity and the levels whose boundary it masks."""

    input: str
    padding: bool  # nonzero marks padding (else nonzero marks a real position)
    levels: tuple[int, ...]

    def to_dict(self) -> dict:
        """Plain dict for metrics.json."""
        return {"input": self.input, "nonzero_marks": "padding" if self.padding else "real positions",
                "levels": [level + 1 for level in self.levels]}


def check_option(text: str) -> None:
    """OptionError unless ``text`` is auto, none, NAME or NAME:padding."""
    name, _, polarity = str(text).partition(":")
    if not name or polarity not in ("", "padding"):
        raise OptionError(f"{{sequence_mask}} must be auto, none, an input name or NAME:padding, not {text!r}",
                          owner="FusionOptions")


def resolve(option: str, inputs: list, boundaries: list, batch: str) -> SequenceMask | None:
    """The mask that ``option`` names for a pool with these manifest inputs and boundaries."""
    if option == "none":
        return None
    name, _, polarity = option.partition(":")
    explicit = option != "auto"
    name = AUTO_NAME if not explicit else name
    spec = next((i for i in inputs if i.name == name), None)
    if spec is None:
        if explicit:
            raise FusekitError(f"{{sequence_mask}} names input {name!r}, which the models do not read; they read "
                               f"{', '.join(i.name for i in inputs)}", owner="FusionOptions")
        return None
    if len(spec.shape) != 2:
        if explicit:
            raise FusekitError(f"the mask input {name!r} has shape {spec.shape}; a sequence mask is [batch, length]",
                               owner="FusionOptions")
        return None
    length = spec.shape[1]
    levels = tuple(b.level - 1 for b in boundaries
                   if b.layout(batch) in _POSITION_AXIS and b.shape[_POSITION_AXIS[b.layout(batch)]] == length)
    if not levels:
        if explicit:
            raise FusekitError(f"the mask input {name!r} is [batch, {length}], but no level's boundary is a sequence "
                               f"of that length; pass {{sequence_mask='none'}}", owner="FusionOptions")
        return None
    return SequenceMask(name, polarity == "padding", levels)
