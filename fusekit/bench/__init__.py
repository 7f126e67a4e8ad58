"""``fusekit bench``: the EMM paper's Census-Income comparison, every method under one protocol.

The names below are imported on first use, so that ``fusekit.bench.budget`` (read by the command
line for its defaults) does not bring in torch through the runner and the baselines.
"""
from __future__ import annotations

import importlib

_HOMES = {
    "BenchResult": "fusekit.bench.results", "Row": "fusekit.bench.results", "TaskSetResult": "fusekit.bench.results",
    "Budget": "fusekit.bench.budget",
    "ALL_METHODS": "fusekit.bench.runner", "DEFAULT_TASKS": "fusekit.bench.runner",
    "THREE_TASKS": "fusekit.bench.runner", "run_bench": "fusekit.bench.runner", "run_task_set": "fusekit.bench.runner",
}

__all__ = ["ALL_METHODS", "DEFAULT_TASKS", "THREE_TASKS", "BenchResult", "Budget", "Row", "TaskSetResult",
           "run_bench", "run_task_set"]


def __getattr__(name: str):
    if name not in _HOMES:
        raise AttributeError(f"module 'fusekit.bench' has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
