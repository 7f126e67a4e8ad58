"""The benchmark's protocol: evaluation splits, one result file per finished cell, paired intervals.

A **cell** is one method trained (or scored) on one evaluation split with one seed. Every method sees
the same splits and seeds. The evaluation pool is the dataset's test split: rows that no source model,
baseline or fused model ever trained or early-stopped on. Split ``k`` halves that pool with seed ``k``
into a validation half (early stopping, and fuse's guard) and a test half (the reported score).

Intervals. Splits are random halves of one pool, so their test halves overlap and the spread of a
difference over splits understates its uncertainty. The interval of a paired difference is the
corrected resampled t-interval of Nadeau and Bengio (2003): with ``K`` splits, per-split mean
differences ``d_k`` (seeds averaged within a split) and test/validation sizes ``n_test``/``n_val``,
``mean(d) ± t(0.975, K-1) · sd(d) · sqrt(1/K + n_test/n_val)``. With one split it falls back to a
t-interval over seeds, which measures training noise only, and says so.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from fusekit.errors import FusekitError
from fusekit.io import atomic_file
from fusekit.options import literal

PROTOCOL_NAME = "protocol.json"
CELLS_DIR = "cells"


@dataclass
class Cell:
    """One method's test scores on one split with one seed (``seed`` None: untrained rows)."""

    task_set: str
    method: str
    split: int
    seed: int | None
    scores: dict[str, float]
    seconds: float | None = None
    epochs: int | None = None
    info: dict[str, Any] = field(default_factory=dict)  # parameters, trainable, restored_average, error ...

    @property
    def key(self) -> tuple[str, str, int, int | None]:
        return self.task_set, self.method, self.split, self.seed


def task_set_key(tasks: Iterable[str]) -> str:
    """The folder name of a task set (``income+never_married``)."""
    return "+".join(tasks)


class CellStore:
    """Finished cells on disk, one small JSON file each, written atomically as each cell ends."""

    def __init__(self, root: Path):
        self.root = Path(root)

    def path(self, task_set: str, method: str, split: int, seed: int | None) -> Path:
        name = f"split{split}-" + ("untrained" if seed is None else f"seed{seed}") + ".json"
        return self.root / task_set / method / name

    def get(self, task_set: str, method: str, split: int, seed: int | None) -> Cell | None:
        """The finished cell, or None when it has not run."""
        path = self.path(task_set, method, split, seed)
        if not path.is_file():
            return None
        try:
            return Cell(**json.loads(path.read_text()))
        except (ValueError, TypeError) as exc:
            raise FusekitError(f"{literal(path)} is not a cell written by `fusekit bench` "
                               f"({type(exc).__name__}); delete it to run that cell again") from None

    def put(self, cell: Cell) -> None:
        """Write one finished cell (atomically: a crash never leaves half a cell)."""
        path = self.path(*cell.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as tmp:
            Path(tmp).write_text(json.dumps(asdict(cell), indent=1))

    def all(self) -> list[Cell]:
        """Every finished cell, in a stable order."""
        cells = []
        for path in sorted(self.root.glob("*/*/*.json")):
            cells.append(self.get(path.parent.parent.name, path.parent.name, *_parse_name(path.name)))
        return [c for c in cells if c is not None]


def _parse_name(name: str) -> tuple[int, int | None]:
    split, _, rest = name.removesuffix(".json").partition("-")
    seed = None if rest == "untrained" else int(rest.removeprefix("seed"))
    return int(split.removeprefix("split")), seed


def check_protocol(out_dir: Path, protocol: dict, force: bool) -> bool:
    """Start or resume a run in ``out_dir``; True when finished cells are reused.

    A folder that holds the same protocol resumes (its cells are kept); one with another protocol is
    refused unless ``force`` (then it starts over); any other non-empty folder needs ``force``.
    """
    from fusekit.io import OUTPUT_OWNER

    out_dir = Path(out_dir)
    recorded = out_dir / PROTOCOL_NAME
    if force or not out_dir.is_dir() or not any(out_dir.iterdir()):
        return False
    if not recorded.is_file():
        raise FusekitError(f"output directory {literal(out_dir)} exists, is not empty and holds no bench run; "
                           "choose another {out_dir} or pass {force=True}", owner=OUTPUT_OWNER)
    try:
        old = json.loads(recorded.read_text())
    except ValueError:
        old = None
    if old != protocol:
        differs = sorted(k for k in set(protocol) | set(old or {}) if (old or {}).get(k) != protocol.get(k))
        raise FusekitError(f"{literal(out_dir)} holds a bench run with another protocol (different "
                           f"{', '.join(differs) or 'file'}); pass {{force=True}} to start over or choose another "
                           "{out_dir}", owner=OUTPUT_OWNER)
    return True


def write_protocol(out_dir: Path, protocol: dict) -> None:
    """Record the protocol a run's cells were made under (what a resume must match)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_file(out_dir / PROTOCOL_NAME) as tmp:
        Path(tmp).write_text(json.dumps(protocol, indent=1, sort_keys=True))


def evaluation_splits(pool_rows: int, splits: list[int]) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """(split, validation rows, test rows) of the pool for each split seed: seeded halves."""
    from fusekit.data.splits import seeded_halves

    if pool_rows < 4:
        raise FusekitError(f"the test split has {pool_rows} rows; the benchmark halves it into validation and "
                           "test per split and needs at least 4")
    return [(k, *seeded_halves(pool_rows, k)) for k in splits]


@dataclass
class PairedDifference:
    """A method minus a reference on one task, over the cells both have."""

    mean: float
    low: float | None
    high: float | None
    splits: int
    cells: int
    basis: str  # how the interval was made

    @property
    def verdict(self) -> str:
        """``better``/``worse`` when the 95 % interval excludes zero, else ``tie``; ``unknown`` without one."""
        if self.low is None or self.high is None:
            return "unknown"
        return "better" if self.low > 0 else "worse" if self.high < 0 else "tie"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _t(dof: int) -> float:
    from scipy.stats import t

    return float(t.ppf(0.975, dof))


def split_means(cells: list[Cell], task: str) -> dict[int, float]:
    """Per split, the mean score of ``cells`` over their seeds."""
    by_split: dict[int, list[float]] = {}
    for c in cells:
        value = c.scores.get(task)
        if value is not None and not c.info.get("error"):
            by_split.setdefault(c.split, []).append(float(value))
    return {k: float(np.mean(v)) for k, v in sorted(by_split.items())}


def paired_difference(mine: list[Cell], reference: list[Cell], task: str,
                      test_over_val: float = 1.0) -> PairedDifference | None:
    """``mine`` minus ``reference`` on ``task`` over the splits both have (None when none)."""
    a, b = split_means(mine, task), split_means(reference, task)
    common = sorted(set(a) & set(b))
    if not common:
        return None
    diffs = np.array([a[k] - b[k] for k in common])
    n_cells = sum(1 for c in mine if c.split in common and task in c.scores)
    if len(common) >= 2:
        k = len(common)
        half = _t(k - 1) * float(np.std(diffs, ddof=1)) * math.sqrt(1.0 / k + test_over_val)
        return PairedDifference(float(diffs.mean()), float(diffs.mean() - half), float(diffs.mean() + half), k,
                                n_cells, f"corrected resampled t over {k} splits")
    # One split: the seeds are the only replication (training noise, not test-set noise).
    ref = b[common[0]]
    seeds = np.array([float(c.scores[task]) - ref for c in mine if c.split == common[0] and task in c.scores
                      and not c.info.get("error")])
    if len(seeds) < 2:
        return PairedDifference(float(diffs.mean()), None, None, 1, n_cells, "one split and one seed: no interval")
    half = _t(len(seeds) - 1) * float(np.std(seeds, ddof=1)) / math.sqrt(len(seeds))
    return PairedDifference(float(seeds.mean()), float(seeds.mean() - half), float(seeds.mean() + half), 1,
                            n_cells, f"t over {len(seeds)} seeds of one split (training noise only)")


def spreads(cells: list[Cell], task: str) -> tuple[float | None, float | None]:
    """(SD over splits of the per-split means, mean over splits of the SD over seeds)."""
    means = list(split_means(cells, task).values())
    over_splits = float(np.std(means, ddof=1)) if len(means) > 1 else None
    within = []
    for k in {c.split for c in cells}:
        values = [float(c.scores[task]) for c in cells if c.split == k and task in c.scores
                  and not c.info.get("error")]
        if len(values) > 1:
            within.append(float(np.std(values, ddof=1)))
    return over_splits, (float(np.mean(within)) if within else None)
