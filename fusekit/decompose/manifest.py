"""manifest.json of a parts directory: writing, loading and validating (with checksums)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import FusekitError
from fusekit.io import sha256_file

MANIFEST = "manifest.json"
_MODEL_KEYS = ("name", "path", "sha256", "inputs", "outputs", "components", "component_sha256", "head",
               "head_sha256", "boundary_tensors", "layer_indices", "metadata")


@dataclass
class ModelEntry:
    """One source model of a parts directory."""

    name: str
    path: str
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


@dataclass
class Manifest:
    """A validated manifest; paths resolve against ``root`` (the parts directory)."""

    root: Path
    fusekit_version: str
    levels: int
    inputs: list[dict]
    boundaries: list[dict]
    models: list[ModelEntry]
    data: dict

    def component_path(self, model: str, level: int) -> Path:
        """Absolute path of ``model``'s component at ``level`` (1-based)."""
        return self.root / self.model(model).components[level - 1]

    def head_path(self, model: str) -> Path:
        """Absolute path of ``model``'s head."""
        return self.root / self.model(model).head

    def model(self, name: str) -> ModelEntry:
        """The entry of the model called ``name``."""
        for entry in self.models:
            if entry.name == name:
                return entry
        raise FusekitError(f"no model named {name!r} in {self.root / MANIFEST}; "
                           f"known: {', '.join(m.name for m in self.models)}")


def write_manifest(parts_dir: Path, data: dict) -> Path:
    """Write ``data`` as ``parts_dir/manifest.json`` (the caller writes the directory atomically)."""
    path = Path(parts_dir) / MANIFEST
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path


def load_manifest(parts_dir: Path, check_files: bool = True) -> Manifest:
    """Read and validate ``parts_dir/manifest.json``; with ``check_files`` also every component's
    checksum. FusekitError when anything is missing or changed."""
    parts_dir = Path(parts_dir)
    path = parts_dir / MANIFEST
    if not path.is_file():
        raise FusekitError(f"{path} does not exist; run `fusekit decompose ... -o {parts_dir}` first")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FusekitError(f"{path} is not valid JSON ({exc.msg if hasattr(exc, 'msg') else exc}); "
                           f"run fusekit decompose again") from None
    for key in ("fusekit_version", "levels", "inputs", "boundaries", "models"):
        if key not in data:
            raise FusekitError(f"{path} lacks {key!r}; run fusekit decompose again")
    levels = data["levels"]
    if not isinstance(levels, int) or levels < 1 or len(data["boundaries"]) != levels:
        raise FusekitError(f"{path} has an invalid level count; run fusekit decompose again")
    models = []
    for raw in data["models"]:
        missing = [k for k in _MODEL_KEYS if k not in raw]
        if missing:
            raise FusekitError(f"{path}: a model entry lacks {', '.join(missing)}; run fusekit decompose again")
        entry = ModelEntry(**{k: raw[k] for k in _MODEL_KEYS})
        if len(entry.components) != levels or len(entry.component_sha256) != levels:
            raise FusekitError(f"{path}: model {entry.name} does not have {levels} components; "
                               f"run fusekit decompose again")
        if check_files:
            files = list(zip(entry.components, entry.component_sha256)) + [(entry.head, entry.head_sha256)]
            for rel, digest in files:
                file = parts_dir / rel
                if not file.is_file():
                    raise FusekitError(f"component {file} is missing; run fusekit decompose again")
                if sha256_file(file) != digest:
                    raise FusekitError(f"component {file} changed since decompose (checksum differs); "
                                       f"run fusekit decompose again")
        models.append(entry)
    if len(models) < 2:
        raise FusekitError(f"{path} lists fewer than two models; run fusekit decompose again")
    return Manifest(root=parts_dir, fusekit_version=data["fusekit_version"], levels=levels,
                    inputs=data["inputs"], boundaries=data["boundaries"], models=models, data=data)


TASK_KEY = "fusekit.task"


def task_of(metadata: dict[str, str]) -> str | None:
    """The task a model names in its ONNX metadata (``fusekit.task``), if any."""
    return metadata.get(TASK_KEY) or None


def task_groups(paths: list[Path]) -> dict[str, list[str]]:
    """Group model files by the task in their metadata: ``{task: [file stems]}``, in file order.

    FusekitError naming the first file that carries no task (then the user names the tasks).
    """
    import onnx

    tasks: dict[str, list[str]] = {}
    for path in paths:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        task = task_of(meta)
        if not task:
            raise FusekitError(f"{path} has no {TASK_KEY} metadata; name the tasks explicitly (--tasks task=models)")
        tasks.setdefault(task, []).append(Path(path).stem)
    return tasks
