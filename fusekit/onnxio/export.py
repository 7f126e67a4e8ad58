"""The one export path for every ONNX file fusekit writes (single-task models and fused models).

torch module -> dynamo export with a dynamic ``batch`` dimension -> serving passes -> the
exporter's per-node metadata (stack traces with the build machine's paths) and doc strings
removed -> fusekit's metadata and a model doc string that says what the file is -> onnx.checker ->
parity with torch in onnxruntime -> atomic write. Nothing is written unless every step passed.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from fusekit import __version__
from fusekit.errors import FusekitError
from fusekit.io import atomic_file

OPSET = 18
PARITY_TOLERANCE = 1e-5


@contextlib.contextmanager
def quiet_exporter() -> Iterator[None]:
    """Silence the dynamo exporter's progress lines and its warnings about absent torchvision ops."""
    # onnx_ir warns of every value it writes untyped: a spliced component's placeholder outputs,
    # which are renamed away when the component's graph takes the placeholder's place.
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


class _Positional(nn.Module):
    """Calls the wrapped module with positional inputs and returns a tuple of outputs.

    Every export goes through this one signature, so the dynamic batch is declared one way.
    """

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*inputs)
        return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def strip_exporter_metadata(proto: onnx.ModelProto) -> None:
    """Drop per-node metadata and doc strings: the exporter's stack traces carry absolute source
    paths and line numbers, leak the build machine and change whenever fusekit's code moves."""
    graphs = [proto.graph] + [attr.g for node in proto.graph.node for attr in node.attribute
                              if attr.type == onnx.AttributeProto.GRAPH]
    for graph in graphs:
        graph.doc_string = ""
        for node in graph.node:
            del node.metadata_props[:]
            node.doc_string = ""
    for function in proto.functions:
        function.doc_string = ""
        for node in function.node:
            del node.metadata_props[:]
            node.doc_string = ""


def name_batch_dim(proto: onnx.ModelProto) -> None:
    """Call the dynamic first dimension of inputs and outputs ``batch`` (the exporter may say s0)."""
    for value in list(proto.graph.input) + list(proto.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"


def name_dynamic_dims(proto: onnx.ModelProto, dynamic_axes: Sequence[Mapping[int, str]]) -> None:
    """Name the graph inputs' dynamic non-batch dims as the sources name them (the exporter says s1, ...)."""
    for value, axes in zip(proto.graph.input, dynamic_axes):
        dims = value.type.tensor_type.shape.dim
        for axis, name in axes.items():
            if axis < len(dims) and not dims[axis].HasField("dim_value"):
                dims[axis].dim_param = name


def _dynamic_shapes(n_inputs: int, dynamic_axes: Sequence[Mapping[int, str]] | None) -> dict:
    """torch.export's dynamic_shapes: ``batch`` on axis 0 of every input, and one Dim per named
    axis (a name shared by several inputs is one Dim, so the exporter knows those sizes are equal)."""
    batch = torch.export.Dim("batch")
    made: dict[str, torch.export.Dim] = {}

    def dim(name: str) -> torch.export.Dim:
        ident = "".join(c if c.isalnum() else "_" for c in name)
        return made.setdefault(name, torch.export.Dim(f"d_{ident}"))

    axes = list(dynamic_axes or []) + [{}] * n_inputs
    return {"inputs": tuple({0: batch, **{a: dim(n) for a, n in axes[i].items()}} for i in range(n_inputs))}


def set_metadata(proto: onnx.ModelProto, metadata: Mapping[str, str], doc: str) -> None:
    """Replace the file's metadata_props with ``metadata`` (plus ``fusekit.version``) and say what it is."""
    props = {"fusekit.version": __version__, **metadata}
    del proto.metadata_props[:]
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.producer_name = "fusekit"
    proto.producer_version = __version__
    proto.doc_string = doc


def torch_outputs(module: nn.Module, arrays: Sequence[np.ndarray], batch_size: int = 8192) -> list[np.ndarray]:
    """The module's outputs on ``arrays`` (positional inputs), batched, on CPU, without gradients."""
    n = len(arrays[0]) if len(arrays) else 0
    return torch_outputs_of(module, ([a[start:start + batch_size] for a in arrays]
                                     for start in range(0, max(n, 1), batch_size)))


def torch_outputs_of(module: nn.Module, batches: Iterable[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """The module's outputs on each batch of positional inputs in turn, concatenated (CPU, no gradients):
    data read batch by batch is never held whole, only the outputs are."""
    wrapper = _Positional(module).eval()
    chunks: list[list[np.ndarray]] = []
    with torch.no_grad():
        for batch in batches:
            # torch cannot wrap read-only arrays
            outs = wrapper(*[torch.from_numpy(np.require(a, requirements=["C", "W"])) for a in batch])
            if not chunks:
                chunks = [[] for _ in outs]
            for k, out in enumerate(outs):
                chunks[k].append(out.detach().float().numpy())
    return [np.concatenate(c) for c in chunks]


def max_abs_diff(expected: Sequence[np.ndarray], got: Sequence[np.ndarray], relative: bool = True) -> float:
    """Largest difference over matching outputs, absolute where |expected| <= 1 (probabilities)
    and relative above (logits and values, whose float32 rounding grows with their size), or
    absolute everywhere when not ``relative``; inf when shapes differ."""
    worst = 0.0
    for e, g in zip(expected, got):
        if e.shape != g.shape:
            return float("inf")
        if e.size:
            e64, g64 = e.astype(np.float64), g.astype(np.float64)
            scale = np.maximum(1.0, np.abs(e64)) if relative else 1.0
            worst = max(worst, float(np.max(np.abs(e64 - g64) / scale)))
    return worst


def check_model(proto: onnx.ModelProto) -> None:
    """onnx.checker's full check of a file fusekit is about to write; FusekitError if it fails."""
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as exc:  # noqa: BLE001 - checker raises ValidationError and C++ errors
        raise FusekitError(f"the exported model fails onnx.checker ({str(exc).splitlines()[0]}); "
                           "this is a fusekit bug, please report it") from exc


def export_onnx(module: nn.Module, path: Path, example: Sequence[torch.Tensor], input_names: Sequence[str],
                output_names: Sequence[str], metadata: Mapping[str, str], doc: str, *, serving: bool = True,
                parity_rows: int = 64, tol: float = PARITY_TOLERANCE,
                compare_as: Sequence[Callable[[np.ndarray], np.ndarray]] | None = None,
                dynamic_axes: Sequence[Mapping[int, str]] | None = None) -> Path:
    """Export ``module`` (called as ``module(*inputs)``) to ``path`` the one way fusekit writes ONNX.

    ``example`` holds one tensor per input, batch first; its first ``parity_rows`` rows are
    checked against onnxruntime before the file is written. ``serving`` runs the graph passes of
    :mod:`fusekit.onnxio.serving` (every output stays bit-identical). ``compare_as``: per output, what
    the parity compares (e.g. a logit's probability: the logit of a probability near 0 or 1 is
    ill-conditioned in float32, so its rounding, not the graph, would decide the check).
    ``dynamic_axes``: per input, the non-batch axes that stay dynamic, by name (sequence length,
    image size); the batch is always dynamic.
    """
    from fusekit.onnxio.serving import optimize_for_serving
    from fusekit.onnxio.sessions import run, session
    from fusekit.onnxio import splice

    module = module.cpu().eval()
    wrapper = _Positional(module).eval()
    rows = [t[:parity_rows].cpu() for t in example]
    if rows and rows[0].shape[0] < 2:  # the exporter specialises a batch of one
        rows = [torch.cat([t, t]) for t in rows]
    dynamic = _dynamic_shapes(len(rows), dynamic_axes)
    try:
        with quiet_exporter(), torch.no_grad(), splice.recording() as spliced:
            program = torch.onnx.export(wrapper, tuple(rows), dynamo=True, opset_version=OPSET,
                                        input_names=list(input_names), output_names=list(output_names),
                                        dynamic_shapes=dynamic, verbose=False, optimize=True,
                                        custom_translation_table=splice.TRANSLATIONS)
    except Exception as exc:  # the exporter's errors are long; keep the first line
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FusekitError(f"ONNX export failed ({type(exc).__name__}: {first[:200]}); "
                           "this architecture cannot be exported, try a simpler one") from exc
    proto = program.model_proto
    splice.splice_placeholders(proto, spliced)
    if serving:
        optimize_for_serving(proto)
    name_batch_dim(proto)
    name_dynamic_dims(proto, dynamic_axes or [])
    strip_exporter_metadata(proto)
    set_metadata(proto, metadata, doc)
    check_model(proto)
    data = proto.SerializeToString()
    arrays = [t.numpy() for t in rows]
    expected = torch_outputs(module, arrays)
    sess, _ = session(data, "cpu", threads=1, quiet=True)  # the sources' own warnings are not news here
    got = run(sess, dict(zip(input_names, arrays)))
    outputs = [got[n] for n in output_names]
    if compare_as is not None:
        expected = [f(e) for f, e in zip(compare_as, expected)]
        outputs = [f(g) for f, g in zip(compare_as, outputs)]
    diff = max_abs_diff(expected, outputs)
    if not diff <= tol:
        raise FusekitError(f"the exported model disagrees with torch (max diff {diff:.2e} > {tol:.0e}); "
                           "not written: this is a fusekit bug, please report it")
    path = Path(path)
    with atomic_file(path) as tmp:
        Path(tmp).write_bytes(data)
    return path
