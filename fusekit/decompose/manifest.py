"""manifest.json of a parts directory, and which models belong to which task.

:class:`Manifest` owns the file's format: decompose builds one and calls :meth:`Manifest.write`;
fuse, the bench and the benchmarks call :meth:`Manifest.load` and read typed entries only.
The rule "a model's task is the ``fusekit.task`` of its ONNX metadata; models are grouped by
task in their own order" lives here too (:func:`task_of`, :func:`group_by_task`), with the
validation of a task mapping the caller names explicitly (:func:`check_task_mapping`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from fusekit import __version__
from fusekit.errors import FusekitError
from fusekit.io import atomic_file, sha256_file
from fusekit.options import literal

if TYPE_CHECKING:
    from fusekit.data.features import FeatureSpec

MANIFEST = "manifest.json"
# The version of manifest.json's layout: raised when a change would mislead an older reader.
# A manifest without the field is format 1 (written before it existed).
FORMAT = 1
TASK_KEY = "fusekit.task"  # single-task models: the task they serve
TASKS_KEY = "fusekit.tasks"  # fused models: JSON list of the tasks, in output order
SPEC_KEY = "fusekit.feature_spec"
KINDS_KEY = "fusekit.task_kinds"  # fused models: JSON {task: TaskKind.to_dict()}
_AGAIN = "run fusekit decompose again"


# -- which models belong to which task -------------------------------------------------------------
def task_of(metadata: Mapping[str, str]) -> str | None:
    """The task a single-task model names in its ONNX metadata (``fusekit.task``), if any."""
    return metadata.get(TASK_KEY) or None


def tasks_in_metadata(metadata: Mapping[str, str]) -> list[str]:
    """The tasks a model's metadata says it serves: a fused model's list or a single model's task."""
    if TASKS_KEY in metadata:
        return list(json.loads(metadata[TASKS_KEY]))
    task = task_of(metadata)
    return [task] if task else []


def onnx_metadata(path: Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (weights not loaded)."""
    import onnx

    return {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}


def group_by_task(models: Iterable[tuple[str, str | None]], tasks: Sequence[str] | None = None,
                  where: str = "the models") -> dict[str, list[str]]:
    """``{task: [model names]}`` from ``(name, task)`` pairs, models kept in the order given.

    Without ``tasks`` every model must name a task, and tasks come in order of first appearance.
    With ``tasks`` only those are kept, in that order, and each must have a model (models of
    other tasks or of none are skipped: a folder may hold more than one pool).
    """
    groups: dict[str, list[str]] = {t: [] for t in tasks or ()}
    for name, task in models:
        if tasks is None:
            if not task:
                raise FusekitError(f"model {literal(name)} in {literal(where)} has no {TASK_KEY} metadata; "
                                   "name the tasks and their models in {tasks}", owner=TASKS_OWNER)
            groups.setdefault(task, []).append(name)
        elif task in groups:
            groups[task].append(name)
    lacking = [t for t, names in groups.items() if not names]
    if lacking:
        raise FusekitError(f"{where} has no single-task model for task(s) {', '.join(lacking)} (models carry "
                           f"their task in the {TASK_KEY} metadata); add one or choose other tasks")
    return groups


def task_groups(paths: Sequence[Path]) -> dict[str, list[str]]:
    """Group model files by the task in their metadata: ``{task: [file stems]}``, in file order.

    FusekitError naming the first file that carries no task (then the caller names the tasks).
    """
    named = []
    for path in paths:
        task = task_of(onnx_metadata(path))
        if not task:
            raise FusekitError(f"{literal(path)} has no {TASK_KEY} metadata; name the tasks and their models in "
                               "{tasks}", owner=TASKS_OWNER)
        named.append((Path(path).stem, task))
    return group_by_task(named)

# The function whose ``tasks`` argument (task -> models) the task-mapping messages name.
TASKS_OWNER = "fuse()"
# The option that lets an explicit mapping put a model in a task other than its metadata's.
IGNORE_OWNER = "FuseOptions"


def check_task_mapping(tasks: Mapping[str, Sequence[str]], known: Sequence[str],
                       where: str = "the parts", model_tasks: Mapping[str, str | None] | None = None,
                       ignore_metadata: bool = False) -> dict[str, list[str]]:
    """Validate an explicit ``{task: [models]}``: two or more tasks, each with models that ``known``
    holds, every model in one task only, and (with ``model_tasks``, each model's ``fusekit.task``)
    every model in the task its metadata names unless ``ignore_metadata``. Returns a plain copy."""
    if len(tasks) < 2:
        raise FusekitError("fusing needs at least two tasks; map two or more tasks to their models in {tasks}",
                           owner=TASKS_OWNER)
    seen: dict[str, str] = {}
    for task, models in tasks.items():
        if not models:
            raise FusekitError(f"task {task} names no model; give it at least one of {', '.join(known)}")
        for m in models:
            if m not in known:
                raise FusekitError(f"task {task} names unknown model {m!r}; {where} hold {', '.join(known)}")
            if m in seen:
                raise FusekitError(f"model {literal(m)} is in two tasks ({literal(seen[m])} and {literal(task)}); "
                                   "put each model in one task of {tasks}", owner=TASKS_OWNER)
            seen[m] = task
    for m, task in seen.items():  # after the structure: a model in two tasks is said as such
        carried = (model_tasks or {}).get(m)
        if carried and carried != task and not ignore_metadata:
            raise FusekitError(f"model {literal(m)} carries task {literal(carried)} in its {TASK_KEY} metadata "
                               f"but the task mapping puts it in task {literal(task)}; fix the mapping, or pass "
                               "{ignore_task_metadata=True} if the model really serves that task",
                               owner=IGNORE_OWNER)
    return {t: list(ms) for t, ms in tasks.items()}


def shared_feature_spec(specs: Sequence[tuple[str, str | None]]) -> FeatureSpec | None:
    """The one feature specification of ``(model name, spec JSON or None)`` pairs.

    None when no model carries one; FusekitError when only some do, or when they encode their
    inputs differently or were trained with different holdouts.
    """
    from fusekit.data.features import FeatureSpec

    parsed = {name: FeatureSpec.from_json(text) if text else None for name, text in specs}
    carrying = [m for m, s in parsed.items() if s is not None]
    if not carrying:
        return None
    if len(carrying) != len(parsed):
        lacking = [m for m, s in parsed.items() if s is None]
        raise FusekitError(f"model(s) {', '.join(lacking)} carry no feature specification but {carrying[0]} does; "
                           "use models encoded the same way")
    first = parsed[carrying[0]]
    for m in carrying[1:]:
        if parsed[m].fingerprint() != first.fingerprint():
            raise FusekitError(f"models {carrying[0]} and {m} encode their inputs differently (feature specification "
                               "fingerprints differ); use models trained on the same encoding")
        if parsed[m].split and first.split and parsed[m].split != first.split:
            raise FusekitError(f"models {carrying[0]} and {m} were trained on different validation/test splits (seed "
                               f"{first.split['seed']} vs {parsed[m].split['seed']}); train a pool on one split")
        if (parsed[m].holdout or None) != (first.holdout or None):
            raise FusekitError(f"models {carrying[0]} and {m} were trained with different holdouts "
                               f"({first.holdout} vs {parsed[m].holdout}); retrain them with the same one")
    return first


def relative_source_path(source: Path, parts_dir: Path) -> str:
    """How the manifest records a source model's file: relative to the parts directory when the
    file lies within the directory that holds it (so the two can move together), else the bare
    file name. Never an absolute path: it would name the machine's folders, and the sha256
    identifies the file anyway."""
    source, parts_dir = Path(source).resolve(), Path(parts_dir).resolve()
    try:
        rel = Path(os.path.relpath(source, parts_dir))
    except ValueError:  # another drive (Windows)
        return source.name
    climbs = sum(1 for part in rel.parts if part == "..")
    return rel.as_posix() if climbs <= 1 else source.name


# -- the typed manifest ----------------------------------------------------------------------------
def _fail(where: Path | str, what: str) -> FusekitError:
    return FusekitError(f"{where} {what}; {_AGAIN}")


def _require(raw: Any, keys: Sequence[str], where: Path | str, what: str = "") -> None:
    """``raw`` is a JSON object with every key of ``keys`` (``what``: which part of the file)."""
    prefix = f"{where}: {what}" if what else str(where)
    if not isinstance(raw, dict):
        raise FusekitError(f"{prefix} is not a JSON object; {_AGAIN}")
    missing = [k for k in keys if k not in raw]
    if missing:
        raise FusekitError(f"{prefix} lacks {', '.join(repr(k) for k in missing)}; {_AGAIN}")


# What each field of a model entry holds (manifest.json written by hand or by another tool).
_STR, _STR_LIST, _INT_LIST, _STR_MAP = "a string", "a list of strings", "a list of whole numbers", \
    "an object of strings"
_ENTRY_TYPES = {"name": _STR, "path": _STR, "sha256": _STR, "inputs": _STR_LIST, "outputs": _STR_LIST,
                "components": _STR_LIST, "component_sha256": _STR_LIST, "head": _STR, "head_sha256": _STR,
                "boundary_tensors": _STR_LIST, "layer_indices": _INT_LIST, "metadata": _STR_MAP}


def _is(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _STR_LIST:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == _INT_LIST:
        return isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    return isinstance(value, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())


def _check_shape(shape: Any, where: Path | str, what: str) -> None:
    if not isinstance(shape, list) or not all(
            (isinstance(d, int) and not isinstance(d, bool) and d > 0) or isinstance(d, str) for d in shape):
        raise _fail(where, f"has an invalid shape {shape!r} for {what}")


def _inside_name(rel: Any, where: Path | str, model: str) -> None:
    """A component path as written: relative, without ``..``, so that it names a file of the parts folder."""
    path = Path(rel)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise _fail(where, f"names component {rel!r} of model {model}, outside the parts folder (component paths "
                           "must be relative to it, without ..)")


def _plain(entry: Any) -> dict:
    """An entry's fields as a dict, without asdict's deep copy (thousands of common layers)."""
    return {f.name: getattr(entry, f.name) for f in fields(entry)}


@dataclass
class InputSpec:
    """One model input: name, shape (``batch`` symbolic) and dtype."""

    name: str
    shape: list
    dtype: str

    @property
    def width(self) -> int | None:
        """Columns of a ``[batch, width]`` input when the width is fixed."""
        return self.shape[1] if len(self.shape) > 1 and isinstance(self.shape[1], int) else None

    def dynamic_axes(self) -> dict[int, str]:
        """The non-batch axes the sources leave symbolic, by their (canonical) names: what a
        fused model exported from these sources must keep dynamic too. An unnamed dim gets
        ``<input>_dim<axis>``."""
        return {axis: dim if isinstance(dim, str) else f"{self.name}_dim{axis}"
                for axis, dim in enumerate(self.shape) if axis > 0 and not isinstance(dim, int)}


@dataclass
class Boundary:
    """The tensor between level ``level`` and the next: what every model's component outputs."""

    level: int
    shape: list
    dtype: str
    signature: str = ""
    layer: str = ""

    @property
    def dim(self) -> int:
        """Vector width of the boundary; feature maps and sequences are refused."""
        if len(self.shape) != 2 or not isinstance(self.shape[1], int):
            raise FusekitError(f"level {self.level} components output shape {self.shape}; fusekit fuses vector "
                               "outputs [batch, d] only (feature maps and sequences are not supported yet)")
        return int(self.shape[1])

    def layout(self, batch: str = "batch") -> str:
        """What the boundary holds, from its shape: ``"vector"`` [batch, d], ``"feature_map"``
        [batch, C, H, W] (channel first, as ONNX's Conv), ``"sequence"`` [batch, T, D] or
        ``"time_major"`` [T, batch, D] (recurrent ops). ``batch``: the symbolic name of the batch
        dimension (the models' inputs'), which tells the two sequence layouts apart."""
        shape = self.shape
        if len(shape) == 2 and isinstance(shape[1], int):
            return "vector"
        if len(shape) == 4 and isinstance(shape[1], int) and shape[1] != batch:
            return "feature_map"
        if len(shape) == 3 and isinstance(shape[2], int):
            if shape[0] == batch:
                return "sequence"
            if shape[1] == batch:
                return "time_major"
        raise FusekitError(f"level {self.level} components output shape {self.shape}; fusekit fuses vectors "
                           f"[{batch}, d], feature maps [{batch}, C, H, W] and sequences [{batch}, T, D] or "
                           f"[T, {batch}, D] with a fixed width C or D; cut the models elsewhere (decompose's "
                           "{levels})", owner="decompose()")

    def channels(self, batch: str = "batch") -> int:
        """The width AKF mixes: d of a vector, C of a feature map, D of a sequence."""
        return int(self.shape[1] if self.layout(batch) in ("vector", "feature_map") else self.shape[2])


@dataclass
class CommonLayerEntry:
    """A layer every model has (a cut candidate), with its index among each model's layers."""

    signature: str
    summary: str
    shape: list
    dtype: str
    layer_indices: dict[str, int]


@dataclass
class ModelEntry:
    """One source model of a parts directory; files are relative to the parts directory."""

    name: str
    path: str  # the source file, relative to the parts directory or its bare name
    sha256: str
    inputs: list[str]
    outputs: list[str]
    components: list[str]
    component_sha256: list[str]
    head: str
    head_sha256: str
    boundary_tensors: list[str]
    layer_indices: list[int]
    metadata: dict[str, str]
    # Per boundary, the source model's tensors carried beside ``y`` (``carry0``, ... in the
    # components); manifests written before carried tensors existed read as none carried.
    carried: list[list[str]] = field(default_factory=list)

    @property
    def carried_counts(self) -> list[int]:
        """How many tensors each level's component outputs after ``y`` (and the next one, or the
        head, takes after ``x``): the component is called ``component(x, *carry)`` and returns
        ``(y, *carry')``, or ``y`` alone when nothing is carried."""
        return [len(c) for c in self.carried] if self.carried else [0] * len(self.components)

    def component_inputs(self, level: int) -> list[str]:
        """Input names of the component of ``level`` (1-based; ``len(components) + 1`` for the head)."""
        if level == 1:
            return list(self.inputs)
        return ["x"] + [f"carry{k}" for k in range(self.carried_counts[level - 2])]

    def component_outputs(self, level: int) -> list[str]:
        """Output names of the component of ``level`` (1-based): ``y``, then ``carry0``, ... at level 1
        and ``next_carry0``, ... later (one ONNX graph cannot reuse its input names)."""
        prefix = "carry" if level == 1 else "next_carry"
        return ["y"] + [f"{prefix}{k}" for k in range(self.carried_counts[level - 1])]

    @property
    def task(self) -> str | None:
        """The task in the model's ``fusekit.task`` metadata, if any."""
        return task_of(self.metadata)

    @property
    def spec_json(self) -> str | None:
        """The model's feature specification as recorded in its metadata (JSON), if any."""
        return self.metadata.get(SPEC_KEY) or None


_OPTIONAL_MODEL_KEYS = ("carried",)
_MODEL_KEYS = tuple(f.name for f in fields(ModelEntry) if f.name not in _OPTIONAL_MODEL_KEYS)
_TOP_KEYS = ("fusekit_version", "levels", "inputs", "boundaries", "models")


@dataclass
class Manifest:
    """The decomposition of N models into ``levels`` aligned components plus a head each.

    ``root`` is the parts directory (set by :meth:`load` and :meth:`write`); paths resolve against it.
    """

    inputs: list[InputSpec]
    boundaries: list[Boundary]
    models: list[ModelEntry]
    common_layers: list[CommonLayerEntry] = field(default_factory=list)
    level_choice: str = ""
    fusekit_version: str = __version__
    root: Path | None = None

    # -- reading and writing ---------------------------------------------------------------------
    @property
    def levels(self) -> int:
        """Number of levels (components per model)."""
        return len(self.boundaries)

    @property
    def path(self) -> Path:
        """The manifest.json this manifest was loaded from or written to."""
        return Path(self.root or ".") / MANIFEST

    def to_dict(self) -> dict:
        """The JSON form (key order as written to manifest.json)."""
        return {"format": FORMAT, "fusekit_version": self.fusekit_version, "levels": self.levels,
                "inputs": [_plain(i) for i in self.inputs], "boundaries": [_plain(b) for b in self.boundaries],
                "common_layers": [_plain(c) for c in self.common_layers], "level_choice": self.level_choice,
                "models": [_plain(m) for m in self.models]}

    @classmethod
    def from_dict(cls, data: Any, root: Path | None = None) -> Manifest:
        """Validate the JSON form; FusekitError (one line, naming the file) for anything missing or inconsistent."""
        where = Path(root or ".") / MANIFEST
        _require(data, _TOP_KEYS, where)
        version = data.get("format", 1)
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise _fail(where, f"has an invalid format {version!r}")
        if version > FORMAT:
            raise FusekitError(f"{where} was written in manifest format {version} by fusekit "
                               f"{literal(data.get('fusekit_version'))}; this fusekit reads formats up to {FORMAT}: "
                               "upgrade fusekit, or decompose the models again with this one")
        for key in ("inputs", "boundaries", "models"):
            if not isinstance(data[key], list):
                raise _fail(where, f"has {key} that is not a list")
        levels = data["levels"]
        if not isinstance(levels, int) or isinstance(levels, bool) or levels < 1:
            raise _fail(where, f"has an invalid level count {levels!r}")
        if not isinstance(data["boundaries"], list) or len(data["boundaries"]) != levels:
            raise _fail(where, f"says {levels} levels but describes {len(data['boundaries'])} boundaries")
        for raw in data["inputs"]:
            _require(raw, ("name", "shape", "dtype"), where, "an input")
            _check_shape(raw["shape"], where, f"input {raw['name']!r}")
        for raw in data["boundaries"]:
            _require(raw, ("level", "shape", "dtype"), where, "a boundary")
            _check_shape(raw["shape"], where, f"the boundary of level {raw['level']!r}")
        models = []
        for raw in data["models"]:
            _require(raw, _MODEL_KEYS, where, "a model entry")
            wrong = next((k for k, kind in _ENTRY_TYPES.items() if not _is(raw[k], kind)), None)
            if wrong:
                raise _fail(where, f"has a model entry whose {wrong!r} is not {_ENTRY_TYPES[wrong]} "
                                   f"(got {literal(repr(raw[wrong])[:60])})")
            entry = ModelEntry(**{k: raw[k] for k in _MODEL_KEYS})
            for rel in [*entry.components, entry.head]:
                _inside_name(rel, where, entry.name)
            if len(entry.components) != levels or len(entry.component_sha256) != levels:
                raise _fail(where, f"lists {len(entry.components)} components for model {entry.name} but {levels} levels")
            carried = raw.get("carried") or [[] for _ in range(levels)]
            if (not isinstance(carried, list) or len(carried) != levels
                    or not all(isinstance(c, list) and all(isinstance(t, str) for t in c) for c in carried)):
                raise _fail(where, f"lists carried tensors for model {entry.name} that are not one list of names "
                                   f"per level ({levels})")
            entry.carried = [list(c) for c in carried]
            models.append(entry)
        if len(models) < 2:
            raise _fail(where, "lists fewer than two models")
        names = [m.name for m in models]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise _fail(where, f"lists model {dupes[0]} twice")
        common = []
        for raw in data.get("common_layers", []):
            _require(raw, [f.name for f in fields(CommonLayerEntry)], where, "a common layer")
            common.append(CommonLayerEntry(**{f.name: raw[f.name] for f in fields(CommonLayerEntry)}))
        boundary_keys = [f.name for f in fields(Boundary)]
        return cls(inputs=[InputSpec(i["name"], list(i["shape"]), i["dtype"]) for i in data["inputs"]],
                   boundaries=[Boundary(**{k: b[k] for k in boundary_keys if k in b}) for b in data["boundaries"]],
                   models=models, common_layers=common, level_choice=data.get("level_choice", ""),
                   fusekit_version=data["fusekit_version"], root=Path(root) if root is not None else None)

    def write(self, parts_dir: Path) -> Path:
        """Write ``parts_dir/manifest.json`` (the components must be there already); sets ``root``."""
        self.root = Path(parts_dir)
        with atomic_file(self.path) as tmp:
            Path(tmp).write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return self.path

    @classmethod
    def load(cls, parts_dir: Path, check_files: bool = True) -> Manifest:
        """Read and validate ``parts_dir/manifest.json``; with ``check_files`` also every component's
        checksum. FusekitError when anything is missing or changed."""
        parts_dir = Path(parts_dir)
        path = parts_dir / MANIFEST
        if not path.is_file():
            raise FusekitError(f"{path} does not exist; decompose the models into {parts_dir} first "
                               "(fusekit decompose)")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _fail(path, f"is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        manifest = cls.from_dict(data, parts_dir)
        if check_files:
            manifest.verify_files()
        return manifest

    def verify_files(self) -> None:
        """Every component and head exists inside the parts folder with the checksum decompose
        recorded, and the first model's components output the boundary shapes the manifest says."""
        for entry in self.models:
            files = list(zip(entry.components, entry.component_sha256)) + [(entry.head, entry.head_sha256)]
            for rel, digest in files:
                file = self._file(rel, entry.name)
                if not file.is_file():
                    raise FusekitError(f"component {file} is missing; {_AGAIN}")
                if sha256_file(file) != digest:
                    raise FusekitError(f"component {file} changed since decompose (checksum differs); {_AGAIN}")
        self._check_boundaries()

    def _file(self, rel: str, model: str) -> Path:
        """``rel`` under the parts folder; FusekitError when it (or a symlink on the way) leads out of it."""
        root = Path(self.root or ".")
        file = root / rel
        real_root, real = Path(os.path.realpath(root)), Path(os.path.realpath(file))
        if real != real_root and real_root not in real.parents:
            raise _fail(self.path, f"names component {rel!r} of model {model}, which leads outside the parts "
                                   "folder (through a symlink)")
        return file

    def _check_boundaries(self) -> None:
        """The boundary shapes of the manifest are those the components give (an edited manifest
        would otherwise fail deep inside training)."""
        import onnx

        entry = self.models[0]
        for boundary, rel in zip(self.boundaries, entry.components):
            try:
                graph = onnx.load(str(self._file(rel, entry.name)), load_external_data=False).graph
            except Exception:  # noqa: BLE001 - the checksum matched: decompose wrote what it could read
                continue
            if len(graph.output) != 1 or not graph.output[0].type.HasField("tensor_type"):
                continue
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in graph.output[0].type.tensor_type.shape.dim]
            declared = [d if isinstance(d, int) else None for d in boundary.shape]
            actual = [d if isinstance(d, int) else None for d in dims]
            if len(declared) != len(actual) or any(a is not None and b is not None and a != b
                                                   for a, b in zip(declared, actual)):
                raise _fail(self.path, f"says level {boundary.level} outputs shape {boundary.shape}, but "
                                       f"{rel} outputs {dims}")

    # -- lookups ---------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Model names, in manifest order."""
        return [m.name for m in self.models]

    @property
    def input_names(self) -> list[str]:
        """Names of the inputs every model takes, in order."""
        return [i.name for i in self.inputs]

    def model(self, name: str) -> ModelEntry:
        """The entry of the model called ``name``."""
        for entry in self.models:
            if entry.name == name:
                return entry
        raise FusekitError(f"no model named {name!r} in {self.path}; known: {', '.join(self.names)}")

    def component_path(self, model: str, level: int) -> Path:
        """Path of ``model``'s component at ``level`` (1-based)."""
        return self._file(self.model(model).components[level - 1], model)

    def component_paths(self, model: str) -> list[Path]:
        """Paths of ``model``'s components, level 1 first."""
        return [self.component_path(model, lv) for lv in range(1, self.levels + 1)]

    def head_path(self, model: str) -> Path:
        """Path of ``model``'s head (last cut -> model outputs)."""
        return self._file(self.model(model).head, model)

    def source_path(self, model: str) -> Path:
        """Where the source model's file was, as recorded (relative paths resolve against ``root``)."""
        return Path(self.root or ".") / self.model(model).path

    def boundary_dims(self) -> list[int]:
        """Vector width of each level's boundary; FusekitError for feature maps and sequences."""
        return [b.dim for b in self.boundaries]

    def batch_name(self) -> str:
        """The symbolic name of the batch dimension: the first model input's first dim (``batch``)."""
        first = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        return first if isinstance(first, str) else "batch"

    def boundary_layouts(self) -> list[tuple[str, int]]:
        """(layout, channel width) of each level's boundary (see :meth:`Boundary.layout`);
        FusekitError naming the level for a shape fusekit cannot fuse."""
        batch = self.batch_name()
        return [(b.layout(batch), b.channels(batch)) for b in self.boundaries]

    def task_groups(self) -> dict[str, list[str]]:
        """Models grouped by the task in their ``fusekit.task`` metadata, in manifest order."""
        return group_by_task(((m.name, m.task) for m in self.models), where=str(self.path))

    def check_tasks(self, tasks: Mapping[str, Sequence[str]], ignore_metadata: bool = False) -> dict[str, list[str]]:
        """Validate an explicit task mapping against these models and the tasks in their metadata
        (see :func:`check_task_mapping`)."""
        return check_task_mapping(tasks, self.names, f"the parts in {self.root or '.'}",
                                  {m.name: m.task for m in self.models}, ignore_metadata)

    def feature_spec(self, models: Iterable[str] | None = None) -> FeatureSpec | None:
        """The one feature specification of ``models`` (default all); see :func:`shared_feature_spec`."""
        chosen = list(models) if models is not None else self.names
        return shared_feature_spec([(m, self.model(m).spec_json) for m in chosen])
