"""The fused model: levels of AKF over frozen components, and one output per task.

Two modes:

* ``"paper"`` (EMM III-C): at each level every task runs its own models' components on its
  own input u_t (u_t = the model inputs at level 1), AKF turns them into z_t, which is u_t
  of the next level; a new tower per task maps the last z_t to the task's prediction (a logit,
  K logits or a value). Source heads unused.
* ``"residual"`` (default): each source model keeps its own path through its own components
  and its own head. At each fused level (the last by default, every level with
  ``fuse_at="all"``) AKF computes z_t from the outputs of task t's paths and adds it to each of
  those paths through a projection initialised at zero. The task's output is a
  learned mix (initialised uniform) of its heads' outputs in the kind's mix space
  (probabilities for classification, values for regression; fusekit/task_kinds.py) plus a
  tower residual on the prediction (initialised at zero), so the untrained model is exactly the
  plain average of the source models' outputs, and training can only start from that ensemble.

Components follow decompose's contract: level 1 takes the model inputs, later levels and the
head take the previous boundary followed by the tensors carried beside it, and a component
returns the boundary followed by what it carries on (a lone tensor when it carries nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from fusekit.fusion.akf import AKFLevel
from fusekit.fusion.masks import SequenceMask
from fusekit.fusion.boundaries import BoundaryAdapter, as_layout
from fusekit.errors import FusekitError
from fusekit.options import literal
from fusekit.task_kinds import BINARY, TaskKind
# The options and their choices live in fusion/options.py; imported from here too by older code.
from fusekit.fusion.options import FINETUNE, FUSE_AT, MODES, FusionOptions  # noqa: F401

@dataclass
class SourceModel:
    """One source model as the fused model sees it."""

    name: str
    components: list[nn.Module]
    level1_inputs: list[str]  # the level-1 component's input names, in its call order
    head: nn.Module | None = None
    component_paths: list[str] = field(default_factory=list)
    head_path: str | None = None
    output_index: int = 0  # which of the head's outputs is the task's


def split_carry(out) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """A component's result as (boundary, carried tensors)."""
    if isinstance(out, (tuple, list)):
        return out[0], tuple(out[1:])
    return out, ()


def run_head(head: nn.Module, h: torch.Tensor, carry: tuple[torch.Tensor, ...], index: int) -> torch.Tensor:
    """The head's output ``index`` on boundary ``h`` and the carried tensors."""
    out = head(h, *carry)
    return out[index] if isinstance(out, (tuple, list)) else out


def _tower(dim: int, hidden: int, zero_last: bool, width: int = 1) -> nn.Sequential:
    last = nn.Linear(hidden, width)
    if zero_last:
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
    return nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), last)


def _zero_linear(dim: int) -> nn.Linear:
    layer = nn.Linear(dim, dim)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class FusedModel(nn.Module):
    """AKF levels over frozen source components; ``forward(*inputs) -> {task: prediction}`` in the
    training space of each task's kind (a logit [B], K logits [B, K], a value [B]).

    ``inputs`` are the source models' inputs in the order of ``input_names``; ``kinds`` gives
    each task's kind (default binary with probability outputs). ``dims``: per level, the vector
    width of the boundary, or (layout, channels) for feature maps and sequences
    (:meth:`Manifest.boundary_layouts`); AKF sees those pooled (fusion/boundaries.py).
    """

    def __init__(self, tasks: dict[str, list[str]], sources: dict[str, SourceModel], dims: list,
                 input_names: list[str], options: FusionOptions | None = None,
                 kinds: dict[str, TaskKind] | None = None, sequence_mask: SequenceMask | None = None):
        super().__init__()
        options = options or FusionOptions()
        options.validate()  # again: the options may have been changed since they were made
        if len(tasks) < 2:
            raise FusekitError("fusing needs at least two tasks; give two or more")
        self.options = options
        self.task_names = list(tasks)
        self.task_models = {t: list(ms) for t, ms in tasks.items()}
        self.task_kinds = {t: (kinds or {}).get(t, BINARY) for t in self.task_names}
        self.input_names = list(input_names)
        self.adapters = [BoundaryAdapter(*as_layout(d)) for d in dims]
        self.sequence_mask = sequence_mask
        self.dims = [a.channels for a in self.adapters]
        dims = self.dims
        self.n_levels = len(dims)
        ordered = [m for ms in tasks.values() for m in ms]
        self.model_names = ordered
        # Module keys by position: model and task names may hold characters torch forbids in keys (".").
        self.mkey = {m: f"m{i}" for i, m in enumerate(ordered)}
        self.tkey = {t: f"t{i}" for i, t in enumerate(self.task_names)}
        self.level1_inputs = {m: list(sources[m].level1_inputs) for m in ordered}
        self.output_index = {m: int(sources[m].output_index) for m in ordered}
        for m in ordered:
            if len(sources[m].components) != self.n_levels:
                raise FusekitError(f"model {m} has {len(sources[m].components)} components but the manifest has "
                                   f"{self.n_levels} levels; decompose the models again")
            if options.mode == "residual" and sources[m].head is None:
                raise FusekitError(f"residual mode needs the head of model {literal(m)}; decompose again or use "
                                   "{mode='paper'}", owner="FusionOptions")
        # Paper mode's guard: tasks whose output is their sources' plain average (see use_average).
        self.average_paths = nn.ModuleDict()
        # Components live in a ModuleDict per model so checkpoints name them stably.
        self.components = nn.ModuleDict({self.mkey[m]: nn.ModuleList(sources[m].components) for m in ordered})
        if options.mode == "residual":
            self.heads = nn.ModuleDict({self.mkey[m]: sources[m].head for m in ordered})
        counts = [len(tasks[t]) for t in self.task_names]
        self.fused_levels = options.fused_levels(self.n_levels)
        if options.mode == "paper":
            # The next level's components would read the pooled z_t [batch, C] instead of the map.
            for level, adapter in enumerate(self.adapters[:-1]):
                if adapter.layout != "vector":
                    raise FusekitError(f"{{mode='paper'}} feeds z_t [batch, {adapter.channels}] to level "
                                       f"{level + 2}'s components, which read level {level + 1}'s {adapter.layout} "
                                       "boundary; use {mode='residual'} or cut the models at vector boundaries",
                                       owner="FusionOptions")
        # levels[j] and projections[j] belong to level fused_levels[j].
        self.levels = nn.ModuleList(
            AKFLevel(dims[i], counts, use_mtm=options.use_mtm, top_k=options.top_k, activation=options.activation)
            for i in self.fused_levels)
        if options.mode == "paper":
            self.towers = nn.ModuleDict({self.tkey[t]: _tower(dims[-1], options.tower_hidden, False,
                                                              self.task_kinds[t].width) for t in self.task_names})
        else:
            self.projections = nn.ModuleList(
                nn.ModuleDict({self.mkey[m]: _zero_linear(dims[i]) for m in ordered}) for i in self.fused_levels)
            # Zero logits -> uniform softmax weights over the task's heads.
            self.head_weights = nn.ParameterDict({self.tkey[t]: nn.Parameter(torch.zeros(len(tasks[t])))
                                                  for t in self.task_names})
            if options.tower:
                self.towers = nn.ModuleDict({self.tkey[t]: _tower(dims[-1], options.tower_hidden, True,
                                                                  self.task_kinds[t].width) for t in self.task_names})

    # -- helpers -----------------------------------------------------------------------------
    def _level1(self, model: str, named: dict[str, torch.Tensor]) -> tuple[torch.Tensor, tuple]:
        return split_carry(self.components[self.mkey[model]][0](*[named[n] for n in self.level1_inputs[model]]))

    def _level(self, model: str, level: int, h: torch.Tensor, carry: tuple) -> tuple[torch.Tensor, tuple]:
        return split_carry(self.components[self.mkey[model]][level](h, *carry))

    def _tower(self, t: int, task: str, z: torch.Tensor) -> torch.Tensor:
        out = self.towers[self.tkey[task]](z).float()
        return out if self.task_kinds[task].kind == "multiclass" else out.squeeze(-1)

    # -- forward -----------------------------------------------------------------------------
    def forward(self, *inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions per task in training space (see the class docstring)."""
        return self.forward_with_stats(*inputs)[0]

    def forward_with_stats(self, *inputs: torch.Tensor) -> tuple[dict[str, torch.Tensor], list[dict]]:
        """Predictions per task and, per level, the gate values of this batch."""
        if len(inputs) != len(self.input_names):
            raise FusekitError(f"the fused model takes {len(self.input_names)} inputs ({', '.join(self.input_names)})")
        named = dict(zip(self.input_names, inputs))
        if self.options.mode == "paper":
            return self._forward_paper(named)
        return self._forward_residual(named)

    def _pool_weights(self, named: dict[str, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Per masked level, the weight of each position [B, T]: 1 where real, 0 at padding."""
        mask = self.sequence_mask
        if mask is None:
            return {}
        real = (named[mask.input] == 0) if mask.padding else (named[mask.input] != 0)
        weights = real.to(torch.float32)
        return {level: weights for level in mask.levels}

    def _forward_paper(self, named: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        stats = []
        pool_weights = self._pool_weights(named)
        z: list[torch.Tensor] | None = None
        carry: dict[str, tuple] = {}
        for level in range(self.n_levels):
            outputs = []
            for t, task in enumerate(self.task_names):
                row = []
                for m in self.task_models[task]:
                    if level == 0:
                        h, carry[m] = self._level1(m, named)
                    else:
                        h, carry[m] = self._level(m, level, z[t], carry[m])
                    row.append(self.adapters[level].pool(h, pool_weights.get(level)))
                outputs.append(row)
            z, level_stats = self.levels[level](outputs)
            stats.append(level_stats)
        preds = {task: self._tower(t, task, z[t]) for t, task in enumerate(self.task_names)}
        for task in self.task_names:
            if self.tkey[task] in self.average_paths:
                preds[task] = self._average_of_sources(task, named)
        return preds, stats

    def use_average(self, task: str, paths: nn.Module) -> None:
        """Paper mode: from now on ``task``'s output is the plain average, in its kind's mix space, of
        ``paths(*inputs)`` (its source models whole, e.g. ``fusion.fuse.SourcePaths``), the same
        average the sources give, whatever the fusion network learned."""
        if self.options.mode != "paper":
            raise FusekitError("use_average is paper mode's guard; residual mode restores its untrained state")
        self.average_paths[self.tkey[task]] = paths

    def _average_of_sources(self, task: str, named: dict[str, torch.Tensor]) -> torch.Tensor:
        paths = self.average_paths[self.tkey[task]]
        kind = self.task_kinds[task]
        outs = paths(*[named[n] for n in paths.input_names])
        return kind.from_mix_space(sum(kind.to_mix_space(o) for o in outs) / len(outs))

    def _forward_residual(self, named: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[dict]]:
        stats = []
        paths: dict[str, torch.Tensor] = {}
        carry: dict[str, tuple] = {}
        z: list[torch.Tensor] = []
        pool_weights = self._pool_weights(named)
        for level in range(self.n_levels):
            for m in self.model_names:
                if level == 0:
                    paths[m], carry[m] = self._level1(m, named)
                else:
                    paths[m], carry[m] = self._level(m, level, paths[m], carry[m])
            if level not in self.fused_levels:
                continue
            j = self.fused_levels.index(level)
            adapter = self.adapters[level]
            outputs = [[adapter.pool(paths[m], pool_weights.get(level)) for m in self.task_models[task]]
                       for task in self.task_names]
            z, level_stats = self.levels[j](outputs)
            stats.append(level_stats)
            for t, task in enumerate(self.task_names):
                for m in self.task_models[task]:
                    paths[m] = paths[m] + adapter.spread(self.projections[j][self.mkey[m]](z[t]))
        preds = {}
        for t, task in enumerate(self.task_names):
            kind = self.task_kinds[task]
            # Outputs are mixed in float32: under AMP, log(p) of a half-precision p loses the tails.
            heads = [run_head(self.heads[self.mkey[m]], paths[m], carry[m], self.output_index[m])
                     for m in self.task_models[task]]
            pred = kind.mix(heads, torch.softmax(self.head_weights[self.tkey[task]].float(), dim=0))
            if self.options.tower:
                pred = pred + self._tower(t, task, z[t])
            preds[task] = pred
        return preds, stats

    def task_state_keys(self, task: str) -> list[str]:
        """The state entries that shape ``task``'s output and no other task's: its models'
        components and heads, their projections, the task's tower and head mix. (AKF's z_t reaches
        task t's output only through these, so restoring them restores the output.)"""
        mine = {f".{self.mkey[m]}." for m in self.task_models[task]} | {f".{self.tkey[task]}."}
        return [k for k in self.state_dict() if any(tag in f".{k}" for tag in mine)
                or k == f"head_weights.{self.tkey[task]}"]

    def restore_tasks(self, tasks: list[str], state: dict[str, torch.Tensor]) -> None:
        """Put ``tasks``' own entries back to ``state`` (the untrained model's: in residual mode,
        exactly the plain average of each task's sources)."""
        keys = {k for t in tasks for k in self.task_state_keys(t)}
        current = self.state_dict()
        current.update({k: state[k].to(current[k].device) for k in keys})
        self.load_state_dict(current)

    def fusion_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters (the components' own only when trained from scratch or fine-tuned)."""
        return [p for p in self.parameters() if p.requires_grad]

    def parameter_count(self) -> int:
        """Weights the model holds: the source components' and heads' (frozen or not) plus the
        fusion network's. Constant helper matrices of the AKF code are not weights and not counted."""
        seen: set[int] = set()
        total = 0
        owned = [self.components] + ([self.heads] if hasattr(self, "heads") else [])
        tensors = list(self.parameters()) + [b for part in owned for b in part.buffers() if b.is_floating_point()]
        for tensor in tensors:
            if tensor.data_ptr() not in seen:  # a fine-tuned weight is both a parameter and a component constant
                seen.add(tensor.data_ptr())
                total += tensor.numel()
        return total

    def optimizer_groups(self) -> list[dict]:
        """Trainable parameters by learning-rate scale: fine-tuned source weights move slower."""
        if not self.options.pretrained or self.options.finetune == "none":
            return [{"params": self.fusion_parameters(), "lr_scale": 1.0}]
        owned = list(self.components.parameters()) + (list(self.heads.parameters()) if hasattr(self, "heads") else [])
        source_ids = {id(p) for p in owned}
        fusion = [p for p in self.fusion_parameters() if id(p) not in source_ids]
        source = [p for p in owned if p.requires_grad]
        return [{"params": fusion, "lr_scale": 1.0}, {"params": source, "lr_scale": self.options.finetune_lr}]


class DeployedOutputs(nn.Module):
    """Wraps a FusedModel for deployment: per task, in task order, the output its sources give
    (probability, logit or value, in the sources' shape)."""

    def __init__(self, model: FusedModel):
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        preds = self.model(*inputs)
        return tuple(self.model.task_kinds[t].deployed(preds[t]) for t in self.model.task_names)

