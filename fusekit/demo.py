"""The end-to-end demo: decompose the bundled sample models, fuse them, evaluate with onnxruntime."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from .errors import FusekitError

SAMPLE_MODELS = Path(__file__).resolve().parents[1] / "sample_models"


@dataclass
class DemoResult:
    """Where the demo wrote its outputs and the comparison it printed."""

    out_dir: Path
    decompose_table: str
    comparison: str
    provider: str


def tasks_of_pool(paths: list[Path]) -> dict[str, list[str]]:
    """Group models by the ``fusekit.task`` in their metadata: ``{task: [model names]}``."""
    tasks: dict[str, list[str]] = {}
    for path in paths:
        meta = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        task = meta.get("fusekit.task")
        if not task:
            raise FusekitError(f"{path} has no fusekit.task metadata; use `fusekit fuse --tasks` to name its task")
        tasks.setdefault(task, []).append(path.stem)
    return tasks


def comparison_table(rows: list[dict], fused_onnx_auc: dict[str, float]) -> str:
    """Per task: each source model's test AUC, their plain average, and the fused model's."""
    lines = [f"{'task':<15} {'source models (test AUC)':<48} {'average':>8} {'fused':>8} {'gain':>9}"]
    for row in rows:
        sources = ", ".join(f"{m} {a:.5f}" for m, a in row["sources"].items())
        fused = fused_onnx_auc[row["task"]]
        lines.append(f"{row['task']:<15} {sources:<48} {row['average']:>8.5f} {fused:>8.5f} "
                     f"{fused - row['average']:>+9.5f}")
    return "\n".join(lines)


def run_demo(out_dir: Path, pool: str = "census2", models_dir: Path | None = None, data_dir: Path | None = None,
             epochs: int = 100, force: bool = False, device: str = "auto", progress: bool = True,
             say: Callable[[str], None] = print) -> DemoResult:
    """decompose -> fuse -> evaluate fused.onnx in onnxruntime, on a bundled sample pool."""
    from .decompose import decompose
    from .evaluate import evaluate_onnx
    from .fuse import FuseOptions, fuse
    from .train import TrainConfig
    from .io import atomic_dir

    folder = Path(models_dir) if models_dir else SAMPLE_MODELS / pool
    paths = sorted(folder.glob("*.onnx"))
    if not paths:
        raise FusekitError(f"no sample models in {folder}; run `python sample_models/make_pool.py` to make them")
    out_dir = Path(out_dir)
    tasks = tasks_of_pool(paths)
    with atomic_dir(out_dir, force) as tmp:
        say(f"== 1/3 decompose {len(paths)} models from {folder}")
        parts = decompose(paths, tmp / "parts")
        say(parts.table())
        say(f"\n== 2/3 fuse tasks {json.dumps(tasks)} on Census-Income")
        result = fuse(tmp / "parts", tasks, "census-income", tmp / "fused",
                      FuseOptions(training=TrainConfig(max_epochs=epochs, device=device, progress=progress),
                                  data_dir=data_dir))
        say(f"   {result.metrics['epochs']} epochs, {result.metrics['train_seconds']:.0f} s on {result.metrics['device']}")
        say("\n== 3/3 evaluate fused.onnx with onnxruntime on the test split")
        evaluation = evaluate_onnx(tmp / "fused" / "fused.onnx", "census-income", device=device, data_dir=data_dir)
        table = comparison_table(result.rows, evaluation.auc)
        say(f"execution provider: {evaluation.provider}; {evaluation.rows} test rows")
        say(table)
    say(f"\noutputs in {out_dir}/ (parts/, fused/fused.onnx, fused/metrics.json, plots)")
    return DemoResult(out_dir, parts.table(), table, evaluation.provider)
