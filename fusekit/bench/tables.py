"""Markdown tables of a benchmark: the paired comparison, Table I per task set, Table II, gates."""
from __future__ import annotations

from fusekit.bench.protocol import Cell, PairedDifference, paired_difference, spreads
from fusekit.bench.results import BenchResult, Row, TaskSetResult

# The EMM paper's Census-Income figures (Table I and Table II; income / never married).
PAPER_TABLE1 = {
    "TM-1": (0.93009, 0.99230), "TM-2": (0.90739, 0.99356), "ple": (0.92528, 0.99465),
    "mmoe": (0.94051, 0.99437), "aitm": (0.94527, 0.99436), "adatt": (0.94523, 0.99479),
    "emm-paper": (0.94108, 0.99467),
}
PAPER_TABLE2 = {
    "baseline": (0.94088, 0.99383), "baseline+mtm": (0.93215, 0.99376),
    "baseline+p": (0.92647, 0.99352), "full": (0.94108, 0.99467),
}
PAPER_TASKS = ["income", "never_married"]


def _auc_cell(row: Row, task: str) -> str:
    if row.extra.get("error"):
        return "failed"
    mean, std = row.mean(task), row.std(task)
    if mean is None:
        return "–"
    n = len(row.auc.get(task) or [])
    return f"{mean:.5f} ± {std:.5f}" if n > 1 else f"{mean:.5f}"


def _signed(value: float | None) -> str:
    return "–" if value is None else f"{value:+.5f}"


def _int(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def _paper_cell(table: dict, key: str, tasks: list[str]) -> str:
    if tasks != PAPER_TASKS or key not in table:
        return ""
    return " / ".join(f"{v:.5f}" for v in table[key])


def table_one(result: TaskSetResult, title: str) -> str:
    """Table I: test score per task (its kind's: AUC, accuracy, R2; mean ± SD over cells), gain vs
    the single-task mean, sizes, time."""
    tasks = result.tasks
    paper = tasks == PAPER_TASKS
    head = (["Method"] + [f"{t} {result.score_label(t)}" for t in tasks] + [f"gain {t}" for t in tasks]
            + ["params", "trainable", "train s (mean)", "best epoch"]
            + (["paper (income / never married)"] if paper else []))
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in result.rows:
        cells = [row.display()] + [_auc_cell(row, t) for t in tasks]
        cells += [_signed(result.gain(row, t)) if row.kind != "single" else "–" for t in tasks]
        seconds = f"{sum(row.seconds) / len(row.seconds):.1f}" if row.seconds else "–"
        epochs = "/".join(str(e) for e in row.epochs) if row.epochs else "–"
        cells += [_int(row.parameters), _int(row.trainable), seconds, epochs]
        if paper:
            cells.append(_paper_cell(PAPER_TABLE1, row.method, tasks))
        lines.append("| " + " | ".join(cells) + " |")
    if paper:
        lines += ["", "Paper single-task rows: TM-1 " + " / ".join(f"{v:.5f}" for v in PAPER_TABLE1["TM-1"])
                  + ", TM-2 " + " / ".join(f"{v:.5f}" for v in PAPER_TABLE1["TM-2"]) + "."]
    lines += ["", "Gain: mean test score minus the mean of the task's single-task source models (the paper's "
              "definition). Mean ± SD over every split × seed cell; the paired table above says which "
              "differences are real."] + failure_notes(result.rows)
    return "\n".join(lines)


def failure_notes(rows: list[Row]) -> list[str]:
    """One line per row that could not be produced, with the reason."""
    failed = [f"- {r.display()} failed: {r.extra['error']}" for r in rows if r.extra.get("error")]
    return ([""] + failed) if failed else []


def _cells_by_method(result: TaskSetResult) -> dict[str, list[Cell]]:
    out: dict[str, list[Cell]] = {}
    for c in result.cells:
        cell = Cell(**c)
        if not cell.info.get("error"):
            out.setdefault(cell.method, []).append(cell)
    return out


def _diff_cell(diff: PairedDifference | None) -> str:
    if diff is None:
        return "–"
    if diff.low is None:
        return f"{diff.mean:+.5f} (no interval)"
    word = {"better": "**better**", "worse": "**worse**", "tie": "tie"}[diff.verdict]
    return f"{diff.mean:+.5f} [{diff.low:+.5f}, {diff.high:+.5f}] {word}"


def _spread(value: float | None) -> str:
    return "–" if value is None else f"{value:.5f}"


def best_baseline(result: TaskSetResult, task: str) -> Row | None:
    """The baseline row with the highest mean score on ``task``."""
    rows = [r for r in result.rows if r.kind == "baseline" and r.mean(task) is not None]
    return max(rows, key=lambda r: r.mean(task)) if rows else None


def paired_differences(result: TaskSetResult) -> dict[str, dict[str, dict]]:
    """Per task and trained method: its paired differences to the average and the best baseline."""
    cells = _cells_by_method(result)
    ratio = _test_over_val(result)
    out: dict[str, dict[str, dict]] = {}
    for task in result.tasks:
        best = best_baseline(result, task)
        for row in result.rows:
            if row.kind not in ("baseline", "emm") or row.method not in cells:
                continue
            entry = {}
            for name, ref in (("average", "average"), ("best_baseline", best.method if best else None)):
                if ref and ref != row.method and ref in cells:
                    diff = paired_difference(cells[row.method], cells[ref], task, ratio)
                    if diff is not None:
                        entry[name] = {"reference": ref, **diff.to_dict()}
            out.setdefault(task, {})[row.method] = entry
    return out


def _test_over_val(result: TaskSetResult) -> float:
    rows = result.data.get("rows", {})
    val, test = rows.get("validation"), rows.get("test")
    return float(test) / float(val) if val and test else 1.0


def paired_table(result: TaskSetResult) -> str:
    """Per task: each trained method's mean, its spreads, and its paired differences (95 % intervals)
    to the sources' average and to the best baseline."""
    cells = _cells_by_method(result)
    if "average" not in cells and not any(r.kind == "baseline" for r in result.rows):
        return ""
    ratio = _test_over_val(result)
    splits = sorted({c.split for cs in cells.values() for c in cs})
    seeds = sorted({c.seed for cs in cells.values() for c in cs if c.seed is not None})
    lines = [f"### Paired comparison: {', '.join(result.tasks)} ({len(splits)} splits × {len(seeds)} seeds)", ""]
    for task in result.tasks:
        best = best_baseline(result, task)
        lines += [f"**{task}** ({result.score_label(task)}; best baseline: {best.display() if best else 'none'})", "",
                  "| method | mean | SD over splits | SD over seeds | − average [95 % CI] | − best baseline [95 % CI] "
                  "| average kept |", "|---|---|---|---|---|---|---|"]
        for row in result.rows:
            mine = cells.get(row.method)
            if not mine or task not in {t for c in mine for t in c.scores}:
                continue
            over_splits, over_seeds = spreads(mine, task)
            vs_avg = (paired_difference(mine, cells["average"], task, ratio)
                      if "average" in cells and row.kind in ("baseline", "emm") else None)
            vs_best = (paired_difference(mine, cells[best.method], task, ratio)
                       if best and best.method != row.method and row.kind in ("baseline", "emm") else None)
            kept = row.extra.get("restored_average", {}).get(task)
            n = len([c for c in mine if task in c.scores])
            lines.append(f"| {row.display()} | {row.mean(task):.5f} | {_spread(over_splits)} | {_spread(over_seeds)} | "
                         f"{_diff_cell(vs_avg)} | {_diff_cell(vs_best)} | "
                         f"{'–' if kept is None else f'{kept}/{n}'} |")
        lines.append("")
    basis = "corrected resampled t-interval over the splits (Nadeau & Bengio 2003; seeds averaged within a split)" \
        if len(splits) > 1 else "t-interval over the seeds of one split (training noise only, not test-set noise)"
    lines += [f"Differences are paired: the same split for both methods. 95 % interval: {basis}. A difference is "
              "**better** or **worse** only when its interval excludes zero; otherwise it is a tie. "
              "\"average kept\": cells in which fuse's guard exported the sources' average for the task, because the "
              "trained fusion scored below it on validation (residual mode: its untrained state; paper mode: the "
              "sources run whole)."]
    return "\n".join(lines)


def guard_note(result: TaskSetResult) -> str:
    """How often fuse's guard kept the sources' average, per fused method and task (cells kept / cells)."""
    parts = []
    for row in result.rows:
        kept = row.extra.get("restored_average")
        if row.kind != "emm" or not kept:
            continue
        n = len(row.extra.get("cells", []))
        parts.append(f"{row.method} " + ", ".join(f"{t} {kept.get(t, 0)}/{n}" for t in result.tasks))
    return ("Guard (cells in which the exported model is the sources' average for the task): " + "; ".join(parts)
            + ".") if parts else ""


def table_two(result: TaskSetResult) -> str:
    """Table II: the ablation of the (paper) fusion network; gain against its first row."""
    if not result.ablation:
        return ""
    tasks = result.tasks
    paper = tasks == PAPER_TASKS
    head = ["Variant"] + [f"{t} {result.score_label(t)}" for t in tasks] + [f"gain {t}" for t in tasks] + ["trainable"] + (
        ["paper (income / never married)"] if paper else [])
    lines = [f"### Table II: ablation of the fusion network ({', '.join(tasks)})", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = result.ablation[0]
    for row in result.ablation:
        gains = [_signed(None if row.mean(t) is None or base.mean(t) is None else row.mean(t) - base.mean(t))
                 for t in tasks]
        cells = [row.display()] + [_auc_cell(row, t) for t in tasks] + gains + [_int(row.trainable)]
        if paper:
            cells.append(_paper_cell(PAPER_TABLE2, row.method, tasks))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Gain: against the first row, as in the paper's Table II. All variants use the paper's network "
              "(mode=paper); \"no trained components\" means the same component structure trained from scratch."]
    lines += failure_notes(result.ablation)
    return "\n".join(lines)


def gate_table(result: TaskSetResult) -> str:
    """Fusion-gate statistics of each fused model (first seed, test rows)."""
    blocks = []
    for key, gates in result.gates.items():
        if not gates or not gates.get("levels"):
            continue
        lines = [f"#### Gates of {key} ({', '.join(result.tasks)}; first seed, {gates.get('rows', '?')} test rows)", "",
                 "| level | task | task gate (own models) | fusion gate mean | selected (top-1 share) "
                 "| attention on own token |",
                 "|---|---|---|---|---|---|"]
        for level in gates["levels"]:
            for task, info in level["tasks"].items():
                fmt = lambda d: ", ".join(f"{k} {v:.2f}" for k, v in (d or {}).items()) or "–"  # noqa: E731
                own = info.get("attention_on_own_token")
                lines.append(f"| {level['level']} | {task} | {fmt(info.get('task_gate'))} | "
                             f"{fmt(info.get('fusion_gate_mean'))} | {fmt(info.get('selected_fraction'))} | "
                             f"{'–' if own is None else f'{own:.2f}'} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _paper_warmup(max_epochs: int) -> int:
    from fusekit.fusion.options import PAPER_WARMUP_EPOCHS

    return min(PAPER_WARMUP_EPOCHS, max_epochs - 1)


def hyperparameter_table(result: BenchResult) -> str:
    """The baselines' hyperparameters and the shared budget."""
    lines = ["### Hyperparameters", "", "| method | hyperparameters |", "|---|---|"]
    for name, hp in result.hyperparameters.items():
        lines.append(f"| {name} | " + ", ".join(f"{k}={v}" for k, v in hp.items()) + " |")
    b = result.budget
    lines += ["", f"Budget for every trained method: Adam lr {b['lr']}, batch {b['batch_size']}, weight decay "
              f"{b['weight_decay']}, at most {b['max_epochs']} epochs, early stopping after {b['patience']} epochs "
              "without a better mean validation score (each task's kind's: AUC, accuracy, R2; best weights kept; the "
              f"paper network counts patience only after a warm-up of {_paper_warmup(b['max_epochs'])} epochs). "
              "Input block: 4-dim embeddings (init std 1e-4) per categorical column (integer inputs: per column, the "
              "ids seen in the training rows) plus the dense features (float inputs flattened)."]
    if b.get("train_rows"):
        lines.append(f"Quick run: {b['train_rows']} training, {b['val_rows']} validation, {b['test_rows']} test rows; "
                     "the figures are a smoke test, not results.")
    if b.get("in_process_fusion"):
        lines.append("Fused rows of this run were trained and scored in torch with fuse's model builder and rows, "
                     "without the ONNX export (the full run goes through `fusekit.fuse.fuse` and scores fused.onnx "
                     "with onnxruntime).")
    return "\n".join(lines)


def data_note(result: TaskSetResult) -> str:
    """Which rows each kind of method trained on."""
    if result.data.get("note"):
        return result.data["note"]
    rows = result.data.get("rows", {})
    spec = result.data.get("spec") or {}
    text = (f"Data: {rows.get('train', '?'):,} training rows. Each split halves the {rows.get('pool', '?'):,} rows of "
            "the test split, which no method trains on, into validation (early stopping) and test "
            f"({rows.get('validation', '?'):,} and {rows.get('test', '?'):,} rows); within a split every method is "
            "scored on the same test rows. The baselines train on all training rows.")
    holdout = spec.get("holdout")
    if holdout:
        text += (f" The source models were trained on the training split minus a seeded {holdout['fraction']:.0%} "
                 "holdout; the fused models train on that holdout only (rows the sources never saw).")
    return text


def render_markdown(result: BenchResult) -> str:
    """The whole report: Table I per task set, Table II, gate statistics, hyperparameters."""
    parts = [f"## fusekit bench: {result.dataset} (splits {', '.join(map(str, result.splits))}; seeds "
             f"{', '.join(map(str, result.seeds))}"
             f"{', quick' if result.quick else ''})", ""]
    for index, task_set in enumerate(result.sets):
        title = "Table I" if index == 0 else f"Table I, {len(task_set.tasks)} tasks"
        title += f": {', '.join(task_set.tasks)}"
        paired = paired_table(task_set)
        guarded = guard_note(task_set)
        parts += ([paired, ""] if paired else []) + ([guarded, ""] if guarded else [])
        parts += [table_one(task_set, title), "", data_note(task_set), ""]
        two = table_two(task_set)
        if two:
            parts += [two, ""]
        gates = gate_table(task_set)
        if gates:
            parts += [gates, ""]
    parts += [hyperparameter_table(result), "", f"Total time: {result.seconds:.0f} s."]
    return "\n".join(parts) + "\n"
