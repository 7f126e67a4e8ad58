"""The bundled sample pools (real models trained on Census-Income), shipped as package data.

Each pool is a folder of single-task ONNX files with a ``pool.json`` that records, among other
things, the pool's task order: the demo, the bench and the tests all read it from there.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import FusekitError

ROOT = Path(__file__).resolve().parent
POOLS = ("census2", "census3")


@dataclass(frozen=True)
class SamplePool:
    """One bundled pool: its folder, task order and model files."""

    name: str
    folder: Path
    tasks: list[str]
    models: dict[str, list[str]]  # task -> model names (file stems), in pool.json order

    @property
    def paths(self) -> list[Path]:
        """The model files, task by task in the pool's task order."""
        return [self.folder / f"{m}.onnx" for t in self.tasks for m in self.models[t]]


def sample_pool(name: str) -> SamplePool:
    """The bundled pool ``name``; FusekitError naming the known pools otherwise."""
    if name not in POOLS:
        raise FusekitError(f"unknown sample pool {name!r}; the bundled pools are {', '.join(POOLS)}")
    folder = ROOT / name
    record = folder / "pool.json"
    if not record.is_file():
        raise FusekitError(f"the sample pool {name} is missing from {folder}; reinstall fusekit, or rebuild it "
                           "with `python -m fusekit.sample_models.make_pool`")
    data = json.loads(record.read_text())
    models: dict[str, list[str]] = {t: [] for t in data["pool_tasks"]}
    for entry in data["models"]:
        models[entry["task"]].append(Path(entry["file"]).stem)
    pool = SamplePool(name, folder, list(data["pool_tasks"]), models)
    missing = [p.name for p in pool.paths if not p.is_file()]
    if missing:
        raise FusekitError(f"the sample pool {name} lacks {', '.join(missing)} in {folder}; reinstall fusekit")
    return pool


def pool_for_tasks(tasks: list[str]) -> SamplePool:
    """The bundled pool whose tasks are exactly ``tasks`` (in any order)."""
    for name in POOLS:
        pool = sample_pool(name)
        if sorted(pool.tasks) == sorted(tasks):
            return pool
    raise FusekitError(f"no bundled sample pool has the tasks {', '.join(tasks)}; pass the models' folder "
                       "(the bundled pools have income,never_married and income,never_married,education)")
