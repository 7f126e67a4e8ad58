"""Where data comes from: named datasets that fusekit can obtain itself, CSV/Parquet files
encoded with a FeatureSpec, or files whose columns/arrays are named after the model inputs and
are fed as they are (:func:`load_for_models` decides which)."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Mapping, Sequence

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
    val: Path | None = None,
    test: Path | None = None,
    kinds: Mapping[str, object] | None = None,
    streaming=None,
) -> TabularDataset:
    """Load and encode ``"census-income"`` or a CSV/Parquet file for ``tasks``.

    With ``spec`` given, data is encoded with it (its holdout is used); otherwise encoders are
    fit on the training split. Census: the source columns of ``tasks`` and ``exclude_tasks``
    are removed from the inputs. Files: ``labels`` maps task -> label column (default: same
    name); ``categorical``/``dense`` name the feature columns (default: inferred), ``exclude``
    drops columns. ``holdout`` (fraction, seeded by ``holdout_seed``) is recorded in the spec.
    ``streaming`` (``fusekit.stream_config.StreamOptions``): whether each data file (and the validation and
    test rows carved from a streamed one) is read in batches or held in memory.
    """
    if not tasks:
        raise FusekitError("no task given; name at least one task")
    if len(set(tasks)) != len(tasks):
        raise FusekitError(f"task names repeat in {tasks}; give each task once")
    if str(source) in DATASETS:
        if val is not None or test is not None:
            raise FusekitError(f"{source} comes with its own validation and test split; give no {{val}} or {{test}}",
                               owner="load_dataset()")
        return DATASETS[str(source)](
            list(tasks), exclude_tasks=list(exclude_tasks or []), spec=spec, data_dir=data_dir,
            seed=seed, holdout=holdout, holdout_seed=holdout_seed,
        )
    from fusekit.data.tabular import load_tabular

    return load_tabular(
        Path(source), list(tasks), labels=labels, spec=spec, seed=seed, holdout=holdout,
        holdout_seed=holdout_seed, categorical=categorical, dense=dense, exclude=exclude, val=val, test=test,
        kinds=dict(kinds) if kinds else None, streaming=streaming,
    )


def load_for_models(
    source: str | Path,
    tasks: Mapping[str, object],
    *,
    inputs: Sequence,
    spec: FeatureSpec | None = None,
    labels: Mapping[str, str] | None = None,
    val: Path | None = None,
    test: Path | None = None,
    data_dir: Path | None = None,
    seed: int = 0,
    index_inputs: Collection[str] = (),
    streaming=None,
) -> TabularDataset:
    """The data for models with ``inputs`` (name, shape, dtype) and ``tasks`` (task -> kind name or
    TaskKind, which says how to read its labels).

    Models that carry a FeatureSpec (``spec``) get data encoded with it: ``"census-income"`` or a
    CSV/Parquet file of raw columns. Otherwise the file's columns (CSV/Parquet, a Parquet folder)
    or arrays (``.npz``) named after the inputs are fed as they are (``fusekit.data.named``), and
    the dataset's ``report`` says how each was read. Without ``val``/``test`` files, one seeded
    split of the training file that is the same for every task.
    """
    if spec is not None or str(source) in DATASETS:
        return load_dataset(source, list(tasks), labels=dict(labels) if labels else None, spec=spec,
                            data_dir=data_dir, seed=seed, val=val, test=test, kinds=tasks, streaming=streaming)
    from fusekit.data.named import read_splits

    read = read_splits(source, val, test, inputs=list(inputs), tasks=dict(tasks), labels=labels, seed=seed,
                       index_inputs=index_inputs, streaming=streaming)
    return TabularDataset(None, list(tasks), read.train, read.val, read.test, report=read.report,
                          reading=dict(read.report.reading))
