"""Combine benchmark runs made in separate processes (for example one per task set or per group of
splits, or baselines and fused models run side by side on two cores) into one report: the union of
their cells, and rows made again from it."""
from __future__ import annotations

import json
from pathlib import Path

from fusekit.errors import FusekitError
from fusekit.io import atomic_dir, check_output_dir, check_output_paths
from fusekit.locks import holds_output
from fusekit.bench.results import BenchResult, Row, TaskSetResult


def _rows(items: list[dict]) -> list[Row]:
    fields = set(Row.__dataclass_fields__)
    return [Row(**{k: v for k, v in item.items() if k in fields}) for item in items]


def load_result(run_dir: Path) -> BenchResult:
    """A BenchResult read back from a bench output directory's results.json."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise FusekitError(f"{path} does not exist; pass directories written by `fusekit bench`")
    try:
        data = json.loads(path.read_text())
        sets = [TaskSetResult(s["tasks"], _rows(s["rows"]), _rows(s["ablation"]), s.get("gates", {}),
                              s.get("sources", []), s.get("data", {}), s.get("cells", []), s.get("kinds", {}))
                for s in data["sets"]]
        return BenchResult(data["dataset"], data["seeds"], data["quick"], data["budget"], data["hyperparameters"],
                           sets, Path(data["out_dir"]), data.get("seconds", 0.0), data.get("versions", {}),
                           data.get("threads"), data.get("splits", [0]), data.get("processes", 1))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, or not a bench's results
        what = f"lacks {exc}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        raise FusekitError(f"{path} is not a results.json written by `fusekit bench` ({what}); run the bench "
                           "again into that directory or leave it out") from None


def merge_results(results: list[BenchResult], out_dir: Path) -> BenchResult:
    """One BenchResult holding every task set and cell of ``results`` (a cell measured twice keeps its
    last measurement), rows made again from the cells. Runs must share dataset and budget; their
    splits and seeds are combined."""
    from fusekit.bench.protocol import Cell
    from fusekit.bench.rows import rebuild
    from fusekit.models.baselines import BASELINES

    if not results:
        raise FusekitError("nothing to merge; pass at least one bench output directory")
    first = results[0]
    for other in results[1:]:
        for key in ("dataset", "quick", "budget"):
            if getattr(other, key) != getattr(first, key):
                raise FusekitError(f"cannot merge bench runs with different {key} "
                                   f"({getattr(first, key)} vs {getattr(other, key)}); rerun with the same settings")
    merged: dict[tuple, TaskSetResult] = {}
    cells: dict[tuple, dict[tuple, dict]] = {}
    ablation: dict[tuple, bool] = {}
    for result in results:
        for task_set in result.sets:
            key = tuple(task_set.tasks)
            target = merged.setdefault(key, TaskSetResult(list(task_set.tasks)))
            for c in task_set.cells:
                cells.setdefault(key, {})[Cell(**c).key] = c
            ablation[key] = ablation.get(key, False) or bool(task_set.ablation)
            target.sources = target.sources or task_set.sources
            target.data = target.data or task_set.data
            target.kinds = target.kinds or task_set.kinds
    for key, target in merged.items():
        target.cells = list(cells.get(key, {}).values())
        if target.cells:
            rebuild(target, ablation[key], list(BASELINES))
        else:  # results.json of a fusekit before cells: its rows as written
            for result in results:
                for task_set in result.sets:
                    if tuple(task_set.tasks) == key:
                        target.rows, target.ablation, target.gates = task_set.rows, task_set.ablation, task_set.gates
    seeds = sorted({s for r in results for s in r.seeds})
    splits = sorted({s for r in results for s in r.splits})
    return BenchResult(first.dataset, seeds, first.quick, first.budget, first.hyperparameters,
                       list(merged.values()), Path(out_dir), sum(r.seconds for r in results), first.versions,
                       # runs made with different thread counts have no one count
                       first.threads if len({r.threads for r in results}) == 1 else None, splits,
                       first.processes if len({r.processes for r in results}) == 1 else None)


@holds_output("out_dir")
def write_merged(run_dirs: list[Path], out_dir: Path, force: bool = False) -> BenchResult:
    """Merge bench output directories and write results.json, tables.md and auc.png to ``out_dir``."""
    from fusekit.bench.chart import write_chart
    from fusekit.bench.tables import render_markdown

    check_output_paths(out_dir, run_dirs, owner="write_merged()")
    check_output_dir(Path(out_dir), force)

    result = merge_results([load_result(d) for d in run_dirs], out_dir)
    with atomic_dir(Path(out_dir), force=force) as tmp:
        (tmp / "results.json").write_text(json.dumps(result.to_dict(), indent=1))
        (tmp / "tables.md").write_text(render_markdown(result))
        write_chart(result, tmp / "auc.png")
    return result
