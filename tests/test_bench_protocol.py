"""The benchmark protocol: paired intervals over splits, one file per cell, resuming a stopped run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from fusekit.bench import run_bench
from fusekit.bench.protocol import Cell, CellStore, paired_difference, spreads
from fusekit.errors import FusekitError

TASKS2 = ["income", "never_married"]


def _cells(method: str, values: dict[tuple[int, int | None], float]) -> list[Cell]:
    return [Cell("a+b", method, split, seed, {"a": v}) for (split, seed), v in values.items()]


def _pair(diffs: list[float], seeds: int = 2, noise: float = 0.0, ratio: float = 1.0):
    rng = np.random.default_rng(0)
    reference = _cells("average", {(k, None): 0.9 + 0.01 * k for k in range(len(diffs))})
    mine = _cells("emm", {(k, s): 0.9 + 0.01 * k + d + noise * rng.standard_normal()
                          for k, d in enumerate(diffs) for s in range(seeds)})
    return paired_difference(mine, reference, "a", ratio)


def test_a_consistent_gain_is_better_and_a_noisy_one_a_tie():
    better = _pair([0.010, 0.011, 0.009, 0.010, 0.012])
    assert better.verdict == "better" and better.low > 0 and better.splits == 5 and better.cells == 10
    assert better.mean == pytest.approx(0.0104)
    tie = _pair([0.010, -0.012, 0.004, -0.006, 0.003])
    assert tie.verdict == "tie" and tie.low < 0 < tie.high
    worse = _pair([-0.010, -0.011, -0.009, -0.010, -0.012])
    assert worse.verdict == "worse" and worse.high < 0


def test_the_split_to_split_level_differences_cancel_in_the_pairing():
    # Both methods move by 0.01 per split; the difference does not, so the interval is tight.
    diff = _pair([0.002, 0.0021, 0.0019, 0.002, 0.0020])
    assert diff.high - diff.low < 0.001


def test_overlapping_test_halves_widen_the_interval():
    narrow = _pair([0.002, 0.004, 0.001, 0.003, 0.002], ratio=0.1)
    wide = _pair([0.002, 0.004, 0.001, 0.003, 0.002], ratio=1.0)
    assert narrow.mean == wide.mean
    # sqrt(1/5 + 1) / sqrt(1/5 + 0.1) = 2: the overlap term, not the split count, dominates.
    assert (wide.high - wide.low) == pytest.approx(2 * (narrow.high - narrow.low))


def test_one_split_falls_back_to_the_seeds_and_says_so():
    diff = _pair([0.003], seeds=3, noise=0.001)
    assert diff.splits == 1 and "seeds" in diff.basis and diff.low is not None
    single = _pair([0.003], seeds=1)
    assert single.low is None and single.verdict == "unknown"


def test_failed_cells_do_not_count_and_spreads_separate_splits_from_seeds():
    cells = _cells("emm", {(0, 0): 0.90, (0, 1): 0.92, (1, 0): 0.94, (1, 1): 0.96})
    cells.append(Cell("a+b", "emm", 2, 0, {"a": 0.1}, info={"error": "diverged"}))
    over_splits, over_seeds = spreads(cells, "a")
    assert over_splits == pytest.approx(np.std([0.91, 0.95], ddof=1))
    assert over_seeds == pytest.approx(np.std([0.90, 0.92], ddof=1))


def test_a_cell_file_that_is_not_a_cell_is_refused(tmp_path):
    store = CellStore(tmp_path)
    store.put(Cell("a+b", "mmoe", 0, 1, {"a": 0.9}, 1.0, 2))
    assert store.get("a+b", "mmoe", 0, 1).scores == {"a": 0.9}
    store.path("a+b", "mmoe", 0, 2).write_text("[1, 2")
    with pytest.raises(FusekitError, match="not a cell written by `fusekit bench`"):
        store.all()


class _StopAfter:
    """A log that stops the run (as Ctrl-C would) once ``n`` cells have finished."""

    def __init__(self, n: int):
        self.n, self.lines = n, []

    def __call__(self, line: str) -> None:
        self.lines.append(line)
        if sum(" split " in x and " seed " in x and x.startswith("  ") for x in self.lines) >= self.n:
            raise KeyboardInterrupt


def test_a_stopped_run_resumes_with_its_finished_cells_and_gives_the_same_numbers(tmp_path):
    torch.set_num_threads(1)
    kw = dict(methods=["average", "mmoe"], three_tasks=None, splits=2)
    whole = run_bench("census-income", TASKS2, [0, 1], True, tmp_path / "whole", log=lambda _: None, **kw)
    out = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        run_bench("census-income", TASKS2, [0, 1], True, out, log=_StopAfter(2), **kw)
    assert not (out / "results.json").exists()
    kept = sorted(p.relative_to(out) for p in (out / "cells").rglob("*.json"))
    assert len(kept) >= 2
    lines: list[str] = []
    resumed = run_bench("census-income", TASKS2, [0, 1], True, out, log=lines.append, **kw)
    assert any("finished cells kept" in line for line in lines)
    trained = [line for line in lines if line.startswith("  mmoe")]
    assert len(trained) == 4 - sum(1 for p in kept if "mmoe" in str(p))
    for method in ("average", "mmoe"):
        assert resumed.sets[0].row(method).auc == whole.sets[0].row(method).auc
    # Asking for more seeds later reuses every finished cell.
    more: list[str] = []
    run_bench("census-income", TASKS2, [0, 1, 2], True, out, log=more.append, **kw)
    assert [line.split(":")[0] for line in more if line.startswith("  mmoe")] == [
        "  mmoe split 0 seed 2", "  mmoe split 1 seed 2"]
    data = json.loads((out / "results.json").read_text())
    assert data["splits"] == [0, 1] and data["seeds"] == [0, 1, 2]


def test_a_folder_with_another_protocol_is_refused_untouched(tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    run_bench("census-income", TASKS2, [0], True, out, methods=["average"], three_tasks=None, log=lambda _: None)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(FusekitError, match="another protocol .different budget"):
        run_bench("census-income", TASKS2, [0], True, out, methods=["average"], three_tasks=None, max_epochs=1,
                  log=lambda _: None)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
