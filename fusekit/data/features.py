"""The feature specification: which columns a model reads and how they are encoded.

A FeatureSpec travels with every model fusekit writes (ONNX metadata ``fusekit.feature_spec``)
so that data for fusing and serving is encoded exactly as it was for training.
Categorical values become ids ``1..len(vocab)`` in vocabulary order; id 0 is every value not
in the vocabulary (unseen or missing). Dense values become ``(x - mean) / std`` as float32.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError

SPEC_VERSION = 1


@dataclass
class CategoricalFeature:
    """A categorical column and its vocabulary (id = position + 1; 0 = unseen)."""

    name: str
    vocab: list[str]

    @property
    def cardinality(self) -> int:
        """Number of ids, the unseen id 0 included."""
        return len(self.vocab) + 1


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
        missing = [name for name in self.columns if name not in df.columns]
        if missing:
            raise FusekitError(f"{source} lacks column(s) {', '.join(missing[:5])} that the feature specification needs")
        n = len(df)
        cat = np.zeros((n, len(self.categorical)), dtype=np.int64)
        for j, feature in enumerate(self.categorical):
            # Factorise once, then look the few distinct values up in the vocabulary.
            codes, uniques = pd.factorize(_as_text(df[feature.name]))
            lookup = pd.Index(feature.vocab, dtype=object).get_indexer(pd.Index(uniques, dtype=object)) + 1
            cat[:, j] = np.where(codes >= 0, lookup[codes], 0)  # not in vocab -> -1 + 1 = unseen id 0
        dense = np.zeros((n, len(self.dense)), dtype=np.float32)
        for j, feature in enumerate(self.dense):
            x = _as_float(df[feature.name], feature.name, source)
            std = feature.std if feature.std > 0 else 1.0
            dense[:, j] = ((x - feature.mean) / std).astype(np.float32)
        return cat, dense


def _as_text(values: pd.Series) -> pd.Series:
    """Text form of a column as vocabularies store it (integers without a trailing .0; missing -> "")."""
    if pd.api.types.is_string_dtype(values) or values.dtype == object:
        return values.fillna("").astype(str) if values.hasnans else values
    if pd.api.types.is_float_dtype(values):
        finite = np.isfinite(values.to_numpy())
        if finite.all() and np.all(values == np.round(values)):
            return values.astype(np.int64).astype(str)
    return values.astype(str)


def _as_float(values: pd.Series, name: str, source: str) -> np.ndarray:
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
    cats = []
    for name in categorical:
        values = _as_text(df[name])
        cats.append(CategoricalFeature(name, sorted(str(v) for v in pd.unique(values))))
    dens = []
    for name in dense:
        x = _as_float(df[name], name, source)
        std = float(x.std()) if len(x) else 1.0
        dens.append(DenseFeature(name, float(x.mean()) if len(x) else 0.0, std if std > 0 else 1.0))
    return FeatureSpec(cats, dens, dataset, list(excluded or []), holdout)
