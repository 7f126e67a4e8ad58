"""One ONNX file that takes raw columns: the model's feature specification inside its graph.

``export_model`` writes a fusekit model (fused or single-task) so that any onnxruntime (C++,
Java, C#, Node.js, mobile) serves it without fusekit's Python encoder:

- inputs: one tensor ``[batch]`` per column of the model's ``fusekit.feature_spec``, in spec
  order: ``string`` for a categorical column (integer codes too, written as in the CSV: ``"33"``;
  ``"33.0"`` and ``" 33 "`` also find ``33``), ``float32`` for a dense one. An input is named as its
  column when that name is legal (see :func:`fusekit.deploy.encoder_graph.default_inputs`), else
  ``column_<k>``; the metadata key ``fusekit.raw_inputs`` lists ``{input, column, kind}`` per input;
- the encoding (:mod:`fusekit.deploy.encoder_graph`), then the model's own graph; outputs as the
  model's (one probability per task);
- optionally int8 weights (:mod:`fusekit.deploy.quantize`).

Before anything is written the file is run in onnxruntime on check rows (the user's, or rows made
from the vocabularies and scaling: every category, formatting variants and an unseen value) and
its outputs must equal ``FeatureSpec.encode`` + the model within 1e-6.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
from onnx import helper

from fusekit.data.features import FeatureSpec, as_float, as_text
from fusekit.decompose.manifest import SPEC_KEY
from fusekit.deploy.encoder_graph import (ML_OPSET, OPSET, PREFIX, RawInput, default_inputs, encoder_nodes,
                                          raw_value_infos)
from fusekit.errors import FusekitError
from fusekit.io import atomic_file
from fusekit.options import literal, quote

RAW_INPUTS_KEY = "fusekit.raw_inputs"  # JSON list of {input, column, kind}
TOLERANCE = 1e-6
MODEL_PREFIX = "fusekit.model/"  # given to a model tensor whose name a raw input takes
OWNER = "export_model()"
# A value that no vocabulary holds, for the synthesised check rows.
UNSEEN = "\u2400fusekit-unseen"


@dataclass
class ExportResult:
    """What ``export_model`` wrote and what it checked."""

    path: Path
    raw_inputs: list[RawInput]
    quantized: str | None
    check_rows: int
    check_source: str  # "synthesised" or the check file
    max_diff: float | None  # raw file vs FeatureSpec.encode + model (None without raw inputs)
    quantization_diff: float | None  # quantised vs float model on the check rows
    size_bytes: int
    source_bytes: int
    unseen: dict = field(default_factory=dict)  # the check rows' EncodingReport.to_dict()

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {"path": str(self.path), "inputs": [i.to_dict() for i in self.raw_inputs], "quantized": self.quantized,
                "check_rows": self.check_rows, "check_source": self.check_source, "max_diff": self.max_diff,
                "quantization_diff": self.quantization_diff, "size_bytes": self.size_bytes,
                "source_bytes": self.source_bytes, "check_encoding": self.unseen}


def raw_inputs_of(metadata: dict[str, str]) -> list[RawInput] | None:
    """The raw inputs a model's metadata lists (None: the model takes encoded inputs)."""
    if RAW_INPUTS_KEY not in metadata:
        return None
    return [RawInput(e["input"], e["column"], e["kind"]) for e in json.loads(metadata[RAW_INPUTS_KEY])]


def raw_feeds(frame: pd.DataFrame, inputs: list[RawInput], source: str = "data") -> dict[str, np.ndarray]:
    """The feeds of a raw-input model for ``frame``: each categorical column as the text
    ``FeatureSpec.encode`` reads (object array of str), each dense column as float32."""
    missing = [i.column for i in inputs if i.column not in frame.columns]
    if missing:
        raise FusekitError(f"{literal(source)} lacks column(s) {literal(', '.join(missing[:5]))} that the model reads")
    feeds = {}
    for i in inputs:
        if i.kind == "categorical":
            text = as_text(frame[i.column]).to_numpy(dtype=object)
            feeds[i.name] = text if all(type(v) is str for v in text) else text.astype(str).astype(object)
        else:
            feeds[i.name] = as_float(frame[i.column], i.column, source).astype(np.float32)
    return feeds


def _spec_of(model: onnx.ModelProto, where: str) -> FeatureSpec:
    meta = {p.key: p.value for p in model.metadata_props}
    if RAW_INPUTS_KEY in meta:
        raise FusekitError(f"{literal(where)} already takes raw columns; export the model it was made from")
    if SPEC_KEY not in meta:
        raise FusekitError(f"{literal(where)} carries no {SPEC_KEY}, so fusekit cannot put its encoding in the "
                           "graph; export models written by fusekit")
    return FeatureSpec.from_json(meta[SPEC_KEY])


def _check_model_inputs(model: onnx.ModelProto, spec: FeatureSpec, where: str) -> None:
    inits = {i.name for i in model.graph.initializer}
    inputs = {i.name: i for i in model.graph.input if i.name not in inits}
    expected = {"categorical": (onnx.TensorProto.INT64, len(spec.categorical)),
                "dense": (onnx.TensorProto.FLOAT, len(spec.dense))}
    if set(inputs) != set(expected):
        raise FusekitError(f"{literal(where)} takes inputs {literal(', '.join(inputs))}; a raw-input export needs a "
                           "fusekit model with inputs categorical and dense")
    for name, (dtype, width) in expected.items():
        tensor = inputs[name].type.tensor_type
        dims = tensor.shape.dim
        if tensor.elem_type != dtype or (len(dims) == 2 and dims[1].HasField("dim_value") and dims[1].dim_value != width):
            raise FusekitError(f"{literal(where)}: input {name} does not match its feature specification "
                               f"({width} columns of {onnx.TensorProto.DataType.Name(dtype).lower()}); "
                               "re-export the model with fusekit")


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _rename(graph: onnx.GraphProto, mapping: dict[str, str]) -> None:
    """Rename tensors everywhere in ``graph`` and its subgraphs (an inner scope reads outer names)."""
    for g in _graphs(graph):
        for node in g.node:
            node.input[:] = [mapping.get(n, n) for n in node.input]
            node.output[:] = [mapping.get(n, n) for n in node.output]
        for seq in (g.input, g.output, g.value_info, g.initializer):
            for item in seq:
                item.name = mapping.get(item.name, item.name)


def _names(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for g in _graphs(graph):
        names |= {n for node in g.node for n in (*node.input, *node.output) if n}
        names |= {i.name for seq in (g.input, g.output, g.value_info, g.initializer) for i in seq}
    return names


def _with_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` at default-domain opset >= 20 (converted by onnx's version converter when lower)."""
    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)
    if version >= OPSET:
        return model
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, OPSET)
    except Exception as exc:  # noqa: BLE001 - the converter raises C++ errors
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise FusekitError(f"cannot convert the model from opset {version} to {OPSET}, which the in-graph encoder "
                           f"needs ({first[:160]})") from exc
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    return converted


def attach_encoder(model: onnx.ModelProto, where: str = "the model") -> tuple[onnx.ModelProto, list[RawInput]]:
    """The model with its feature specification's encoder in front: raw columns in, the same outputs."""
    spec = _spec_of(model, where)
    _check_model_inputs(model, spec, where)
    core = onnx.ModelProto()
    core.CopyFrom(_with_opset(model))
    graph = core.graph
    outputs = {o.name for o in graph.output}
    inputs = default_inputs(spec, reserved=outputs)
    taken = {i.name for i in inputs}
    # A model tensor (its inputs categorical/dense included) whose name a raw input takes, or that
    # looks like the encoder's own, moves aside; outputs keep their names (inputs never take them).
    mapping = {n: MODEL_PREFIX + n for n in _names(graph) - outputs if n in taken or n.startswith(PREFIX)}
    _rename(graph, mapping)
    cat_name, dense_name = mapping.get("categorical", "categorical"), mapping.get("dense", "dense")
    nodes, inits = encoder_nodes(spec, inputs, cat_name, dense_name)
    inits_names = {i.name for i in graph.initializer}
    combined = helper.make_graph(
        nodes + list(graph.node), graph.name or "fusekit_raw_inputs", raw_value_infos(inputs), list(graph.output),
        inits + list(graph.initializer), value_info=list(graph.value_info))
    combined.input.extend(i for i in graph.input if i.name in inits_names)  # initializers listed as inputs stay
    del core.graph.node[:]  # release the copy before building the result
    opsets = {o.domain: o.version for o in core.opset_import}
    opsets[""] = max(opsets.pop("ai.onnx", 0), opsets.get("", 0), OPSET)
    opsets["ai.onnx.ml"] = max(opsets.get("ai.onnx.ml", 0), ML_OPSET)
    result = helper.make_model(combined, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                               ir_version=max(core.ir_version, 10))
    result.functions.extend(core.functions)
    result.metadata_props.extend(core.metadata_props)
    entry = result.metadata_props.add()
    entry.key, entry.value = RAW_INPUTS_KEY, json.dumps([i.to_dict() for i in inputs])
    return result, inputs


def synthesised_rows(spec: FeatureSpec) -> pd.DataFrame:
    """Check rows made from the spec alone: every vocabulary entry of every column, then rows with
    formatting variants (spaces around, an integer written ``33.0``), an unseen value and an empty
    one; dense values at the mean and up to 3 standard deviations away (float32-exact)."""
    longest = max([len(c.vocab) for c in spec.categorical] + [1])
    n = longest + 4
    data: dict[str, list] = {}
    for c in spec.categorical:
        vocab = c.vocab or [""]
        integers = [v for v in vocab if v.lstrip("-").isdigit()]
        values = [vocab[r % len(vocab)] for r in range(longest)]
        values += [f"  {vocab[0]} ", f"{integers[0]}.0" if integers else f"{vocab[-1]}  ", UNSEEN, ""]
        data[c.name] = values
    z = np.array([-3, -2, -1, -0.5, 0, 0.5, 1, 2, 3], np.float64)
    for d in spec.dense:
        values = d.mean + d.std * z[np.arange(n) % len(z)]
        data[d.name] = values.astype(np.float32).astype(np.float64)
    return pd.DataFrame(data)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from fusekit.onnxio.sessions import run, session

    sess, _ = session(model.SerializeToString(), "cpu", threads=1)
    return run(sess, feeds)


def max_output_diff(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> float:
    """Largest absolute difference over the outputs both dicts hold; inf when shapes differ."""
    from fusekit.onnxio.export import max_abs_diff

    names = list(a)
    return max_abs_diff([np.asarray(a[n]) for n in names], [np.asarray(b[n]) for n in names], relative=False)


def check_raw_model(served: onnx.ModelProto, core: onnx.ModelProto, inputs: list[RawInput], frame: pd.DataFrame,
                    source: str = "check rows", tol: float = TOLERANCE) -> tuple[float, dict]:
    """Max difference between ``served`` on raw ``frame`` and ``core`` on ``FeatureSpec.encode(frame)``;
    FusekitError when above ``tol``. Also returns the rows' encoding report."""
    spec = _spec_of(core, "the model")
    cat, dense, report = spec.encode_with_report(frame, source)
    expected = _run(core, {"categorical": cat, "dense": dense})
    got = _run(served, raw_feeds(frame, inputs, source))
    diff = max_output_diff(expected, got)
    if not diff <= tol:
        raise FusekitError(f"the raw-input graph disagrees with FeatureSpec.encode + the model on {literal(source)} "
                           f"(max diff {diff:.2e} > {tol:.0e}); not written: this is a fusekit bug, please report it")
    return diff, report.to_dict()


def _load(path: Path) -> onnx.ModelProto:
    path = Path(path)
    if not path.is_file():
        raise FusekitError(f"model file {literal(path)} does not exist; check the path")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf and onnx raise several types
        raise FusekitError(f"{literal(path)} is not a readable ONNX model ({type(exc).__name__}); check the file") from None


def _check_frame(check_data: Path | pd.DataFrame | None, spec: FeatureSpec | None) -> tuple[pd.DataFrame | None, str]:
    if isinstance(check_data, pd.DataFrame):
        return check_data, "the check rows"
    if check_data is not None:
        from fusekit.data.tabular import read_table

        return read_table(Path(check_data)), str(check_data)
    if spec is None:
        return None, "none"
    return synthesised_rows(spec), "synthesised"


def export_model(model_path: Path, out_path: Path, *, raw_inputs: bool = True, quantize: str | None = None,
                 check_data: Path | pd.DataFrame | None = None, force: bool = False) -> ExportResult:
    """Write ``model_path`` as a served file at ``out_path``: with the encoder inside (``raw_inputs``)
    and/or int8 weights (``quantize='dynamic'``); checked in onnxruntime, written atomically."""
    from fusekit.deploy.quantize import METHODS, quantize_model
    from fusekit.onnxio.export import check_model, set_metadata

    model_path, out_path = Path(model_path), Path(out_path)
    if not raw_inputs and quantize is None:
        raise FusekitError("nothing to export: ask for {raw_inputs=True} and/or {quantize='dynamic'}", owner=OWNER)
    if quantize is not None and quantize not in METHODS:
        raise FusekitError(f"unknown quantisation {quote(quantize)}; use {{quantize='dynamic'}}", owner=OWNER)
    if out_path.exists() and not force:
        raise FusekitError(f"{literal(out_path)} exists; choose another {{out_path}} or pass {{force=True}}", owner=OWNER)
    if out_path.exists() and model_path.exists() and out_path.resolve() == model_path.resolve():
        raise FusekitError(f"{{out_path}} is the model itself ({literal(out_path)}); write the export to another file",
                           owner=OWNER)
    model = _load(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    spec = _spec_of(model, str(model_path)) if raw_inputs else (
        FeatureSpec.from_json(meta[SPEC_KEY]) if SPEC_KEY in meta and RAW_INPUTS_KEY not in meta else None)
    if raw_inputs:
        _check_model_inputs(model, spec, str(model_path))
        model = _with_opset(model)  # convert once, before quantising, so both paths run the same core
    frame, source = _check_frame(check_data, spec)
    core = quantize_model(model, quantize) if quantize else model
    quantization_diff = None
    if quantize and frame is not None and spec is not None and RAW_INPUTS_KEY not in meta:
        cat, dense = spec.encode(frame, source)
        feeds = {"categorical": cat, "dense": dense}
        quantization_diff = max_output_diff(_run(model, feeds), _run(core, feeds))
    inputs: list[RawInput] = []
    max_diff, report = None, {}
    served = core
    if raw_inputs:
        served, inputs = attach_encoder(core, str(model_path))
        max_diff, report = check_raw_model(served, core, inputs, frame, source)
    what = ("raw-input " if raw_inputs else "") + (f"{quantize}-quantised " if quantize else "")
    doc = f"fusekit {what}export of {model_path.name}" + (
        ": inputs are the raw columns (see metadata fusekit.raw_inputs)" if raw_inputs else "")
    set_metadata(served, {p.key: p.value for p in served.metadata_props if p.key != "fusekit.version"}, doc)
    check_model(served)
    data = served.SerializeToString()
    with atomic_file(out_path) as tmp:
        Path(tmp).write_bytes(data)
    return ExportResult(out_path, inputs, quantize, 0 if frame is None else len(frame), source, max_diff,
                        quantization_diff, len(data), model_path.stat().st_size, report)
