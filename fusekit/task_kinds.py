"""What kind of task a model serves, and everything that follows from it: loss, metrics,
the output a deployed file gives, and how outputs of several models are averaged.

Kinds: ``binary`` (a probability or a logit per row), ``multiclass`` (``[B, K]`` softmax
probabilities or logits), ``regression`` and ``count`` (a value per row; counts train with a
Poisson loss on the predicted mean). Training works in one space per kind (the logit, the K
logits, the value); ``deployed`` turns it into the output the sources give, and
``probabilities`` turns a deployed output back into what the metrics read.

Every metric set has one *score*, higher is better and 1 is perfect (AUC, accuracy, R²), so
that early stopping can average tasks of different kinds. torch is imported only by the
functions that need it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fusekit.errors import FusekitError
from fusekit.metrics import accuracy, log_loss, macro_auc, regression_metrics, roc_auc
from fusekit.options import literal

if TYPE_CHECKING:
    import torch

KINDS = ("binary", "multiclass", "regression", "count")
OUTPUTS = {"binary": ("probability", "logit"), "multiclass": ("probability", "logit"),
           "regression": ("value",), "count": ("value",)}
SCORE = {"binary": "auc", "multiclass": "accuracy", "regression": "r2", "count": "r2"}
SCORE_LABEL = {"auc": "AUC", "accuracy": "accuracy", "r2": "R2"}  # how reports print each score
_EPS = 1e-6


@dataclass(frozen=True)
class TaskKind:
    """One task's kind, its number of classes (multiclass), the form of the sources' output and
    the trailing shape of that output (``()`` for ``[B]``, ``(1,)`` for ``[B, 1]``, ``(K,)``)."""

    kind: str = "binary"
    classes: int | None = None
    output: str = "probability"
    shape: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FusekitError(f"unknown task kind {literal(self.kind)}; choose one of {', '.join(KINDS)}")
        if self.output not in OUTPUTS[self.kind]:
            raise FusekitError(f"a {self.kind} task's output is {' or '.join(OUTPUTS[self.kind])}, "
                               f"not {literal(self.output)}")
        if self.kind == "multiclass" and (self.classes is None or self.classes < 2):
            raise FusekitError(f"a multiclass task needs two or more classes, got {self.classes}")
        if self.kind != "multiclass" and self.classes is not None:
            raise FusekitError(f"only multiclass tasks have classes; a {self.kind} task has none")

    # -- description -------------------------------------------------------------------------
    @property
    def width(self) -> int:
        """Units of the training-space output per row (K for multiclass, else 1)."""
        return int(self.classes) if self.kind == "multiclass" else 1

    @property
    def score_name(self) -> str:
        """The metric early stopping and the tables use (higher is better)."""
        return SCORE[self.kind]

    @property
    def score_label(self) -> str:
        """The score's name as reports print it (AUC, accuracy, R2)."""
        return SCORE_LABEL[self.score_name]

    @property
    def label_dtype(self) -> np.dtype:
        """dtype of this kind's label arrays."""
        return np.dtype(np.int64) if self.kind == "multiclass" else np.dtype(np.float32)

    def describe(self) -> str:
        """``binary (probability [B])`` and the like, for reports."""
        dims = "".join(f", {d}" for d in self.shape)
        extra = f", {self.classes} classes" if self.kind == "multiclass" else ""
        return f"{self.kind}{extra} ({self.output} [B{dims}])"

    def to_dict(self) -> dict:
        """JSON form (metrics.json, ONNX metadata)."""
        return {"kind": self.kind, "classes": self.classes, "output": self.output, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: dict) -> "TaskKind":
        """Inverse of :meth:`to_dict`."""
        return cls(data.get("kind", "binary"), data.get("classes"), data.get("output", "probability"),
                   tuple(int(d) for d in data.get("shape", ())))

    # -- metrics (numpy; labels are parsed by fusekit.data.labels.parse_labels) ----------------------------------------------------------
    def average(self, outputs: list[np.ndarray]) -> np.ndarray:
        """The plain average of several sources' deployed outputs, in mix space."""
        return np.mean([self.probabilities(o) for o in outputs], axis=0)

    def probabilities(self, output: np.ndarray) -> np.ndarray:
        """A deployed output as the metrics read it: P(class 1) [N], P [N, K], or values [N]."""
        out = np.asarray(output, dtype=np.float64)
        n = out.shape[0] if out.ndim else 1
        if self.kind == "multiclass":
            out = out.reshape(n, self.width)
            if self.output == "logit":
                out = np.exp(out - out.max(axis=1, keepdims=True))
                out /= out.sum(axis=1, keepdims=True)
            return out
        out = out.reshape(n)
        if self.kind == "binary" and self.output == "logit":
            return 1.0 / (1.0 + np.exp(-out))
        return out

    def metrics(self, labels: np.ndarray, output: np.ndarray) -> dict[str, float]:
        """This kind's metrics of a deployed output: binary AUC and log-loss; multiclass accuracy,
        log-loss and macro one-vs-rest AUC; regression and counts RMSE, MAE and R²."""
        return self.mix_metrics(labels, self.probabilities(output))

    def mix_metrics(self, labels: np.ndarray, p: np.ndarray) -> dict[str, float]:
        """:meth:`metrics` of outputs already in mix space (probabilities or values, e.g. an average)."""
        p = np.asarray(p, dtype=np.float64)
        y = np.asarray(labels).reshape(-1)
        if self.kind == "binary":
            return {"auc": roc_auc(y, p), "logloss": log_loss(y, p)}
        if self.kind == "multiclass":
            result = {"accuracy": accuracy(y, p), "logloss": log_loss(y, p)}
            try:
                result["macro_auc"] = macro_auc(y, p)
            except FusekitError:
                pass
            return result
        return regression_metrics(y, p)

    def score(self, labels: np.ndarray, output: np.ndarray) -> float:
        """The one number per task that early stopping and the tables compare (higher is better)."""
        return self.metrics(labels, output)[self.score_name]

    # -- torch: loss, deployed output, averaging ---------------------------------------------
    def loss(self, pred: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        """Mean loss of training-space predictions: BCE on logits, cross-entropy on K logits,
        squared error on values, Poisson deviance on the predicted mean of counts."""
        import torch.nn.functional as F

        pred = pred.float()
        if self.kind == "multiclass":
            return F.cross_entropy(pred.reshape(-1, self.width), target.long().reshape(-1))
        pred = pred.reshape(-1)
        target = target.float().reshape(-1)
        if self.kind == "binary":
            return F.binary_cross_entropy_with_logits(pred, target)
        if self.kind == "count":
            return F.poisson_nll_loss(pred.clamp_min(_EPS), target, log_input=False, full=False)
        return F.mse_loss(pred, target)

    def deployed(self, pred: "torch.Tensor") -> "torch.Tensor":
        """Training-space predictions as the sources' output: probability or logit, values; in the
        sources' shape (``[B]``, ``[B, 1]`` or ``[B, K]``)."""
        import torch

        if self.kind == "multiclass":
            pred = pred.reshape(-1, self.width)
            out = torch.softmax(pred.float(), dim=-1) if self.output == "probability" else pred
        else:
            pred = pred.reshape(-1)
            out = torch.sigmoid(pred.float()) if (self.kind == "binary" and self.output == "probability") else pred
        return out.reshape(-1, *self.shape)

    def to_mix_space(self, output: "torch.Tensor") -> "torch.Tensor":
        """A source's output in the space where sources are averaged: P(class 1) [B], P [B, K],
        or the value [B] (float32)."""
        import torch

        out = output.float()
        if self.kind == "multiclass":
            out = out.reshape(-1, self.width)
            return torch.softmax(out, dim=-1) if self.output == "logit" else out
        out = out.reshape(-1)
        return torch.sigmoid(out) if (self.kind == "binary" and self.output == "logit") else out

    def mix(self, outputs: "list[torch.Tensor]", weights: "torch.Tensor") -> "torch.Tensor":
        """The weighted average (``weights`` [M], summing to 1) of M sources' outputs, in mix
        space, as a training-space prediction.

        Probability and value outputs: :meth:`to_mix_space`, a weighted sum, :meth:`from_mix_space`.
        Logit outputs are averaged as probabilities too, but in log space: log p = logsumexp_k(log
        w_k + log p_k) with log p_k = logsigmoid(l_k) (log_softmax for K classes), and a binary logit
        is log p - log(1 - p) from the two log-space sums. So the result is the exact logit of the
        average probability, for logits of any size (a probability clamped at 1e-6 saturates near +-13.8).
        """
        import torch
        import torch.nn.functional as F

        if self.output != "logit":
            # A sum of scaled tensors, not a stack and a product: fewer ops for one row in onnxruntime.
            return self.from_mix_space(sum(w * self.to_mix_space(x) for w, x in zip(weights, outputs)))
        log_w = torch.log(weights.float())
        if self.kind == "multiclass":
            return _logsumexp([F.log_softmax(o.float().reshape(-1, self.width), dim=-1) + lw
                               for o, lw in zip(outputs, log_w)])
        log_p, log_q = [], []
        for o, lw in zip(outputs, log_w):
            x = o.float().reshape(-1)
            # log sigmoid(x) = min(x, 0) - log1p(exp(-|x|)), and log sigmoid(-x) = log sigmoid(x) - x:
            # written out, since the exporter writes F.logsigmoid as Log(Sigmoid(x)), -inf past |x| ~ 88.
            log_sig = torch.clamp(x, max=0.0) - torch.log1p(torch.exp(-torch.abs(x))) + lw
            log_p.append(log_sig)
            log_q.append(log_sig - x)
        return _logsumexp(log_p) - _logsumexp(log_q)

    def from_mix_space(self, mixed: "torch.Tensor") -> "torch.Tensor":
        """An average of sources (in mix space) as a training-space prediction: the logit of the
        mixed probability, the log of the mixed class probabilities, or the mixed value."""
        import torch

        if self.kind == "binary":
            p = mixed.clamp(_EPS, 1.0 - _EPS)
            return torch.log(p / (1.0 - p))
        if self.kind == "multiclass":
            return torch.log(mixed.clamp_min(_EPS))
        return mixed


BINARY = TaskKind()


def _logsumexp(terms: "list[torch.Tensor]") -> "torch.Tensor":
    """log(sum_k exp(terms[k])) of same-shaped tensors, stably, element by element: onnxruntime
    runs a ReduceLogSumExp over a stacked leading axis several times slower at large batch."""
    import torch

    top = terms[0]
    for t in terms[1:]:
        top = torch.maximum(top, t)
    return top + torch.log(sum(torch.exp(t - top) for t in terms))


def parse_kind(text: str) -> tuple[str, str | None]:
    """``regression``, ``binary:logit`` -> (kind, output or None), for ``--task-kind t=KIND``."""
    kind, _, output = text.partition(":")
    if kind not in KINDS:
        raise FusekitError(f"unknown task kind {literal(kind)}; choose one of {', '.join(KINDS)}")
    if output and output not in OUTPUTS[kind]:
        raise FusekitError(f"a {kind} task's output is {' or '.join(OUTPUTS[kind])}, not {literal(output)}")
    return kind, output or None


def kind_from_ending(activation: str, shape: tuple, *, labels: np.ndarray | None = None,
                     override: str | None = None, where: str = "the model") -> TaskKind:
    """A task's kind from what ends its sources' output (see fusekit/onnxio/endings.py).

    ``[B]`` or ``[B, 1]``: Sigmoid -> binary probability; nothing -> a binary logit when the
    labels are 0/1, else regression; Exp/Relu/Softplus -> regression. ``[B, K]``: Softmax ->
    multiclass probabilities, LogSoftmax or nothing -> multiclass logits. ``override`` (``--task-kind``:
    ``regression``, ``binary:logit``, ...) decides the kind, and the output form when it names one.
    """
    shape = tuple(shape)
    if any(d is None for d in shape):
        raise FusekitError(f"{where} has an output of dynamic shape [B, {', '.join(map(str, shape))}]; "
                           "fusekit fuses outputs of fixed shape")
    width = int(np.prod(shape)) if shape else 1
    if len(shape) > 1 or width < 1:
        raise FusekitError(f"{where} has an output of shape [B, {', '.join(map(str, shape))}]; fusekit fuses "
                           "task outputs [B], [B, 1] or [B, K]")
    kind, output = parse_kind(override) if override else (None, None)
    if kind is None:
        if width > 1:
            kind = "multiclass"
        elif activation == "sigmoid":
            kind = "binary"
        elif activation == "none" and labels is not None and np.isin(np.asarray(labels, dtype=np.float64),
                                                                     (0.0, 1.0)).all():
            kind = "binary"
        elif activation in ("none", "exp", "relu", "softplus"):
            kind = "regression"
        else:
            raise FusekitError(f"{where}'s output ends in {activation} over [B{', 1' if shape else ''}]; set the "
                               "task kind explicitly")
    if kind == "multiclass":
        if width < 2:
            raise FusekitError(f"{where} outputs one value per row, not K class scores; a multiclass task needs "
                               "[B, K] outputs")
        output = output or ("probability" if activation == "softmax" else "logit")
        return TaskKind("multiclass", width, output, shape)
    if width != 1:
        raise FusekitError(f"{where} outputs {width} values per row; a {kind} task needs [B] or [B, 1] outputs")
    if kind == "binary":
        output = output or ("probability" if activation == "sigmoid" else "logit")
        return TaskKind("binary", None, output, shape)
    return TaskKind(kind, None, "value", shape)
