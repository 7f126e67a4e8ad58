"""The interface every multi-task baseline shares."""
from __future__ import annotations

import abc
import copy
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fusekit.errors import FusekitError
from fusekit.models.tabular_input import TabularInput
from fusekit.task_kinds import BINARY, TaskKind

if TYPE_CHECKING:
    from fusekit.models.baselines.inputs import InputLayout

# Input block settings common to every method, so that all baselines see the same features.
INPUT_DEFAULTS: dict[str, Any] = {"emb_dim": 4, "emb_init_std": 1e-4}


class MultiTaskBaseline(nn.Module, abc.ABC):
    """A multi-task model over fusekit's tabular inputs.

    Built from the categorical cardinalities, the number of dense features, the task names and
    hyperparameters (``defaults`` of the subclass, overridable by keyword). ``forward(cat, dense)``
    returns ``{task: prediction}`` in each task's training space (``kinds``: a logit [B] for binary
    tasks, the default; K logits [B, K] for multiclass ones; a value [B]), the model protocol of
    ``fusekit.train.fit``, which takes the loss from each kind. With ``layout`` the model reads
    named inputs instead (``forward(*inputs)`` in ``layout.names`` order; fusekit/models/baselines/inputs.py)
    and ``cardinalities``/``n_dense`` are not used.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, cardinalities: list[int], n_dense: int, tasks: list[str], *,
                 kinds: dict[str, TaskKind] | None = None, layout: "InputLayout | None" = None, **hparams: Any):
        super().__init__()
        tasks = list(tasks)
        if not tasks:
            raise FusekitError(f"{self.name} needs at least one task; pass the task names")
        if len(set(tasks)) != len(tasks):
            raise FusekitError(f"task names repeat in {tasks}; give each task once")
        allowed = {**INPUT_DEFAULTS, **self.defaults}
        unknown = sorted(set(hparams) - set(allowed))
        if unknown:
            raise FusekitError(
                f"unknown hyperparameter(s) {unknown} for {self.name}; known: {sorted(allowed)}"
            )
        self.tasks = tasks
        self.hparams: dict[str, Any] = copy.deepcopy({**allowed, **hparams})
        self.task_kinds = {t: (kinds or {}).get(t, BINARY) for t in tasks}
        if layout is None:
            self.input = TabularInput(
                list(cardinalities), n_dense, emb_dim=self.hparams["emb_dim"], init_std=self.hparams["emb_init_std"]
            )
            self.input_names = ["categorical", "dense"]
        else:
            from fusekit.models.baselines.inputs import NamedInput

            self.input = NamedInput(layout, emb_dim=self.hparams["emb_dim"], init_std=self.hparams["emb_init_std"])
            self.input_names = list(layout.names)
        self.build(self.input.out_features)
        # Towers end in one unit; a multiclass task's gets K (made after build, so that binary
        # models draw their initial weights exactly as before).
        for task, tower in zip(self.tasks, self.towers):
            width = self.task_kinds[task].width
            if width != 1:
                tower.out = nn.Linear(tower.out.in_features, width)

    @abc.abstractmethod
    def build(self, in_dim: int) -> None:
        """Create the method's layers on top of an input of ``in_dim`` features."""

    @abc.abstractmethod
    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each task's tower output ([B], or [B, K] for a multiclass task), in ``self.tasks`` order,
        from the input features ``x``."""

    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.task_logits(self.input(*inputs))
        return dict(zip(self.tasks, logits))

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
