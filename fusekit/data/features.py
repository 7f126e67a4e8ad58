"""The feature specification: which columns a model reads and how they are encoded.

A FeatureSpec travels with every model fusekit writes (ONNX metadata ``fusekit.feature_spec``)
so that data for fusing and serving is encoded exactly as it was for training.
Categorical values become ids ``1..len(vocab)`` in vocabulary order; id 0 is every value not
in the vocabulary (unseen or missing). Dense values become ``(x - mean) / std`` as float32.

A value that is not in the vocabulary as written is looked up once more after normalising its
formatting, in this order (``CategoricalFeature.tables`` holds the three lookups):

1. exactly as written;
2. with its spaces normalised: leading and trailing spaces dropped and inner runs of spaces made
   one (the space U+0020 only; tabs and other whitespace are kept, as onnxruntime's StringSplit
   does, so that the in-graph encoder of :mod:`fusekit.deploy.raw_inputs` gives the same ids);
3. as an integer: ``33.0``, ``33.`` or ``33.000`` (after step 2) is ``33`` when the vocabulary holds
   the integer ``33`` (an optional ``-`` and ASCII digits). Leading zeros, ``+``, exponents and
   other digits are not rewritten.

A normalised form shared by two vocabulary entries goes to the entry already written in that
form, or to none (the value stays unseen): normalising never picks between two categories.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError

SPEC_VERSION = 1

# A vocabulary entry that step 3 of the normalisation can reach.
_INTEGER = re.compile(r"-?[0-9]+")


def normal_spaces(text: str) -> str:
    """``text`` without leading/trailing spaces and with inner runs of spaces made one (U+0020 only)."""
    return " ".join(part for part in text.split(" ") if part)


def integer_text(text: str) -> str | None:
    """``"33"`` for ``"33.0"``, ``"33."`` or ``"33.00"``; None when ``text`` is not one integer part, a
    dot and only zeros (the vocabulary decides whether the integer part is a category)."""
    head, dot, tail = text.partition(".")
    if not dot or tail.strip("0"):
        return None  # no dot, a second dot, or a non-zero fraction
    return head


@dataclass(frozen=True)
class LookupTables:
    """The three lookups of a categorical value (see the module docstring): value -> id."""

    exact: dict[str, int]
    spaced: dict[str, int]
    integer: dict[str, int]

    def lookup(self, value: str) -> int:
        """The id of one text value (0: unseen)."""
        found = self.exact.get(value)
        if found is not None:
            return found
        spaced = normal_spaces(value)
        found = self.spaced.get(spaced)
        if found is not None:
            return found
        return self.integer.get(integer_text(spaced) or "", 0)


@lru_cache(maxsize=256)
def _tables(vocab: tuple[str, ...]) -> LookupTables:
    exact = {v: i + 1 for i, v in enumerate(vocab)}
    by_form: dict[str, list[int]] = {}
    for value, index in exact.items():
        by_form.setdefault(normal_spaces(value), []).append(index)
    spaced = {}
    for form, ids in by_form.items():
        if form in exact:  # an entry written in the normal form wins
            spaced[form] = exact[form]
        elif len(ids) == 1:
            spaced[form] = ids[0]
    integer = {form: index for form, index in spaced.items() if _INTEGER.fullmatch(form)}
    return LookupTables(exact, spaced, integer)


@dataclass(frozen=True)
class EncodingReport:
    """How the categorical values of encoded rows were found: per column, the rows whose value was
    not in the vocabulary even after normalising (``unseen``: id 0) and the rows found only after
    normalising (``normalised``)."""

    rows: int
    unseen: dict[str, int]
    normalised: dict[str, int]

    def to_dict(self) -> dict:
        """JSON-ready: rows, and the columns with unseen or normalised values."""
        return {"rows": self.rows, "unseen": {k: v for k, v in self.unseen.items() if v},
                "normalised": {k: v for k, v in self.normalised.items() if v}}

    def lines(self) -> list[str]:
        """One line per column with unseen or normalised values (none when every value was found)."""
        out = []
        for name in self.unseen:
            unseen, normalised = self.unseen[name], self.normalised.get(name, 0)
            if unseen or normalised:
                parts = [f"{unseen} of {self.rows} rows unseen (id 0)"] if unseen else []
                parts += [f"{normalised} found after normalising spaces or numbers"] if normalised else []
                out.append(f"column {name!r}: {', '.join(parts)}")
        return out


@dataclass
class CategoricalFeature:
    """A categorical column and its vocabulary (id = position + 1; 0 = unseen)."""

    name: str
    vocab: list[str]

    @property
    def cardinality(self) -> int:
        """Number of ids, the unseen id 0 included."""
        return len(self.vocab) + 1

    @property
    def tables(self) -> LookupTables:
        """The exact, space-normalised and integer lookups of this vocabulary."""
        return _tables(tuple(self.vocab))


@dataclass
class DenseFeature:
    """A continuous column and its standardisation."""

    name: str
    mean: float
    std: float


@dataclass
class FeatureSpec:
    """Columns, vocabularies and scaling of a model's inputs (see docs/architecture.md)."""

    categorical: list[CategoricalFeature] = field(default_factory=list)
    dense: list[DenseFeature] = field(default_factory=list)
    dataset: str = ""
    excluded: list[str] = field(default_factory=list)
    holdout: dict | None = None
    # The validation/test split the model was trained with: seed, rows per split and a sha256 of
    # the row indices (fusekit.data.dataset.split_record); checked whenever data is loaded for it.
    split: dict | None = None

    @property
    def cardinalities(self) -> list[int]:
        """Embedding table size of each categorical column."""
        return [c.cardinality for c in self.categorical]

    @property
    def columns(self) -> list[str]:
        """Every source column the spec reads, categorical first."""
        return [c.name for c in self.categorical] + [d.name for d in self.dense]

    def to_dict(self) -> dict:
        """A JSON-ready dict."""
        return {
            "version": SPEC_VERSION,
            "dataset": self.dataset,
            "categorical": [{"name": c.name, "vocab": list(c.vocab)} for c in self.categorical],
            "dense": [{"name": d.name, "mean": float(d.mean), "std": float(d.std)} for d in self.dense],
            "excluded": list(self.excluded),
            "holdout": dict(self.holdout) if self.holdout else None,
            **({"split": dict(self.split)} if self.split else {}),
        }

    def to_json(self) -> str:
        """Compact JSON text (stable key order)."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "FeatureSpec":
        """Parse ``to_json`` output; FusekitError when the text is not a feature specification."""
        try:
            raw = json.loads(text)
            if not isinstance(raw, dict):
                raise ValueError("not an object")
            version = int(raw.get("version", SPEC_VERSION))
            if version > SPEC_VERSION:
                raise ValueError(f"version {version} is newer than this fusekit understands")
            categorical = [CategoricalFeature(str(c["name"]), [str(v) for v in c["vocab"]]) for c in raw["categorical"]]
            dense = [DenseFeature(str(d["name"]), float(d["mean"]), float(d["std"])) for d in raw["dense"]]
            holdout = raw.get("holdout")
            if holdout is not None:
                holdout = {"fraction": float(holdout["fraction"]), "seed": int(holdout["seed"])}
            spec = cls(categorical, dense, str(raw.get("dataset", "")), [str(x) for x in raw.get("excluded", [])], holdout)
            split = raw.get("split")
            if split is not None:
                spec.split = {"seed": int(split["seed"]), "rows": {k: int(v) for k, v in split["rows"].items()},
                              "sha256": str(split["sha256"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise FusekitError(f"invalid feature specification ({exc}); re-export the model with fusekit") from None
        if not spec.categorical and not spec.dense:
            raise FusekitError("invalid feature specification (no columns); re-export the model with fusekit")
        return spec

    def fingerprint(self) -> str:
        """sha256 of what decides the encoding (columns, vocabularies, scaling); equal fingerprints
        mean identical model inputs for identical rows."""
        part = {
            "categorical": [[c.name, list(c.vocab)] for c in self.categorical],
            "dense": [[d.name, repr(float(d.mean)), repr(float(d.std))] for d in self.dense],
        }
        return hashlib.sha256(json.dumps(part, separators=(",", ":")).encode()).hexdigest()

    def encode(self, df: pd.DataFrame, source: str = "data") -> tuple[np.ndarray, np.ndarray]:
        """Encode rows: ``(cat int64 [N, C], dense float32 [N, D])``.

        Raises FusekitError when a column is missing or a dense value is not a finite number
        (naming the column and the 0-based row).
        """
        cat, dense, _ = self.encode_with_report(df, source)
        return cat, dense

    def encode_with_report(self, df: pd.DataFrame, source: str = "data") -> tuple[np.ndarray, np.ndarray, EncodingReport]:
        """``encode`` plus the per-column count of unseen and normalised values."""
        missing = [name for name in self.columns if name not in df.columns]
        if missing:
            raise FusekitError(f"{source} lacks column(s) {', '.join(missing[:5])} that the feature specification needs")
        n = len(df)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        unseen: dict[str, int] = {}
        normalised: dict[str, int] = {}
        for j, feature in enumerate(self.categorical):
            # Factorise once, then look the few distinct values up in the vocabulary; only the
            # values not found as written go through the normalisation.
            codes, uniques = pd.factorize(as_text(df[feature.name]))
            lookup = pd.Index(feature.vocab, dtype=object).get_indexer(pd.Index(uniques, dtype=object)) + 1
            exact = lookup > 0
            tables = feature.tables
            for k in np.flatnonzero(~exact):
                lookup[k] = tables.lookup(str(uniques[k]))
            if len(uniques):
                ids = np.where(codes >= 0, lookup[codes], 0)
                late = (codes >= 0) & ~exact[codes] & (ids > 0)
            else:  # no rows, or every value missing
                ids, late = np.zeros(n, np.int64), np.zeros(n, bool)
            cat[:, j] = ids
            unseen[feature.name] = int(np.count_nonzero(ids == 0))
            normalised[feature.name] = int(np.count_nonzero(late))
        dense = np.zeros((n, len(self.dense)), dtype=np.float32)
        for j, feature in enumerate(self.dense):
            x = as_float(df[feature.name], feature.name, source)
            std = feature.std if feature.std > 0 else 1.0
            dense[:, j] = ((x - feature.mean) / std).astype(np.float32)
        return cat, dense, EncodingReport(n, unseen, normalised)


def as_text(values: pd.Series) -> pd.Series:
    """Text form of a column as vocabularies store it (integers without a trailing .0; missing -> "")."""
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        return values.fillna("").astype(str) if values.hasnans else values
    if pd.api.types.is_float_dtype(values):
        finite = np.isfinite(values.to_numpy())
        if finite.all() and np.all(values == np.round(values)):
            return values.astype(np.int64).astype(str)
    return values.astype(str)


def as_float(values: pd.Series, name: str, source: str) -> np.ndarray:
    """A dense column as float64; FusekitError at the first value that is not a finite number."""
    if pd.api.types.is_bool_dtype(values):
        x = values.to_numpy(dtype=np.float64)
    elif pd.api.types.is_numeric_dtype(values):
        x = values.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(x)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        if isinstance(values.index, pd.RangeIndex):  # a record batch of a streamed file says its rows
            row = int(values.index[row])
        raise FusekitError(
            f"{source}: dense column {name!r} has a non-finite or non-numeric value {values.iloc[row]!r} "
            f"at row {row} ({int(bad.sum())} such rows); clean or impute it"
        )
    return x


def fit_spec(
    df: pd.DataFrame,
    categorical: list[str],
    dense: list[str],
    dataset: str,
    excluded: list[str] | None = None,
    holdout: dict | None = None,
    source: str = "training data",
) -> FeatureSpec:
    """Fit vocabularies (sorted distinct values) and mean/std on ``df`` (the training split only)."""
    cats = [vocabulary_of(name, df[name]) for name in categorical]
    dens = [scaling_of(name, as_float(df[name], name, source)) for name in dense]
    return FeatureSpec(cats, dens, dataset, list(excluded or []), holdout)


def vocabulary_of(name: str, values: pd.Series) -> CategoricalFeature:
    """A categorical feature fitted on ``values`` (every row's, or only their distinct values: the same)."""
    return CategoricalFeature(name, sorted(str(v) for v in pd.unique(as_text(values))))


def scaling_of(name: str, x: np.ndarray) -> DenseFeature:
    """A dense feature fitted on every row's value ``x`` (float64): its mean and std (1 when 0)."""
    std = float(x.std()) if len(x) else 1.0
    return DenseFeature(name, float(x.mean()) if len(x) else 0.0, std if std > 0 else 1.0)
