"""``fuse``: train the AKF fusion network over decomposed components and write OUT/ atomically.

OUT/ gets fused.onnx, metrics.json, checkpoint.pt, training_curves.png, gates.json, gates.png.
While training, the per-epoch checkpoint lives in a work directory beside OUT
(``.<OUT name>.fusekit-run/``) so that it survives an interruption; ``resume`` continues from it,
and it is removed once OUT/ is complete.
"""
from __future__ import annotations

import dataclasses
import json
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fusekit import __version__
from fusekit.data.dataset import Split
from fusekit.errors import FusekitError
from fusekit.io import atomic_dir, atomic_file, check_output_dir
from fusekit.metrics import roc_auc
from fusekit.fusion.model import FusedModel, SourceModel, reinitialised_copy, trainable_copy
from fusekit.fusion.options import FuseOptions, FusionOptions

INPUT_ORDER = ["categorical", "dense"]  # fusekit.train calls model(cat, dense)


@dataclass
class FuseResult:
    """What ``fuse`` produced: where, and the figures it printed."""

    out_dir: Path
    metrics: dict
    rows: list[dict]  # per task: fused, sources, average


# -- validation ------------------------------------------------------------------------------------
def read_parts(parts_dir: Path) -> dict:
    """Validate the decomposition (manifest present, component files unchanged) and return manifest.json."""
    parts_dir = Path(parts_dir)
    path = parts_dir / "manifest.json"
    if not path.is_file():
        raise FusekitError(f"{parts_dir} has no manifest.json; run `fusekit decompose ... -o {parts_dir}` first")
    from fusekit.decompose.manifest import load_manifest

    load_manifest(parts_dir)  # raises FusekitError when a component file is missing or changed
    try:
        return json.loads(path.read_text())
    except ValueError as exc:
        raise FusekitError(f"{path} is not valid JSON ({exc}); decompose the models again") from None


def check_tasks(manifest: dict, tasks: dict[str, list[str]]) -> None:
    """Two or more tasks, every model known, in exactly one task."""
    if len(tasks) < 2:
        raise FusekitError("fusing needs at least two tasks; pass --tasks task1=A,B task2=C,D")
    known = [m["name"] for m in manifest["models"]]
    seen: dict[str, str] = {}
    for task, models in tasks.items():
        if not models:
            raise FusekitError(f"task {task} names no model; give it at least one, e.g. {task}={known[0]}")
        for m in models:
            if m not in known:
                raise FusekitError(f"task {task} names unknown model {m!r}; the parts hold {', '.join(known)}")
            if m in seen:
                raise FusekitError(f"model {m} is in two tasks ({seen[m]} and {task}); put each model in one task")
            seen[m] = task


def model_spec(manifest: dict, tasks: dict[str, list[str]]):
    """The one feature specification shared by the chosen models (None when none carries one)."""
    from fusekit.data.features import FeatureSpec

    by_name = {m["name"]: m for m in manifest["models"]}
    specs = {}
    for models in tasks.values():
        for m in models:
            text = (by_name[m].get("metadata") or {}).get("fusekit.feature_spec")
            specs[m] = FeatureSpec.from_json(text) if text else None
    carrying = [m for m, s in specs.items() if s is not None]
    if not carrying:
        return None
    if len(carrying) != len(specs):
        lacking = [m for m, s in specs.items() if s is None]
        raise FusekitError(f"model(s) {', '.join(lacking)} carry no feature specification but {carrying[0]} does; "
                           "fuse models encoded the same way")
    first = specs[carrying[0]]
    for m in carrying[1:]:
        if specs[m].fingerprint() != first.fingerprint():
            raise FusekitError(f"models {carrying[0]} and {m} encode their inputs differently (feature specification "
                               "fingerprints differ); fuse models trained on the same encoding")
        if (specs[m].holdout or None) != (first.holdout or None):
            raise FusekitError(f"models {carrying[0]} and {m} were trained with different holdouts "
                               f"({first.holdout} vs {specs[m].holdout}); retrain them with the same one")
    return first


def level_dims(manifest: dict) -> list[int]:
    """Vector width of each level's boundary; feature maps and sequences are refused."""
    dims = []
    for b in manifest["boundaries"]:
        shape = b["shape"]
        if len(shape) != 2 or not isinstance(shape[1], int):
            raise FusekitError(f"level {b['level']} components output shape {shape}; fusekit fuses vector outputs "
                               "[batch, d] only (feature maps and sequences are not supported yet)")
        dims.append(int(shape[1]))
    return dims


def load_data(data, tasks: list[str], spec, options: FuseOptions):
    """The dataset encoded with the models' specification; checked for labels and encoding."""
    from fusekit.data import load_dataset

    if isinstance(data, (str, Path)):
        ds = load_dataset(data, tasks, labels=options.labels, spec=spec, data_dir=options.data_dir,
                          seed=options.split_seed)
    else:
        ds = data
    for name, split in (("train", ds.train), ("validation", ds.val), ("test", ds.test)):
        missing = [t for t in tasks if t not in split.labels]
        if missing:
            raise FusekitError(f"the {name} data has no label for task(s) {', '.join(missing)}; "
                               "pass --label task=column for each task")
    if spec is not None and getattr(ds, "spec", None) is not None and ds.spec.fingerprint() != spec.fingerprint():
        raise FusekitError("the data was encoded with a different feature specification than the models; "
                           "encode it with the models' specification")
    return ds


def check_widths(manifest: dict, split: Split) -> None:
    """The data has as many columns as the models take (when the manifest records a fixed width)."""
    arrays = {"categorical": split.cat, "dense": split.dense}
    for spec in manifest["inputs"]:
        width = spec["shape"][1] if len(spec["shape"]) > 1 else None
        if isinstance(width, int) and spec["name"] in arrays and arrays[spec["name"]].shape[1] != width:
            raise FusekitError(f"the data has {arrays[spec['name']].shape[1]} {spec['name']} columns but the models take "
                               f"{width}; encode it with the models' feature specification")


# -- model building --------------------------------------------------------------------------------
def _onnx_inputs(path: Path) -> list[str]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return [i.name for i in graph.input if i.name not in inits]


def load_sources(parts_dir: Path, manifest: dict, names: list[str], heads: bool = True) -> dict[str, SourceModel]:
    """The chosen models' components (and heads) as frozen torch modules."""
    from fusekit.onnxio.interpreter import load_component

    parts_dir = Path(parts_dir)
    by_name = {m["name"]: m for m in manifest["models"]}
    sources = {}
    for name in names:
        entry = by_name[name]
        paths = [parts_dir / c for c in entry["components"]]
        head_path = parts_dir / entry["head"] if heads and entry.get("head") else None
        sources[name] = SourceModel(
            name=name,
            components=[load_component(p) for p in paths],
            level1_inputs=_onnx_inputs(paths[0]),
            head=load_component(head_path) if head_path else None,
            component_paths=[str(p) for p in paths],
            head_path=str(head_path) if head_path else None,
        )
    return sources


def build_model(parts_dir: Path, manifest: dict, tasks: dict[str, list[str]], fusion: FusionOptions) -> FusedModel:
    """The fused model over the decomposed parts (components re-initialised when not pretrained)."""
    names = [m for ms in tasks.values() for m in ms]
    input_names = [i["name"] for i in manifest["inputs"]]
    sources = load_sources(parts_dir, manifest, names, heads=fusion.mode == "residual")
    torch.manual_seed(fusion.seed)
    if not fusion.pretrained:
        for k, name in enumerate(names):
            src = sources[name]
            src.components = [reinitialised_copy(c, p, fusion.seed * 1000 + 10 * k + i)
                              for i, (c, p) in enumerate(zip(src.components, src.component_paths))]
            if src.head is not None:
                src.head = reinitialised_copy(src.head, src.head_path, fusion.seed * 1000 + 10 * k + 9)
    elif fusion.finetune != "none":
        first = {"last": -1, "all": 0}.get(fusion.finetune)  # heads: no component is fine-tuned
        for name in names:
            src = sources[name]
            if first is not None:
                start = first % len(src.components)
                src.components = src.components[:start] + [
                    trainable_copy(c, p) for c, p in zip(src.components[start:], src.component_paths[start:])]
            if src.head is not None:
                src.head = trainable_copy(src.head, src.head_path)
    return FusedModel(tasks, sources, level_dims(manifest), input_names, fusion)


@torch.no_grad()
def source_probabilities(sources: dict[str, SourceModel], input_names: list[str], split: Split,
                         batch_size: int = 16384) -> dict[str, np.ndarray]:
    """Each source model's probability on ``split``, computed through its own components and head."""
    arrays = {"categorical": torch.as_tensor(split.cat), "dense": torch.as_tensor(split.dense)}
    out: dict[str, list[np.ndarray]] = {m: [] for m in sources}
    for start in range(0, len(split), batch_size):
        named = {k: v[start:start + batch_size] for k, v in arrays.items() if k in input_names}
        for m, src in sources.items():
            h = src.components[0](*[named[n] for n in src.level1_inputs])
            for comp in src.components[1:]:
                h = comp(h)
            out[m].append(src.head(h).reshape(-1).float().numpy())
    return {m: np.concatenate(v) for m, v in out.items()}


# -- the command -----------------------------------------------------------------------------------
def work_dir_for(out_dir: Path) -> Path:
    """Where the per-epoch checkpoint of an unfinished run is kept."""
    out_dir = Path(out_dir)
    return out_dir.parent / f".{out_dir.name}.fusekit-run"


def _run_identity(manifest: dict, tasks: dict[str, list[str]], options: FuseOptions) -> dict:
    # Epochs and patience are left out on purpose: a resumed run may be given a larger budget.
    models = {m["name"]: m.get("component_sha256") for m in manifest["models"]}
    return {"tasks": tasks, "components": {m: models[m] for ms in tasks.values() for m in ms},
            "fusion": options.fusion.to_dict(), "lr": options.training.lr, "batch_size": options.training.batch_size,
            "weight_decay": options.training.weight_decay, "seed": options.training.seed, "max_rows": options.max_rows,
            "split_seed": options.split_seed, "train_rows": options.train_rows}


def _prepare_work_dir(work: Path, identity: dict, options: FuseOptions) -> None:
    marker = work / "run.json"
    if options.resume:
        if not marker.is_file():
            raise FusekitError(f"nothing to resume: no interrupted run at {work}; run without --resume")
        if json.loads(marker.read_text()) != json.loads(json.dumps(identity)):
            raise FusekitError(f"the interrupted run at {work} used other tasks, parts or options; "
                               "repeat them exactly with --resume, or pass --force to start over")
        return
    if work.exists():
        if not options.force:
            raise FusekitError(f"an interrupted run exists at {work}; pass --resume to continue it or --force to start over")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    with atomic_file(marker) as tmp:
        tmp.write_text(json.dumps(identity, indent=1))


def _versions() -> dict:
    import onnx
    import onnxruntime

    return {"fusekit": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "python": platform.python_version()}


def fuse(parts_dir: Path, tasks: dict[str, list[str]], data, out_dir: Path,
         options: FuseOptions | None = None) -> FuseResult:
    """Train the fusion network on the fusion rows, export fused.onnx, and write OUT/ atomically.

    ``data`` is ``"census-income"``, a CSV/Parquet path (with ``options.labels``), or an already
    loaded TabularDataset. Raises FusekitError on bad input before anything is written.
    """
    from fusekit.fusion.export import export_fused, parity_and_outputs
    from fusekit.fusion.report import gate_statistics, plot_gates, plot_training
    from fusekit.train import evaluate, fit, resolve_device

    options = options or FuseOptions()
    parts_dir, out_dir = Path(parts_dir), Path(out_dir)
    tasks = {t: list(ms) for t, ms in tasks.items()}
    task_names = list(tasks)
    started = time.perf_counter()

    training = options.training
    resolve_device(training.device)  # a missing GPU is reported before anything is written
    manifest = read_parts(parts_dir)
    check_tasks(manifest, tasks)
    level_dims(manifest)  # refuses feature maps and sequences early
    input_names = [i["name"] for i in manifest["inputs"]]
    if input_names != INPUT_ORDER:
        raise FusekitError(f"fusekit fuse trains tabular models with inputs {INPUT_ORDER}; these take {input_names}")
    spec = model_spec(manifest, tasks)
    check_output_dir(out_dir, options.force)
    ds = load_data(data, task_names, spec, options)
    if options.train_rows not in ("holdout", "all"):
        raise FusekitError(f"unknown --train-rows {options.train_rows!r}; use holdout or all")
    holdout = bool(spec is not None and spec.holdout) and options.train_rows == "holdout"
    train_rows = ds.fusion_rows() if holdout else ds.train
    train_rows = train_rows.sample(options.max_rows, training.seed)
    val = ds.val.sample(options.max_rows, training.seed + 1)
    test = ds.test.sample(options.max_rows, training.seed + 2)
    check_widths(manifest, test)

    model = build_model(parts_dir, manifest, tasks, options.fusion)
    n_trainable = sum(p.numel() for p in model.fusion_parameters())
    work = work_dir_for(out_dir)
    _prepare_work_dir(work, _run_identity(manifest, tasks, options), options)
    config = dataclasses.replace(training, checkpoint_dir=work,
                                 resume=options.resume and (work / "checkpoint.pt").exists())
    result = fit(model, train_rows, val, task_names, config, on_epoch=options.on_epoch)
    model = model.cpu().eval()

    val_auc = evaluate(model, val, task_names, "cpu")
    sources = load_sources(parts_dir, manifest, [m for ms in tasks.values() for m in ms], heads=True)
    src_probs = source_probabilities(sources, input_names, test)

    by_name = {m["name"]: m for m in manifest["models"]}
    metadata = {"fusekit.source_sha256": json.dumps({m: by_name[m].get("sha256") for ms in tasks.values() for m in ms}),
                "fusekit.task_models": json.dumps(tasks)}
    if spec is not None:
        metadata["fusekit.feature_spec"] = spec.to_json()
    test_arrays = {"categorical": test.cat, "dense": test.dense}
    with atomic_dir(out_dir, force=options.force) as tmp:
        onnx_path = export_fused(model, tmp / "fused.onnx",
                                 (torch.as_tensor(test.cat[:2]), torch.as_tensor(test.dense[:2])), metadata)
        parity, deployed = parity_and_outputs(model, onnx_path, test_arrays, tol=options.parity_tol)
        # The test AUC is the deployed file's (onnxruntime), so `fusekit eval fused.onnx` prints the same.
        test_auc = {task: roc_auc(test.labels[task], deployed[task]) for task in task_names}
        rows, per_task = [], {}
        for task in task_names:
            src_auc = {m: roc_auc(test.labels[task], src_probs[m]) for m in tasks[task]}
            avg_auc = roc_auc(test.labels[task], np.mean([src_probs[m] for m in tasks[task]], axis=0))
            per_task[task] = {"val_auc": val_auc[task], "test_auc": test_auc[task], "sources_test_auc": src_auc,
                              "average_test_auc": avg_auc, "gain_over_average": test_auc[task] - avg_auc}
            rows.append({"task": task, "fused": test_auc[task], "sources": src_auc, "average": avg_auc})
        gates = gate_statistics(model, test)
        (tmp / "gates.json").write_text(json.dumps(gates, indent=1))
        plot_gates(gates, tmp / "gates.png")
        plot_training(result.to_dict()["history"], tmp / "training_curves.png")
        shutil.copy2(work / "checkpoint.pt", tmp / "checkpoint.pt")
        metrics = {
            "tasks": tasks, "per_task": per_task,
            "mean_test_auc": float(np.mean([test_auc[t] for t in task_names])),
            "epochs": len(result.history), "best_epoch": result.best_epoch, "stopped_early": result.stopped_early,
            "train_seconds": result.seconds, "total_seconds": time.perf_counter() - started,
            "device": result.device, "amp": result.amp,
            "rows": {"train": len(train_rows), "validation": len(val), "test": len(test),
                     "train_source": "holdout rows the source models never saw" if holdout else "training split"},
            "trainable_parameters": n_trainable, "parameters": model.parameter_count(),
            "fusion": options.fusion.to_dict(),
            "training": {"lr": training.lr, "batch_size": training.batch_size, "weight_decay": training.weight_decay,
                         "max_epochs": training.max_epochs, "patience": training.patience, "seed": training.seed},
            "onnx_parity_max_abs_diff": parity, "history": result.to_dict()["history"], "versions": _versions(),
            "parts": str(parts_dir.resolve()),
        }
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return FuseResult(out_dir, metrics, rows)
