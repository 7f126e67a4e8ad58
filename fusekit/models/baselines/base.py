"""The interface every multi-task baseline shares."""
from __future__ import annotations

import abc
import copy
from typing import Any, ClassVar

import torch
from torch import nn

from fusekit.errors import FusekitError
from fusekit.models.tabular_input import TabularInput

# Input block settings common to every method, so that all baselines see the same features.
INPUT_DEFAULTS: dict[str, Any] = {"emb_dim": 4, "emb_init_std": 1e-4}


class MultiTaskBaseline(nn.Module, abc.ABC):
    """A multi-task model over fusekit's tabular inputs.

    Built from the categorical cardinalities, the number of dense features, the task names and
    hyperparameters (``defaults`` of the subclass, overridable by keyword). ``forward(cat, dense)``
    returns ``{task: logits [B]}``, the model protocol of ``fusekit.train.fit``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, cardinalities: list[int], n_dense: int, tasks: list[str], **hparams: Any):
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
        self.input = TabularInput(
            list(cardinalities), n_dense, emb_dim=self.hparams["emb_dim"], init_std=self.hparams["emb_init_std"]
        )
        self.build(self.input.out_features)

    @abc.abstractmethod
    def build(self, in_dim: int) -> None:
        """Create the method's layers on top of an input of ``in_dim`` features."""

    @abc.abstractmethod
    def task_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits [B] for each task, in ``self.tasks`` order, from the input features ``x``."""

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> dict[str, torch.Tensor]:
        logits = self.task_logits(self.input(cat, dense))
        return dict(zip(self.tasks, logits))

    def num_parameters(self, trainable_only: bool = False) -> int:
        """Number of parameters (only those with ``requires_grad`` when ``trainable_only``)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)
