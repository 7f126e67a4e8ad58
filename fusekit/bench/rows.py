"""The rows of a benchmark's tables, made from its cells (so that a resumed or merged run gives the
same rows as one uninterrupted run)."""
from __future__ import annotations

from fusekit.bench.methods import ABLATION_VARIANTS, EMM_METHODS, KIND_ORDER, ablation_method
from fusekit.bench.protocol import Cell
from fusekit.bench.results import Row, TaskSetResult


def _row(method: str, cells: list[Cell], tasks: list[str]) -> Row:
    cells = sorted(cells, key=lambda c: (c.split, -1 if c.seed is None else c.seed))
    info = cells[0].info
    errors = [c.info["error"] for c in cells if c.info.get("error")]
    good = [c for c in cells if not c.info.get("error")]
    scores = {t: [c.scores[t] for c in good if t in c.scores] for t in tasks}
    # A source model has scores for its own task only.
    row = Row(method, info.get("kind", "emm"), {t: v for t, v in scores.items() if v},
              info.get("parameters"), info.get("trainable"),
              [c.seconds for c in good if c.seconds is not None], [c.epochs for c in good if c.epochs is not None],
              info.get("label", ""), {})
    row.extra["cells"] = [[c.split, c.seed] for c in good]
    for key in ("fusion", "hyperparameters", "train_rows", "path"):
        if key in info:
            row.extra[key] = info[key]
    restored = [c.info["restored_average"] for c in good if "restored_average" in c.info]
    if restored:
        row.extra["restored_average"] = {t: sum(bool(r.get(t)) for r in restored) for t in tasks}
    if errors:
        row.extra["error"] = errors[0]
        row.extra["failed_cells"] = len(errors)
    return row


def rebuild(result: TaskSetResult, ablation: bool, baselines: list[str]) -> None:
    """Fill ``result.rows``, ``result.ablation`` and ``result.gates`` from ``result.cells``."""
    cells = [Cell(**c) for c in result.cells]
    by_method: dict[str, list[Cell]] = {}
    for c in cells:
        by_method.setdefault(c.method, []).append(c)
    within = {name: i for i, name in enumerate(["average"] + list(baselines) + EMM_METHODS)}
    rows = [_row(m, cs, result.tasks) for m, cs in by_method.items() if not m.startswith("ablation-")]
    rows.sort(key=lambda r: (KIND_ORDER.get(r.kind, 4), within.get(r.method, len(within)), r.method))
    result.rows = rows
    result.ablation = []
    if ablation:
        for key, (label, kw) in ABLATION_VARIANTS.items():
            source = by_method.get(ablation_method(key))
            if source:
                row = _row(key, source, result.tasks)
                row.label, row.extra["fusion"] = label, kw
                result.ablation.append(row)
    result.gates = {c.method: c.info["gates"] for c in cells if c.info.get("gates")}
