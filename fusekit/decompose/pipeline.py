"""``fusekit decompose``: cut N trained models into aligned components (EMM Algorithm 1)."""
from __future__ import annotations

import contextlib
import gc
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import onnx

from fusekit import __version__
from fusekit.decompose.align import Analysis, analyse, choose_levels, common_layers, layer_classes
from fusekit.decompose.branches import carried_tensors, carry_names
from fusekit.errors import FusekitError
from fusekit.options import quote
from fusekit.decompose.graph import ModelGraph, load_graph, read_model, rename_inputs
from fusekit.io import atomic_dir, check_output_dir, check_output_paths, sha256_file
from fusekit.locks import holds_output
from fusekit.decompose.manifest import Boundary, CommonLayerEntry, InputSpec, Manifest, ModelEntry, \
    relative_source_path
from fusekit.decompose.surgery import cut_component, verify_chain
from fusekit.decompose.tables import format_shape, shown_rows
from fusekit.onnxio import optable


# The function whose arguments (levels, names, verify, out_dir, force) decompose's messages name.
OWNER = "decompose()"


@dataclass
class CommonLayer:
    """A layer every model has, in the same order."""

    summary: str
    signature: str
    shape: list
    dtype: str
    indices: list[int]  # index among each model's layers


@dataclass
class DecomposeResult:
    """What decompose found and wrote."""

    out_dir: Path
    names: list[str]
    paths: list[Path]
    layer_counts: list[int]
    inputs: list[dict]
    common: list[CommonLayer]
    chosen: list[int]  # indices into ``common`` that end the levels
    reason: str
    requested: int | str | None
    worst_diff: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    carried: dict[str, list[list[str]]] = field(default_factory=dict)  # per model, per level: carried tensors
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)  # per model, the input renames applied

    def carried_counts(self, level: int) -> dict[str, int]:
        """How many tensors each model's component of ``level`` (0-based) carries beside ``y``."""
        return {n: len(c[level]) for n, c in self.carried.items() if level < len(c)}

    @property
    def levels(self) -> int:
        """Number of levels written."""
        return len(self.chosen)

    def to_json(self) -> dict:
        """The result as a JSON-serialisable dict (what ``--json`` prints)."""
        return {
            "out_dir": str(self.out_dir),
            "models": [{"name": n, "path": str(p), "layers": c}
                       for n, p, c in zip(self.names, self.paths, self.layer_counts)],
            "inputs": self.inputs,
            "renamed_inputs": self.renamed,
            "candidates": len(self.common),
            "common_layers": [{"summary": c.summary, "signature": c.signature, "shape": c.shape, "dtype": c.dtype,
                               "indices": dict(zip(self.names, c.indices)), "chosen": k in self.chosen}
                              for k, c in enumerate(self.common)],
            "levels": self.levels,
            "level_choice": self.reason,
            "boundaries": [{"level": lv + 1, "common_layer": k, "shape": self.common[k].shape,
                            "dtype": self.common[k].dtype, "carried": self.carried_counts(lv)}
                           for lv, k in enumerate(self.chosen)],
            "verification": {"max_abs_diff": self.worst_diff, "tolerance": 1e-5} if self.worst_diff else None,
            "seconds": round(self.seconds, 3),
        }

    def table(self, limit: int | None = None, hint: str = "") -> str:
        """A readable report: models, common layers with their index in each model, levels, shapes.

        ``limit``: at most this many common-layer rows (the level ends first) and level lines, each
        run of left-out rows shown as one "... N more (hint)" line; None for all of them.
        """
        lines = [f"models: {', '.join(f'{n} ({c} layers)' for n, c in zip(self.names, self.layer_counts))}",
                 "inputs: " + ", ".join(f"{i['name']} {i['dtype']} {format_shape(i['shape'])}"
                                        for i in self.inputs)]
        for model, renames in self.renamed.items():
            lines.append(f"  {model}: inputs renamed " + ", ".join(f"{old!r} -> {new!r}" for old, new in renames.items()))
        lines.append("")
        width = max(8, *(len(n) for n in self.names))
        header = f"{'#':>3}  {'common layer':<36} {'output':<22}" + "".join(f" {n:>{width}}" for n in self.names)
        lines += [f"{len(self.common)} common cuttable layers (index of the layer in each model; the layer "
                  f"giving a model's outputs is its head, never a cut):", header]
        for k in shown_rows(len(self.common), self.chosen, limit, lines, hint):
            c = self.common[k]
            mark = f"L{self.chosen.index(k) + 1}" if k in self.chosen else ""
            summary = c.summary if len(c.summary) <= 36 else c.summary[:33] + "..."
            lines.append(f"{k + 1:>3}  {summary:<36} {format_shape(c.shape) + ' ' + c.dtype:<22}"
                         + "".join(f" {i:>{width}}" for i in c.indices) + (f"  <- end of level {mark[1:]}" if mark else ""))
        lines.append("")
        lines.append(f"levels: {self.levels} ({self.reason})")
        for lv in shown_rows(len(self.chosen), [0, len(self.chosen) - 1], limit, lines, hint):
            k = self.chosen[lv]
            c = self.common[k]
            start = "model inputs" if lv == 0 else format_shape(self.common[self.chosen[lv - 1]].shape)
            counts = self.carried_counts(lv)
            carries = ("; carries " + ", ".join(f"{n} {k}" for n, k in counts.items())
                       if any(counts.values()) else "")
            lines.append(f"  level {lv + 1}: {start} -> {format_shape(c.shape)} {c.dtype}{carries}")
        lines.append("  head: last cut -> model outputs (each model keeps its own)")
        if self.worst_diff:
            worst = max(self.worst_diff.values())
            lines.append(f"verified: components chained in onnxruntime reproduce every model, worst max abs "
                         f"difference {worst:.2e} (tolerance 1e-5)")
        else:
            lines.append("not verified (verification was skipped)")
        lines.append(f"wrote {self.out_dir}/manifest.json and {len(self.names) * (self.levels + 1)} component "
                     f"files in {self.seconds:.2f} s")
        return "\n".join(lines)


def _input_specs(graph: ModelGraph) -> list[dict]:
    return [{"name": n, "shape": list(graph.canonical_shape(n) or ()), "dtype": graph.tensors[n].dtype}
            for n in graph.inputs]


def _check_batch_first(name: str, graph: ModelGraph) -> None:
    """FusekitError when an output's first dim is an input dim other than the first input's first
    (what decompose and every data reader take for the batch): the inputs are not one row per
    example, as for an EmbeddingBag over 1-D ids with offsets."""
    first = graph.tensors[graph.inputs[0]].shape if graph.inputs else None
    for out in graph.outputs:
        shape = graph.tensors[out].shape
        if not shape or not isinstance(shape[0], str) or graph.dim_names.get(shape[0], "batch") == "batch":
            continue
        rows = next(i for i in graph.inputs if shape[0] in (graph.tensors[i].shape or ()))
        raise FusekitError(
            f"model {name}: output {quote(out)} has {shape[0]!r} rows, which input {quote(rows)} gives, but input "
            f"{quote(graph.inputs[0])} is {format_shape(list(first or ()))}: fusekit takes every input batch first, one "
            "row per example; an EmbeddingBag over 1-D ids with offsets takes ids [batch, bag] (bags of one size) "
            "instead")


def _check_inputs(names: list[str], graphs: list[ModelGraph]) -> list[dict]:
    specs = [_input_specs(g) for g in graphs]
    for name, spec in zip(names[1:], specs[1:]):
        if spec != specs[0]:
            def show(s: list[dict]) -> str:
                return ", ".join(f"{i['name']} {i['dtype']} {format_shape(i['shape'])}" for i in s) or "none"
            raise FusekitError(f"models have different inputs: {names[0]} takes {show(specs[0])} but {name} "
                               f"takes {show(spec)}; decompose models that share the same inputs")
    return specs[0]


def _no_common_message(names: list[str], analyses: list[Analysis]) -> str:
    kinds = []
    for name, a in zip(names, analyses):
        cands = a.candidates
        shown = ", ".join(f"{layer.summary}->{format_shape(layer.shape)}" for layer in cands[:6])
        if len(cands) > 6:
            shown += ", ..."
        kinds.append(f"{name} has {len(cands)} cuttable layers [{shown or 'none'}]")
    nearest = ""
    first = analyses[0].candidates
    for name, a in zip(names[1:], analyses[1:]):
        for same, why in ((lambda x, y: x.kind == y.kind, "same kind, different shapes"),
                          (lambda x, y: x.shape == y.shape, "same output shape, different structure")):
            pair = next(((x, y) for x in first for y in a.candidates if x.signature != y.signature and same(x, y)),
                        None)
            if pair:
                x, y = pair
                nearest = (f"; nearest candidates: {names[0]} layer {x.index} {x.summary}->{format_shape(x.shape)} "
                           f"vs {name} layer {y.index} {y.summary}->{format_shape(y.shape)} ({why})")
                break
        if nearest:
            break
    return ("no layer is common to all models (the output layer is never cut: it is each model's head): "
            + "; ".join(kinds) + nearest + "; decompose models that share at least one identical layer")


def analyse_models(paths: list[Path], names: list[str] | None = None,
                   progress: Callable[[str], None] | None = None, input_map: dict[str, str] | None = None,
                   renamed: dict[str, dict[str, str]] | None = None) -> tuple[list[str], list[ModelGraph],
                                                                              list[Analysis], list[dict]]:
    """Load, check and analyse the models; FusekitError for every problem the user can fix.

    ``progress`` is told, per model, when it is loaded and when it is analysed. ``input_map``
    (old -> new input name) renames the inputs of every model that has them, so that pools naming
    the same input differently align; ``renamed`` receives, per model, the renames applied.
    """
    paths = [Path(p) for p in paths]
    if len(paths) < 2:
        raise FusekitError("decompose needs at least two models; pass two or more ONNX files")
    names = list(names) if names else [p.stem for p in paths]
    if len(names) != len(paths):
        raise FusekitError(f"got {len(names)} names for {len(paths)} models; give one name per model")
    bad = [n for n in names if not n or n in (".", "..", "manifest.json") or "/" in n or "\\" in n]
    if bad:
        raise FusekitError(f"model name {quote(bad[0])} cannot be a folder name; give plain names in {{names}}",
                           owner=OWNER)
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise FusekitError(f"two models are named {quote(dupes[0])} (from their file names); give distinct names "
                           "(rename the files or give {names})", owner=OWNER)
    say = progress or (lambda text: None)
    models = [read_model(p) for p in paths]
    if input_map:
        unused = set(input_map)
        for name, path, model in zip(names, paths, models):
            applied = rename_inputs(model, dict(input_map), str(path))
            unused -= set(applied)
            if applied and renamed is not None:
                renamed[name] = applied
        if unused:
            raise FusekitError(f"no model has an input named {quote(sorted(unused)[0])}; map only inputs the models "
                               "have in {input_map}", owner=OWNER)
    _refuse_unsupported(paths, models)
    graphs = []
    for name, path, model in zip(names, paths, models):
        began = time.perf_counter()
        graphs.append(load_graph(path, model))
        _check_batch_first(name, graphs[-1])
        say(f"loaded {name}: {len(graphs[-1].nodes)} nodes ({time.perf_counter() - began:.1f} s)")
    inputs = _check_inputs(names, graphs)
    analyses = []
    for name, graph in zip(names, graphs):
        began = time.perf_counter()
        analyses.append(analyse(graph))
        say(f"analysed {name}: {len(analyses[-1].layers)} layers, {len(analyses[-1].candidates)} cuttable "
            f"({time.perf_counter() - began:.1f} s)")
    return names, graphs, analyses, inputs


def _refuse_unsupported(paths: list[Path], models: list[onnx.ModelProto]) -> None:
    """FusekitError naming every model that uses ops fuse could not load, and those ops.

    onnxruntime would cut and verify such a pool, but fuse runs the components with fusekit's
    own interpreter; refusing here saves writing parts nothing can use.
    """
    uses = [f"{path} uses {optable.describe(ops)}" for path, ops in
            ((path, optable.unsupported_ops(model)) for path, model in zip(paths, models)) if ops]
    if uses:
        raise FusekitError(f"{'; '.join(uses)}: ops fusekit's ONNX interpreter cannot run, so fuse could not "
                           f"load the components; re-export {'that model' if len(uses) == 1 else 'those models'} "
                           "without them (fusekit/onnxio/optable.py lists the ops fusekit runs)")


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: analysing a large model makes many small objects, and
    the collector rescanning the growing heap made the analysis superlinear in model size."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@holds_output("out_dir")
def decompose(model_paths: list[Path], out_dir: Path, levels: int | str | None = None, force: bool = False,
              verify: bool = True, names: list[str] | None = None,
              progress: Callable[[str], None] | None = None, threads: int | None = None,
              input_map: dict[str, str] | None = None) -> DecomposeResult:
    """Cut the models at their common layers and write components and manifest.json to ``out_dir``.

    ``levels``: None for the default (``min(3, common layers)``, balanced), an int, or ``"all"``.
    ``progress``: called with one line per model loaded, analysed and cut. Written atomically:
    on any error nothing is left behind. ``threads``: onnxruntime's threads for the verification
    (None: :func:`fusekit.threads.thread_count`). ``input_map``: old -> new input names, for pools
    whose models name the same input differently (the result says which renames applied).
    """
    from fusekit.threads import apply_threads

    apply_threads(threads)
    with _gc_paused():
        return _decompose(model_paths, out_dir, levels, force, verify, names, progress, input_map)


def _decompose(model_paths: list[Path], out_dir: Path, levels: int | str | None, force: bool, verify: bool,
               names: list[str] | None, progress: Callable[[str], None] | None = None,
               input_map: dict[str, str] | None = None) -> DecomposeResult:
    started = time.perf_counter()
    out_dir = Path(out_dir)
    check_output_paths(out_dir, model_paths, owner=OWNER)
    check_output_dir(out_dir, force)
    renamed: dict[str, dict[str, str]] = {}
    names, graphs, analyses, inputs = analyse_models(model_paths, names, progress, input_map, renamed)
    index = common_layers(layer_classes([a.candidates for a in analyses]))
    if len(index) == 0:
        raise FusekitError(_no_common_message(names, analyses))
    n_common = len(index)
    if isinstance(levels, str):
        if levels != "all":
            raise FusekitError(f"{{levels}} must be a positive number or 'all', not {quote(levels)}", owner=OWNER)
        requested: int | None = n_common
    else:
        requested = levels
    if requested is not None and requested < 1:
        raise FusekitError(f"{{levels}} must be at least 1, got {quote(requested)}", owner=OWNER)
    if requested is not None and requested > n_common:
        raise FusekitError(f"{{levels={requested}}} asks for more levels than the {n_common} common layers the "
                           f"models share; use {{levels={n_common}}} or fewer", owner=OWNER)
    # layer index (among all layers) of each common layer in each model
    layer_idx = np.array([[analyses[m].candidates[index[k, m]].index for m in range(len(names))]
                          for k in range(n_common)], dtype=np.int64)
    # By default, cut only where fuse can mix the boundary ([batch, d]) when such cuts exist:
    # a pool whose first common layer is one feature's embedding [batch, 1, 4] still fuses.
    vector = [k for k in range(n_common)
              if len(analyses[0].candidates[index[k, 0]].shape) == 2] if levels is None else []
    if vector and len(vector) < n_common:
        picked, reason = choose_levels(layer_idx[vector], None)
        chosen = [vector[c] for c in picked]
        reason = (f"default min(3, {len(vector)} common layers with vector outputs [batch, d]) = {len(chosen)}; "
                  f"{reason}")
    else:
        chosen, reason = choose_levels(layer_idx, requested)
    if levels is None and not (vector and len(vector) < n_common):
        reason = f"default min(3, {n_common} common layers) = {len(chosen)}; {reason}"
    elif levels == "all":
        reason = f"all levels asked for: {reason}"
    else:
        reason = f"{levels} levels asked for; {reason}"
    common = []
    for k in range(n_common):
        layer = analyses[0].candidates[index[k, 0]]
        common.append(CommonLayer(summary=layer.summary, signature=layer.signature, shape=list(layer.shape),
                                  dtype=layer.dtype, indices=layer_idx[k].tolist()))
    result = DecomposeResult(out_dir=out_dir, names=names, paths=[Path(p).resolve() for p in model_paths],
                             layer_counts=[len(a.layers) for a in analyses], inputs=inputs, common=common,
                             chosen=chosen, reason=reason, requested=levels, renamed=renamed)
    with atomic_dir(out_dir, force=force) as tmp:
        entries = []
        for m, (name, graph, a) in enumerate(zip(names, graphs, analyses)):
            cut_layers = [a.candidates[index[k, m]] for k in chosen]
            began = time.perf_counter()
            entries.append(_write_model(tmp, name, graph, a, cut_layers, verify, result))
            if progress:
                progress(f"cut {name} into {len(chosen)} components and a head"
                         + (" (verified)" if verify else "") + f" ({time.perf_counter() - began:.1f} s)")
        manifest = Manifest(
            inputs=[InputSpec(i["name"], list(i["shape"]), i["dtype"]) for i in inputs],
            boundaries=[Boundary(level=lv + 1, shape=common[k].shape, dtype=common[k].dtype,
                                 signature=common[k].signature, layer=common[k].summary)
                        for lv, k in enumerate(chosen)],
            common_layers=[CommonLayerEntry(signature=c.signature, summary=c.summary, shape=c.shape, dtype=c.dtype,
                                            layer_indices=dict(zip(names, c.indices))) for c in common],
            level_choice=reason, models=entries, fusekit_version=__version__)
        manifest.write(tmp)
    result.seconds = time.perf_counter() - started
    return result


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write a component: its weights are inline (read_model loads external data), so the
    bytes are the file; onnx.save would first walk every tensor looking for external data."""
    path.write_bytes(model.SerializeToString())


def _write_model(root: Path, name: str, graph: ModelGraph, a: Analysis, cut_layers: list, verify: bool,
                 result: DecomposeResult) -> ModelEntry:
    """Write one model's components and head; verify the chain; return its manifest entry."""
    folder = root / name
    folder.mkdir()
    files: list[Path] = []
    boundaries = [layer.end for layer in cut_layers]
    carried = carried_tensors(graph, a.order, [(layer.end_gap, layer.end) for layer in cut_layers])
    start = -1
    for lv, layer in enumerate(cut_layers):
        nodes = a.order[start + 1: layer.end_gap + 1]
        inputs = list(graph.inputs) if lv == 0 else [boundaries[lv - 1]] + carried[lv - 1]
        input_names = list(graph.inputs) if lv == 0 else ["x"] + carry_names(len(carried[lv - 1]))
        model = cut_component(graph, nodes, inputs, [layer.end] + carried[lv], input_names,
                              ["y"] + carry_names(len(carried[lv]), lv + 1), f"{name}/level{lv + 1}")
        path = folder / f"level{lv + 1}.onnx"
        _save(model, path)
        files.append(path)
        start = layer.end_gap
    head_model = cut_component(graph, a.order[start + 1:], [boundaries[-1]] + carried[-1], list(graph.outputs),
                               ["x"] + carry_names(len(carried[-1])), list(graph.outputs), f"{name}/head")
    head = folder / "head.onnx"
    _save(head_model, head)
    result.carried[name] = carried
    if verify:
        result.worst_diff[name] = verify_chain(graph, files, head, boundaries, carried)
    metadata = {p.key: p.value for p in graph.model.metadata_props}
    return ModelEntry(
        name=name, path=relative_source_path(graph.path, result.out_dir), sha256=sha256_file(graph.path),
        inputs=list(graph.inputs), outputs=list(graph.outputs),
        components=[f"{name}/{p.name}" for p in files],
        component_sha256=[sha256_file(p) for p in files],
        head=f"{name}/head.onnx", head_sha256=sha256_file(head),
        boundary_tensors=boundaries,
        layer_indices=[layer.index for layer in cut_layers],
        metadata=metadata,
        carried=carried,
    )


def result_json(result: DecomposeResult) -> str:
    """``--json`` text."""
    return json.dumps(result.to_json(), indent=2)
