"""Where data comes from: named datasets that fusekit can obtain itself, or CSV/Parquet files."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from fusekit.data.census import load_census
from fusekit.data.dataset import TabularDataset
from fusekit.data.features import FeatureSpec
from fusekit.errors import FusekitError

# Named datasets: name -> loader(tasks, *, exclude_tasks, spec, data_dir, seed, holdout, holdout_seed).
DATASETS: dict[str, Callable[..., TabularDataset]] = {"census-income": load_census}


def load_dataset(
    source: str | Path,
    tasks: list[str],
    *,
    labels: dict[str, str] | None = None,
    spec: FeatureSpec | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    exclude_tasks: list[str] | None = None,
    holdout: float = 0.0,
    holdout_seed: int = 0,
    categorical: list[str] | None = None,
    dense: list[str] | None = None,
    exclude: list[str] | None = None,
) -> TabularDataset:
    """Load and encode ``"census-income"`` or a CSV/Parquet file for ``tasks``.

    With ``spec`` given, data is encoded with it (its holdout is used); otherwise encoders are
    fit on the training split. Census: the source columns of ``tasks`` and ``exclude_tasks``
    are removed from the inputs. Files: ``labels`` maps task -> label column (default: same
    name); ``categorical``/``dense`` name the feature columns (default: inferred), ``exclude``
    drops columns. ``holdout`` (fraction, seeded by ``holdout_seed``) is recorded in the spec.
    """
    if not tasks:
        raise FusekitError("no task given; name at least one task")
    if len(set(tasks)) != len(tasks):
        raise FusekitError(f"task names repeat in {tasks}; give each task once")
    if str(source) in DATASETS:
        return DATASETS[str(source)](
            list(tasks), exclude_tasks=list(exclude_tasks or []), spec=spec, data_dir=data_dir,
            seed=seed, holdout=holdout, holdout_seed=holdout_seed,
        )
    from fusekit.data.tabular import load_tabular

    return load_tabular(
        Path(source), list(tasks), labels=labels, spec=spec, seed=seed, holdout=holdout,
        holdout_seed=holdout_seed, categorical=categorical, dense=dense, exclude=exclude,
    )
