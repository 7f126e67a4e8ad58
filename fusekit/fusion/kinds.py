"""Each task's kind and each source model's task output, decided once for a fusion run.

The models' heads say how their outputs end (fusekit/onnxio/endings.py); the labels settle
the one ambiguous case (an output with no activation: a binary logit when the labels are 0/1,
else a regression value); ``--task-kind`` overrides; the models of one task must agree.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import onnx

from fusekit.decompose.manifest import Manifest
from fusekit.errors import FusekitError
from fusekit.onnxio.endings import output_endings
from fusekit.options import literal
from fusekit.task_kinds import TaskKind, kind_from_ending

OWNER = "FuseOptions"


def task_output(model: str, outputs: list[str], task: str, chosen: Mapping[str, str] | None) -> int:
    """Index of ``task``'s output among ``model``'s outputs: the one named in ``chosen``, the only
    one, or the one named like the task."""
    if chosen and task in chosen:
        if chosen[task] not in outputs:
            raise FusekitError(f"model {literal(model)} has no output {literal(chosen[task])} (outputs: "
                               f"{literal(', '.join(outputs))}); name one of them in {{outputs}}", owner=OWNER)
        return outputs.index(chosen[task])
    if len(outputs) == 1:
        return 0
    if task in outputs:
        return outputs.index(task)
    raise FusekitError(f"model {literal(model)} has outputs {literal(', '.join(outputs))}; name task {literal(task)}'s "
                       "output in {outputs}", owner=OWNER)


def detect_kinds(parts: Manifest, tasks: Mapping[str, list[str]], labels: Mapping[str, np.ndarray] | None = None,
                 overrides: Mapping[str, str] | None = None,
                 outputs: Mapping[str, str] | None = None) -> tuple[dict[str, TaskKind], dict[str, int]]:
    """``({task: TaskKind}, {model: index of its task output})`` for the models of ``tasks``."""
    for name, given in (("task_kinds", overrides), ("outputs", outputs)):
        unknown = sorted(set(given or {}) - set(tasks))
        if unknown:
            raise FusekitError(f"{{{name}}} names task(s) {literal(', '.join(unknown))} that are not fused; "
                               f"name only {literal(', '.join(tasks))}", owner=OWNER)
    kinds: dict[str, TaskKind] = {}
    index: dict[str, int] = {}
    for task, models in tasks.items():
        found: dict[str, TaskKind] = {}
        for m in models:
            entry = parts.model(m)
            head = onnx.load(str(parts.head_path(m)), load_external_data=False)
            endings = list(output_endings(head).values())
            index[m] = task_output(m, [e.output for e in endings], task, outputs)
            ending = endings[index[m]]
            found[m] = kind_from_ending(ending.activation, ending.shape,
                                        labels=None if labels is None else labels.get(task),
                                        override=(overrides or {}).get(task),
                                        where=f"model {entry.name} (output {ending.output})")
        first, kind = next(iter(found.items()))
        for m, other in found.items():
            if (other.kind, other.classes) != (kind.kind, kind.classes):
                raise FusekitError(f"the models of task {literal(task)} disagree on its kind: {first} gives "
                                   f"{kind.describe()}, {m} gives {other.describe()}; fuse models of one kind per task "
                                   "or set the kind in {task_kinds}", owner=OWNER)
        kinds[task] = kind  # the first model's output form and shape are the fused output's
    return kinds, index
