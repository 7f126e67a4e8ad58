"""``fusekit bench``: the EMM paper's Census-Income comparison, every method under one protocol."""
from fusekit.bench.results import BenchResult, Row, TaskSetResult
from fusekit.bench.runner import ALL_METHODS, DEFAULT_TASKS, THREE_TASKS, Budget, run_bench, run_task_set

__all__ = ["ALL_METHODS", "DEFAULT_TASKS", "THREE_TASKS", "BenchResult", "Budget", "Row", "TaskSetResult",
           "run_bench", "run_task_set"]
