"""Label columns: which column holds each task's label, and parsing it by the task's kind.

Kinds and what they become (the dtype the losses and metrics read):

- ``binary``: 0/1 or true/false -> float32 0.0/1.0;
- ``multiclass``: class indices 0..K-1 -> int64 (out of range or fractional refused);
- ``regression``: finite numbers -> float32 (text that is not a number refused);
- ``count``: non-negative integers -> float32.

Values come as numbers (Parquet, ``.npz``) or as text (CSV, read as text so that nothing is
guessed). Every refusal is a one-line :class:`FusekitError` naming the value and its row.
"""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Collection, Mapping, Sequence

import numpy as np

from fusekit.errors import FusekitError
from fusekit.options import literal, quote
from fusekit.task_kinds import KINDS

if TYPE_CHECKING:
    from fusekit.task_kinds import TaskKind

# The function whose ``labels`` argument (task -> column) these messages name.
OWNER = "read_splits()"


def _text(values: np.ndarray) -> np.ndarray | None:
    """The values as stripped text when they are text (CSV, string columns), else None."""
    if values.dtype.kind in "USO":
        return np.char.strip(values.astype(str))
    return None


def _as_float64(values: np.ndarray, where: str, what: str) -> np.ndarray:
    """float64 of numbers or numeric text; refuses the first value that is not a number."""
    text = _text(values)
    if text is None:
        if values.dtype.kind not in "biuf":
            raise FusekitError(f"{literal(where)}: values of type {values.dtype} are not numbers; {literal(what)}")
        return values.astype(np.float64)
    try:
        return text.astype(np.float64)
    except ValueError:
        for row, item in enumerate(text):
            try:
                float(item)
            except ValueError:
                raise FusekitError(f"{literal(where)}: value {quote(str(item))} at row {row} is not a number; "
                                   f"{literal(what)}") from None
        raise  # unreachable: numpy and float() accept the same numbers


def _refuse(mask: np.ndarray, values: np.ndarray, where: str, why: str) -> None:
    if mask.any():
        row = int(np.flatnonzero(mask)[0])
        value = values[row]
        shown = value.item() if isinstance(value, np.generic) else value
        raise FusekitError(f"{literal(where)}: value {quote(shown)} at row {row} {literal(why)}")


def kind_name(kind: "str | TaskKind") -> tuple[str, int | None]:
    """(kind, classes) of a kind name or a :class:`fusekit.task_kinds.TaskKind`."""
    if isinstance(kind, str):
        return kind, None
    return kind.kind, kind.classes


def parse_labels(values: Any, kind: "str | TaskKind", classes: int | None = None,
                 where: str = "the labels") -> np.ndarray:
    """One task's labels ``[N]`` parsed by ``kind`` (see the module docstring).

    ``values``: a 1-D array-like (or ``[N, 1]``) of numbers, booleans or text. ``kind``: a name
    of ``task_kinds.KINDS`` or a ``TaskKind`` (whose classes then apply). ``classes``: K of a
    multiclass task (the width of its models' output); None accepts any index >= 0. ``where``
    names the column and file in the messages.
    """
    kind, own = kind_name(kind)
    classes = classes if classes is not None else own
    if kind not in KINDS:
        raise FusekitError(f"unknown task kind {quote(kind)} for {literal(where)}; use one of {', '.join(KINDS)}")
    raw = np.asarray(values)
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise FusekitError(f"{literal(where)} has shape {list(raw.shape)}; a task's labels are one value per row "
                           f"([N] or [N, 1])")
    if kind == "binary":
        return _binary(raw, where)
    if kind == "regression":
        x = _as_float64(raw, where, "regression labels must be numbers")
        _refuse(~np.isfinite(x), raw, where, "is not a finite number; regression labels must be finite numbers")
        with np.errstate(over="ignore"):
            narrowed = x.astype(np.float32)
        _refuse(~np.isfinite(narrowed), raw, where,
                "is beyond the float32 range; rescale the regression target")
        return x.astype(np.float32)
    what = "count labels must be non-negative integers" if kind == "count" else \
        "multiclass labels must be class indices 0..K-1"
    x = _as_float64(raw, where, what)
    _refuse(~np.isfinite(x), raw, where, f"is missing or not finite; {what}")
    _refuse(x != np.round(x), raw, where, f"is not an integer; {what}")
    _refuse(x < 0, raw, where, f"is negative; {what}")
    if kind == "count":
        return x.astype(np.float32)
    if classes is not None:
        if int(classes) < 2:
            raise FusekitError(f"{literal(where)}: a multiclass task needs 2 or more classes, got {int(classes)}")
        _refuse(x >= int(classes), raw, where,
                f"is not a class index 0..{int(classes) - 1} (the task has {int(classes)} classes); {what}")
    return x.astype(np.int64)


def _binary(raw: np.ndarray, where: str) -> np.ndarray:
    if raw.dtype == np.bool_:
        return raw.astype(np.float32)
    text = _text(raw)
    if text is not None:
        lowered = np.char.lower(text)
        out = np.full(len(raw), np.nan)
        out[(lowered == "1") | (lowered == "true") | (lowered == "1.0")] = 1.0
        out[(lowered == "0") | (lowered == "false") | (lowered == "0.0")] = 0.0
    else:
        out = _as_float64(raw, where, "binary labels must be 0/1 or true/false")
    _refuse(~np.isin(out, (0.0, 1.0)), raw, where, "is not binary; binary labels must be 0/1 or true/false")
    return out.astype(np.float32)


def class_count(labels: np.ndarray, classes: int | None) -> int:
    """K of a multiclass task: ``classes`` when given, else one more than the largest index seen."""
    if classes is not None:
        return int(classes)
    return int(labels.max()) + 1 if len(labels) else 0


def label_columns(tasks: Sequence[str], columns: Collection[str], labels: Mapping[str, str] | None = None,
                  inputs: Collection[str] = (), where: str = "the data") -> dict[str, str]:
    """``{task: column}``: the column named after each task, unless ``labels`` names another.

    Refuses a task whose column the data lacks (listing close names), a mapping for an unknown
    task, and a label column that is also a model input (the model would be fed its answer).
    """
    labels = dict(labels or {})
    unknown = [t for t in labels if t not in tasks]
    if unknown:
        raise FusekitError(f"{{labels}} names task(s) {literal(', '.join(unknown))} that are not among the tasks "
                           f"({literal(', '.join(tasks))}); map only those tasks", owner=OWNER)
    found: dict[str, str] = {}
    for task in tasks:
        column = labels.get(task, task)
        if column in inputs:
            raise FusekitError(f"the label column {quote(column)} of task {quote(task)} is also a model input; "
                               "a label is never fed to the model, so name another label column in {labels}",
                               owner=OWNER)
        if column not in columns:
            close = difflib.get_close_matches(column, [str(c) for c in columns if c not in inputs], n=3, cutoff=0.5)
            hint = f" (close: {', '.join(close)})" if close else ""
            raise FusekitError(f"{literal(where)} has no label column {quote(column)} for task {quote(task)}"
                               f"{literal(hint)}; name the task's label column in {{labels}}", owner=OWNER)
        found[task] = column
    return found
