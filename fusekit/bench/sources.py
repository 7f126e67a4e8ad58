"""The source (single-task) models of a benchmark: find them, read their specification, score them."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusekit.data.dataset import Split
from fusekit.decompose.manifest import SPEC_KEY, group_by_task, shared_feature_spec, task_of
from fusekit.errors import FusekitError
from fusekit.options import literal


@dataclass
class SourceModel:
    """One trained single-task ONNX model: its name (file stem), task, path and parameter count."""

    name: str
    task: str
    path: Path
    parameters: int
    spec_json: str | None


def _onnx_parameters(model) -> int:
    """Elements of all initializers: the weights an ONNX model carries."""
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


def find_sources(models_dir: Path, tasks: list[str], mapping: dict[str, list[str]] | None = None) -> list[SourceModel]:
    """Every ``*.onnx`` in ``models_dir`` whose ``fusekit.task`` is one of ``tasks``, in task order then by name;
    with ``mapping`` (task -> model file stems, as ``fusekit fuse --tasks`` takes them) exactly those models.

    FusekitError when the folder is missing or a task has no model.
    """
    import onnx

    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise FusekitError(f"source model folder {literal(models_dir)} does not exist; make the sample models "
                           "(see sample_models/README.md) or give a folder of models in {models_dir}",
                           owner="run_bench()")
    found: dict[str, SourceModel] = {}
    for path in sorted(models_dir.glob("*.onnx")):
        model = onnx.load(str(path), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        found[path.stem] = SourceModel(path.stem, task_of(meta) or "", path.resolve(), _onnx_parameters(model),
                                       meta.get(SPEC_KEY))
    if mapping is not None:
        missing = [m for ms in mapping.values() for m in ms if m not in found]
        if missing:
            raise FusekitError(f"{literal(models_dir)} has no model {literal(', '.join(missing))} (it holds "
                               f"{literal(', '.join(found) or 'none')}); name models by their file names in {{tasks}}",
                               owner="run_bench()")
        return [dataclasses.replace(found[m], task=t) for t, ms in mapping.items() for m in ms]
    groups = group_by_task(((s.name, s.task) for s in found.values()), tasks, where=str(models_dir))
    return [found[name] for names in groups.values() for name in names]


def shared_spec(sources: list[SourceModel]):
    """The feature specification all sources carry (None when none does); FusekitError on a mismatch."""
    return shared_feature_spec([(s.name, s.spec_json) for s in sources])


def onnx_outputs(path: Path, split: Split, wanted: dict[str, str | None]) -> dict[str, np.ndarray]:
    """The ONNX model at ``path`` run on ``split``: for each key of ``wanted`` the output it names
    (None: the model's only output, else the one named like the key), as the model gives it."""
    from fusekit.fusion.kinds import task_output
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(path, device="cpu")
    outputs = run(sess, split)
    names = list(outputs)
    chosen = {key: names[task_output(Path(path).stem, names, key, {key: name} if name else None)]
              for key, name in wanted.items()}
    return {key: np.asarray(outputs[name]) for key, name in chosen.items()}


def spec_summary(spec) -> dict | None:
    """Small JSON-ready description of a feature specification (for the results file)."""
    if spec is None:
        return None
    return {"categorical": len(spec.categorical), "dense": len(spec.dense),
            "excluded": list(spec.excluded), "holdout": spec.holdout, "fingerprint": spec.fingerprint()}


def describe(sources: list[SourceModel]) -> list[dict]:
    """JSON-ready list of the sources (paths relative to the working directory)."""
    from fusekit.io import portable_path

    return [{"name": s.name, "task": s.task, "path": portable_path(s.path), "parameters": s.parameters}
            for s in sources]


__all__ = ["SourceModel", "find_sources", "shared_spec", "onnx_outputs",
           "spec_summary", "describe"]
