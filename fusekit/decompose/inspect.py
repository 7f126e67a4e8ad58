"""``fusekit inspect``: a model's layers, their signatures and its cut points."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from fusekit.decompose.align import Analysis, analyse
from fusekit.decompose.branches import carried_tensors
from fusekit.decompose.graph import load_graph, read_model
from fusekit.decompose.tables import shown_rows
from fusekit.onnxio import optable


@dataclass
class InspectResult:
    """One model's analysis, ready to print."""

    path: Path
    analysis: Analysis
    unsupported: list[str] = field(default_factory=list)  # ops fusekit's interpreter cannot run

    def to_json(self) -> dict:
        """JSON-serialisable form (what ``--json`` prints)."""
        g = self.analysis.graph
        return {
            "path": str(self.path),
            "opset": g.opset,
            "nodes": len(g.nodes),
            "data_nodes": len(self.analysis.order),
            "inputs": [{"name": n, "shape": list(g.canonical_shape(n) or ()), "dtype": g.tensors[n].dtype}
                       for n in g.inputs],
            "outputs": [{"name": n, "shape": list(g.canonical_shape(n) or ()), "dtype": g.tensors[n].dtype}
                        for n in g.outputs],
            "unsupported_ops": list(self.unsupported),
            "cut_points": [{"position": gap, "tensor": t, "shape": list(g.canonical_shape(t) or ()),
                            "carried": carried}
                           for (gap, t), carried in zip(self.analysis.cuts,
                                                        carried_tensors(g, self.analysis.order, self.analysis.cuts))],
            "layers": [{"index": layer.index, "summary": layer.summary, "kind": layer.kind,
                        "signature": layer.signature, "ops": [g.nodes[i].op_type for i in layer.nodes],
                        "end": layer.end, "shape": list(layer.shape) if layer.shape is not None else None,
                        "dtype": layer.dtype, "cuttable": layer.cuttable, "why_not": layer.why_not}
                       for layer in self.analysis.layers],
        }

    def table(self, limit: int | None = None, hint: str = "") -> str:
        """Readable listing of layers and cut points.

        ``limit``: at most this many layer rows and cut-point lines (the first and the last of each
        kept), each run of left-out rows shown as one "... N more (hint)" line; None for all of them.
        """
        data = self.to_json()
        lines = [f"{self.path}: opset {data['opset']}, {data['nodes']} nodes ({data['data_nodes']} on the data path)",
                 "inputs: " + ", ".join(f"{i['name']} {i['dtype']} [{','.join(map(str, i['shape']))}]"
                                        for i in data["inputs"]),
                 "outputs: " + ", ".join(f"{o['name']} {o['dtype']} [{','.join(map(str, o['shape']))}]"
                                         for o in data["outputs"])]
        if self.unsupported:
            lines.append(f"unsupported: {optable.describe(self.unsupported)} (fusekit's ONNX interpreter cannot run "
                         "them, so decompose refuses this model; re-export it without them)")
        lines += ["", f"{'#':>3}  {'layer':<44} {'output':<22} {'signature':<17} cut"]
        layers = self.analysis.layers
        for k in shown_rows(len(layers), [0, len(layers) - 1], limit, lines, hint):
            layer = layers[k]
            summary = layer.summary if len(layer.summary) <= 44 else layer.summary[:41] + "..."
            cut = "yes" if layer.cuttable else f"no: {layer.why_not}"
            lines.append(f"{layer.index:>3}  {summary:<44} {layer.describe_output():<22} {layer.signature:<17} {cut}")
        lines.append("")
        lines.append(f"{len(self.analysis.cuts)} cut points (tensors every input-to-output path passes through, or "
                     "cuts of the deep path with the tensors of the branches beside it carried):")
        cuts = self.analysis.cuts
        carried = [c["carried"] for c in data["cut_points"]]
        for k in shown_rows(len(cuts), [0, len(cuts) - 1], limit, lines, hint):
            gap, t = cuts[k]
            shape = self.analysis.graph.canonical_shape(t)
            carries = f" (+{len(carried[k])} carried)" if carried[k] else ""
            lines.append(f"  after op {gap:>4}: {t} [{','.join(map(str, shape or ()))}]{carries}")
        return "\n".join(lines)


def inspect_model(path: Path) -> InspectResult:
    """Load, check and analyse one model (FusekitError when it is unusable)."""
    path = Path(path)
    model = read_model(path)
    return InspectResult(path=path, analysis=analyse(load_graph(path, model)),
                         unsupported=optable.unsupported_ops(model))


def result_json(result: InspectResult) -> str:
    """``--json`` text."""
    return json.dumps(result.to_json(), indent=2)
