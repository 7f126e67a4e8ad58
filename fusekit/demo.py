"""The end-to-end demo: decompose the bundled sample models, fuse them, evaluate with onnxruntime."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fusekit.errors import FusekitError
from fusekit.sample_models import sample_pool

DIGITS = "digits"
# The digits pools whose boundaries fusion reads as maps or sequences, how decompose cuts each
# (the transformer at every layer: two sequence boundaries, then the pooled vector), and where AKF sits.
DIGITS_POOLS = {"cnn": (None, "last"), "transformer": ("all", "all")}

@dataclass
class DemoResult:
    """Where the demo wrote its outputs and the comparison it printed."""

    out_dir: Path
    decompose_table: str
    comparison: str
    provider: str


def comparison_table(rows: list[dict], fused_onnx_scores: dict[str, float]) -> str:
    """Per task: each source model's test score (AUC, accuracy or R2), their plain average, and the fused model's."""
    from fusekit.task_kinds import SCORE_LABEL

    lines = [f"{'task':<15} {'metric':<9} {'source models (test)':<48} {'average':>8} {'fused':>8} {'gain':>9}"]
    for row in rows:
        sources = ", ".join(f"{m} {a:.5f}" for m, a in row["sources"].items())
        fused = fused_onnx_scores[row["task"]]
        lines.append(f"{row['task']:<15} {SCORE_LABEL[row['score']]:<9} {sources:<48} {row['average']:>8.5f} "
                     f"{fused:>8.5f} {round(fused - row['average'], 5) + 0.0:>+9.5f}")  # + 0.0: no "-0.00000"
    return "\n".join(lines)


def run_demo(out_dir: Path, pool: str = "census2", models_dir: Path | None = None, data_dir: Path | None = None,
             epochs: int = 100, force: bool = False, device: str = "auto", progress: bool = True,
             say: Callable[[str], None] = print) -> DemoResult:
    """decompose -> fuse -> evaluate fused.onnx in onnxruntime, on a bundled sample pool."""
    from fusekit.decompose.pipeline import decompose
    from fusekit.deploy.evaluate import evaluate_onnx
    from fusekit.fusion.fuse import FuseOptions, fuse
    from fusekit.train import TrainConfig
    from fusekit.io import atomic_dir

    from fusekit.decompose.manifest import task_groups

    if pool == DIGITS and not models_dir:
        return run_digits_demo(out_dir, data_dir, epochs, force, device, progress, say)
    if models_dir:
        folder = Path(models_dir)
        paths = sorted(folder.glob("*.onnx"))
        if not paths:
            raise FusekitError(f"no .onnx models in {folder}; pass a folder of single-task models")
        tasks = task_groups(paths)
    else:
        sample = sample_pool(pool)
        folder, paths, tasks = sample.folder, sample.paths, sample.models
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, force) as tmp:
        say(f"== 1/3 decompose {len(paths)} models from {folder}")
        parts = decompose(paths, tmp / "parts")
        parts.out_dir = out_dir / "parts"  # where it will be once the demo's output folder is in place
        say(parts.table())
        say(f"\n== 2/3 fuse tasks {json.dumps(tasks)} on Census-Income")
        result = fuse(tmp / "parts", tasks, "census-income", tmp / "fused",
                      FuseOptions(training=TrainConfig(max_epochs=epochs, device=device, progress=progress),
                                  data_dir=data_dir))
        say(f"   {result.metrics['epochs']} epochs, {result.metrics['train_seconds']:.0f} s on {result.metrics['device']}")
        say("\n== 3/3 evaluate fused.onnx with onnxruntime on the test split")
        evaluation = evaluate_onnx(tmp / "fused" / "fused.onnx", "census-income", device=device, data_dir=data_dir)
        table = comparison_table(result.rows, evaluation.scores)
        say(f"execution provider: {evaluation.provider}; {evaluation.rows} test rows")
        say(table)
    say(f"\noutputs in {out_dir}/ (parts/, fused/fused.onnx, fused/metrics.json, plots)")
    return DemoResult(out_dir, parts.table(), table, evaluation.provider)


def digits_dataset(folder: Path, kind: str):
    """The digits split of ``folder/data`` as a dataset for the ``kind`` pool's input."""
    import numpy as np

    from fusekit.data.dataset import Split, TabularDataset
    from fusekit.sample_models.make_digits import INPUT, TASKS

    splits = []
    for name in ("train", "val", "test"):
        with np.load(folder / "data" / f"{name}.npz") as arrays:
            splits.append(Split({INPUT[kind]: arrays[INPUT[kind]]}, {t: arrays[t] for t in TASKS}))
    return TabularDataset(None, list(TASKS), *splits)


def run_digits_demo(out_dir: Path, data_dir: Path | None = None, epochs: int = 100, force: bool = False,
                    device: str = "auto", progress: bool = True, say: Callable[[str], None] = print,
                    source_epochs: int | None = None) -> DemoResult:
    """The digits CNN and transformer pools (made once into the data cache, or ``data_dir``):
    per pool, decompose at the feature maps / sequences, fuse, evaluate fused.onnx."""
    from fusekit.decompose.pipeline import decompose
    from fusekit.deploy.evaluate import evaluate_onnx
    from fusekit.fusion.fuse import fuse
    from fusekit.fusion.options import FuseOptions, FusionOptions
    from fusekit.io import atomic_dir
    from fusekit.sample_models import make_digits as md
    from fusekit.train import TrainConfig

    folder = Path(data_dir) / "digits" if data_dir else md.digits_dir()
    say(f"== 0/3 the digits pools in {folder} (made on first use)")
    md.make_digits(folder, kinds=sorted(DIGITS_POOLS), epochs=source_epochs or md.EPOCHS)
    out_dir = Path(out_dir)
    tables, provider = [], ""
    with atomic_dir(out_dir, force) as tmp:
        for kind, (levels, fuse_at) in DIGITS_POOLS.items():
            paths = sorted((folder / kind).glob("*.onnx"))
            say(f"\n== 1/3 [{kind}] decompose {len(paths)} models")
            parts = decompose(paths, tmp / kind / "parts", levels=levels)
            parts.out_dir = out_dir / kind / "parts"
            say(parts.table())
            data = digits_dataset(folder, kind)
            say(f"\n== 2/3 [{kind}] fuse tasks {', '.join(md.TASKS)} (AKF at {fuse_at} level(s))")
            result = fuse(tmp / kind / "parts", None, data, tmp / kind / "fused",
                          FuseOptions(fusion=FusionOptions(fuse_at=fuse_at),
                                      training=TrainConfig(max_epochs=epochs, device=device, progress=progress)))
            say(f"   {result.metrics['epochs']} epochs, {result.metrics['train_seconds']:.0f} s on "
                f"{result.metrics['device']}")
            say(f"\n== 3/3 [{kind}] evaluate fused.onnx with onnxruntime on the test split")
            evaluation = evaluate_onnx(tmp / kind / "fused" / "fused.onnx", data, device=device)
            provider = evaluation.provider
            table = comparison_table(result.rows, evaluation.scores)
            say(f"execution provider: {provider}; {evaluation.rows} test rows")
            say(table)
            tables.append(f"{kind}\n{table}")
    say(f"\noutputs in {out_dir}/ (<pool>/parts/, <pool>/fused/fused.onnx, <pool>/fused/metrics.json, plots)")
    return DemoResult(out_dir, "", "\n\n".join(tables), provider)
