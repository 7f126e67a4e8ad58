"""Fusing over feature maps and sequences: the real digits CNN and transformer pools
(fusekit.sample_models.make_digits, one epoch), decomposed, fused and served by onnxruntime."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from fusekit.data.dataset import Split, TabularDataset
from fusekit.decompose import decompose
from fusekit.decompose.manifest import Boundary, Manifest
from fusekit.deploy.evaluate import evaluate_onnx
from fusekit.errors import FusekitError
from fusekit.fusion.boundaries import BoundaryAdapter
from fusekit.fusion.fuse import build, export, fuse, prepare, score_sources
from fusekit.fusion.model import DeployedOutputs
from fusekit.fusion.options import FuseOptions, FusionOptions
from fusekit.onnxio.sessions import session
from fusekit.sample_models import make_digits as md
from fusekit.train_config import TrainConfig

TASKS = list(md.TASKS)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The CNN pool cut at its feature map, the transformer pool cut at every layer (two
    sequence boundaries [batch, 8, 16], then the pooled vector), and the digits as datasets."""
    root = tmp_path_factory.mktemp("maps")
    md.make_digits(root / "pool", kinds=["cnn", "transformer"], epochs=1)
    decompose(sorted((root / "pool" / "cnn").glob("*.onnx")), root / "cnn")
    decompose(sorted((root / "pool" / "transformer").glob("*.onnx")), root / "transformer", levels="all")
    splits = {s: np.load(root / "pool" / "data" / f"{s}.npz") for s in ("train", "val", "test")}

    def dataset(name: str) -> TabularDataset:
        made = [Split({name: d[name]}, {t: d[t] for t in TASKS}) for d in splits.values()]
        return TabularDataset(None, TASKS, *made)

    return {"root": root, "cnn": (root / "cnn", dataset("image")), "transformer": (root / "transformer", dataset("rows"))}


def test_the_layout_is_read_from_the_boundary_shape():
    def layout(shape):
        return Boundary(level=2, shape=shape, dtype="float32").layout(), Boundary(2, shape, "float32").channels()

    assert layout(["batch", 16]) == ("vector", 16)
    assert layout(["batch", 8, 4, 4]) == ("feature_map", 8)
    assert layout(["batch", 8, "h", "w"]) == ("feature_map", 8)
    assert layout(["batch", 8, 16]) == ("sequence", 16)
    assert layout(["batch", "seq", 16]) == ("sequence", 16)
    assert layout(["seq", "batch", 16]) == ("time_major", 16)
    for bad in (["seq", "len", 16], ["batch", 8, "d"], ["batch", 2, 3, 4, 5], ["batch"]):
        with pytest.raises(FusekitError, match=r"^level 2 components output shape .*fusekit fuses vectors") as err:
            layout(bad)
        assert "\n" not in str(err.value) and str(bad) in str(err.value)
    assert Boundary(1, ["n", 8, 16], "float32").layout(batch="n") == "sequence"


@pytest.mark.parametrize("layout, shape, positions", [("feature_map", (3, 5, 2, 7), (2, 3)),
                                                       ("sequence", (3, 9, 5), (1,)), ("time_major", (4, 3, 5), (0,))])
def test_the_adapter_pools_whatever_size_comes_and_spreads_back(layout, shape, positions):
    adapter = BoundaryAdapter(layout, shape[1] if layout == "feature_map" else shape[2])
    for scale in (1, 2):  # another spatial size / sequence length, the same adapter
        size = [n * scale if i in positions else n for i, n in enumerate(shape)]
        h = torch.randn(*size, generator=torch.Generator().manual_seed(scale))
        pooled = adapter.pool(h)
        batch = size[1] if layout == "time_major" else size[0]
        assert pooled.shape == (batch, adapter.channels)
        torch.testing.assert_close(pooled, h.mean(dim=positions))
        back = h + adapter.spread(pooled)
        assert back.shape == h.shape
        torch.testing.assert_close(back.mean(dim=positions), 2 * pooled)


@pytest.mark.parametrize("pool, fuse_at", [("cnn", "last"), ("transformer", "all")])
def test_the_untrained_fused_model_is_the_plain_average_of_its_sources(digits, pool, fuse_at):
    parts, ds = digits[pool]
    layouts = Manifest.load(parts).boundary_layouts()
    assert layouts == ([("feature_map", 8)] if pool == "cnn" else [("sequence", 16)] * 2 + [("vector", 16)])
    plan = prepare(parts, None, ds, FuseOptions(max_rows=300, fusion=FusionOptions(fuse_at=fuse_at)))
    model = build(plan).eval()
    arrays = plan.test.arrays()
    with torch.no_grad():
        fused = DeployedOutputs(model)(*[torch.as_tensor(arrays[n]) for n in model.input_names])
    sources = score_sources(plan)
    for task, out in zip(plan.task_names, fused):
        average = np.mean([plan.kinds[task].probabilities(sources[m]) for m in plan.tasks[task]], axis=0)
        assert out.shape == average.shape
        np.testing.assert_allclose(plan.kinds[task].probabilities(out.numpy()), average, rtol=1e-5, atol=1e-6)
    # AKF's gates saw one pooled vector per row and model at each fused level
    with torch.no_grad():
        _, stats = model.forward_with_stats(*[torch.as_tensor(arrays[n][:5]) for n in model.input_names])
    assert len(stats) == len(model.fused_levels) and stats[0]["task_gate"][0].shape == (5, 2)


@pytest.mark.parametrize("pool, fuse_at", [("cnn", "last"), ("transformer", "all")])
def test_fuse_writes_a_fused_onnx_that_onnxruntime_serves_like_torch(digits, pool, fuse_at, tmp_path):
    parts, ds = digits[pool]
    options = FuseOptions(max_rows=400, fusion=FusionOptions(fuse_at=fuse_at),  # every one of the 360 test rows
                          training=TrainConfig(max_epochs=1, progress=False, device="cpu"))
    result = fuse(parts, None, ds, tmp_path / "fused", options)
    assert result.metrics["onnx_parity_max_abs_diff"] <= 1e-5
    per_task = result.metrics["per_task"]
    assert {t: per_task[t]["score"] for t in TASKS} == {"digit_ge5": "auc", "digit": "accuracy"}
    path = tmp_path / "fused" / "fused.onnx"
    proto = onnx.load(str(path))
    name = proto.graph.input[0].name
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    test = ds.test.inputs[name]
    sess = session(path, "cpu", threads=1)[0]
    whole = sess.run(None, {name: test})
    one = [sess.run(None, {name: test[i:i + 1]}) for i in (0, 17)]  # the batch is dynamic
    for k in range(len(whole)):
        np.testing.assert_allclose(np.concatenate([o[k] for o in one]), whole[k][[0, 17]], atol=1e-6)
    evaluation = evaluate_onnx(path, ds, device="cpu")
    for task in TASKS:
        assert evaluation.scores[task] == pytest.approx(per_task[task]["test_score"], abs=1e-6)


def test_paper_mode_over_a_sequence_that_feeds_the_next_level_is_refused(digits):
    parts, ds = digits["transformer"]
    plan = prepare(parts, None, ds, FuseOptions(max_rows=100, fusion=FusionOptions(mode="paper")))
    with pytest.raises(FusekitError, match=r"feeds z_t \[batch, 16\] to level 2's components.*sequence") as err:
        build(plan)
    assert "\n" not in str(err.value)
    # the last boundary only reaches the towers: a CNN cut at its one feature map fuses in paper mode
    parts, ds = digits["cnn"]
    plan = prepare(parts, None, ds, FuseOptions(max_rows=100, fusion=FusionOptions(mode="paper")))
    model = build(plan).eval()
    with torch.no_grad():
        preds = model(torch.as_tensor(plan.test.inputs["image"][:4]))
    assert preds["digit"].shape == (4, 10) and preds["digit_ge5"].shape == (4,)


class TimeMajorGRU(torch.nn.Module):
    """Rows read time-major: GRU over [T, batch, 8], ``depth`` per-step Linear+ReLU, mean over T, head."""

    def __init__(self, depth: int, task: str):
        super().__init__()
        self.gru = torch.nn.GRU(8, 16)
        self.steps = torch.nn.Sequential(*[m for _ in range(depth) for m in (torch.nn.Linear(16, 16), torch.nn.ReLU())])
        self.head = md._Head(16, task)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(rows.transpose(0, 1))
        return self.head(self.steps(out).mean(dim=0))


def test_a_time_major_recurrent_pool_fuses_at_its_sequence_boundaries(digits, tmp_path):
    from fusekit.decompose.manifest import TASK_KEY
    from fusekit.onnxio.export import export_onnx

    _, ds = digits["transformer"]
    rows = ds.train.inputs["rows"]
    paths = []
    for t, task in enumerate(TASKS):
        for depth in (1, 2):
            torch.manual_seed(10 * t + depth)
            model = md.train(TimeMajorGRU(depth, task), rows, ds.train.labels[task], 1, 10 * t + depth)
            paths.append(export_onnx(model, tmp_path / f"{task}_{depth}.onnx", [torch.from_numpy(rows[:32])], ["rows"],
                                     [task], {TASK_KEY: task}, f"time-major GRU for {task}"))
    decompose(paths, tmp_path / "parts", levels="all")
    layouts = Manifest.load(tmp_path / "parts").boundary_layouts()
    assert ("time_major", 16) in layouts
    plan = prepare(tmp_path / "parts", None, ds, FuseOptions(max_rows=200, fusion=FusionOptions(fuse_at="all")))
    model = build(plan).eval()
    x = torch.as_tensor(plan.test.inputs["rows"])
    with torch.no_grad():
        fused = DeployedOutputs(model)(x)
    sources = score_sources(plan)
    for task, out in zip(plan.task_names, fused):
        average = np.mean([plan.kinds[task].probabilities(sources[m]) for m in plan.tasks[task]], axis=0)
        np.testing.assert_allclose(plan.kinds[task].probabilities(out.numpy()), average, rtol=1e-5, atol=1e-6)


class FreeLengthTransformer(torch.nn.Module):
    """Rows [batch, T, 8] of any length T: Linear embedding (no position table), encoder, mean, head."""

    def __init__(self, depth: int, task: str):
        super().__init__()
        self.embed = torch.nn.Linear(8, 16)
        layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.head = md._Head(16, task)

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(rows)).mean(dim=1))


def _dynamic_pool(folder, make, x: np.ndarray, labels: dict, name: str, axes: dict[int, str]) -> list:
    """Two models per task trained one epoch, exported by torch.onnx (dynamo) with a dynamic batch
    and the dynamic ``axes``, with their task in the metadata."""
    from fusekit.decompose.manifest import TASK_KEY

    folder.mkdir()
    paths = []
    for t, task in enumerate(TASKS):
        for depth in (1, 2):
            torch.manual_seed(10 * t + depth)
            model = md.train(make(depth, task), x, labels[task], 1, 10 * t + depth)
            shapes = ({0: torch.export.Dim("batch"), **{a: torch.export.Dim(n) for a, n in axes.items()}},)
            with torch.no_grad():
                proto = torch.onnx.export(model, (torch.from_numpy(x[:4]),), dynamo=True, input_names=[name],
                                          output_names=[task], dynamic_shapes=shapes, verbose=False).model_proto
            proto.metadata_props.add(key=TASK_KEY, value=task)
            paths.append(folder / f"{task}_{depth}.onnx")
            onnx.save(proto, str(paths[-1]))
    return paths


@pytest.mark.parametrize("pool, sizes", [("transformer", [(5, 8), (13, 8)]), ("cnn", [(6, 10), (12, 8)])])
def test_sources_with_dynamic_lengths_or_image_sizes_give_a_fused_onnx_with_the_same_dynamic_dims(
        digits, pool, sizes, tmp_path):
    _, ds = digits[pool]
    name = "rows" if pool == "transformer" else "image"
    axes = {1: "T"} if pool == "transformer" else {2: "H", 3: "W"}
    make = FreeLengthTransformer if pool == "transformer" else md.DigitsCNN
    paths = _dynamic_pool(tmp_path / "pool", make, ds.train.inputs[name], ds.train.labels, name, axes)
    decompose(paths, tmp_path / "parts", levels="all")
    parts = Manifest.load(tmp_path / "parts")
    assert [n for n in parts.inputs[0].shape[1:] if isinstance(n, str)] == list(parts.inputs[0].dynamic_axes().values())
    plan = prepare(tmp_path / "parts", None, ds, FuseOptions(max_rows=200, fusion=FusionOptions(fuse_at="all")))
    model = build(plan).eval()
    export(plan, model, tmp_path / "fused.onnx")
    dims = onnx.load(str(tmp_path / "fused.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == [
        "batch", *[parts.inputs[0].dynamic_axes().get(a, n) for a, n in enumerate(parts.inputs[0].shape) if a]]
    # the untrained fused model is the sources' plain average, in onnxruntime, at sizes it never saw
    rng = np.random.default_rng(0)
    sources = {p.stem: session(p, "cpu", threads=1)[0] for p in paths}
    fused = session(tmp_path / "fused.onnx", "cpu", threads=1)[0]
    for size in sizes:
        shape = (7, size[0], 8) if pool == "transformer" else (7, 1, *size)
        x = rng.random(shape, dtype=np.float32)
        for task, out in zip(TASKS, fused.run(None, {name: x})):
            average = np.mean([sources[f"{task}_{d}"].run(None, {name: x})[0] for d in (1, 2)], axis=0)
            np.testing.assert_allclose(out, average, rtol=1e-5, atol=1e-6)


class MaskedTransformer(FreeLengthTransformer):
    """Padded rows [batch, 8, 8] and their ``attention_mask`` [batch, 8] (1 = a real row, as
    tokenizers give it): the encoder's src_key_padding_mask in every layer, a masked mean, head."""

    def forward(self, rows: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        keep = attention_mask.to(rows.dtype)[..., None]
        h = self.encoder(self.embed(rows), src_key_padding_mask=attention_mask == 0)
        return self.head((h * keep).sum(1) / keep.sum(1))


def _padded(split: Split, seed: int) -> Split:
    """The split's rows cut to a seeded length of 3 to 8 each, zero-padded, with their attention_mask."""
    rows = split.inputs["rows"]
    lengths = np.random.default_rng(seed).integers(3, 9, len(rows))
    mask = (np.arange(8)[None] < lengths[:, None]).astype(np.int64)
    return Split({"rows": rows * mask[..., None].astype(np.float32), "attention_mask": mask}, split.labels)


def test_an_attention_mask_reaches_every_component_of_a_mixed_exporter_transformer_pool(digits, tmp_path):
    """One model per task exported by the dynamo exporter, the other by the legacy one (whose
    reshape targets ONNX shape inference could not follow until decompose folded them)."""
    from fusekit.decompose.manifest import TASK_KEY

    _, ds = digits["transformer"]
    ds = TabularDataset(None, TASKS, *[_padded(s, k) for k, s in enumerate((ds.train, ds.val, ds.test))])
    x, mask = (torch.from_numpy(ds.train.inputs[n][:4]) for n in ("rows", "attention_mask"))
    paths = []
    for t, task in enumerate(TASKS):
        for depth in (1, 2):
            torch.manual_seed(10 * t + depth)
            model = MaskedTransformer(depth, task).eval()
            path = tmp_path / f"{task}_{depth}.onnx"
            names = dict(input_names=["rows", "attention_mask"], output_names=[task])
            # with gradients on: under no_grad the legacy exporter meets torch's fused encoder kernel
            if depth == 1:
                batch = torch.export.Dim("batch")
                proto = torch.onnx.export(model, (x, mask), dynamo=True, dynamic_shapes=({0: batch}, {0: batch}),
                                          verbose=False, **names).model_proto
            else:
                torch.onnx.export(model, (x, mask), str(path), dynamo=False, **names,
                                  dynamic_axes={n: {0: "batch"} for n in ("rows", "attention_mask", task)})
                proto = onnx.load(str(path))
            proto.metadata_props.add(key=TASK_KEY, value=task)
            onnx.save(proto, str(path))
            paths.append(path)
    decompose(paths, tmp_path / "parts", levels="all")
    parts = Manifest.load(tmp_path / "parts")
    assert parts.boundary_layouts()[0] == ("sequence", 16)
    for entry in parts.models:  # every later component reads the mask, carried beside the boundary
        assert all("attention_mask" in carried for carried in entry.carried[:-1])
        later = [onnx.load(str(tmp_path / "parts" / c)) for c in entry.components[1:]]
        assert all(len(c.graph.input) == 1 + len(entry.carried[k]) for k, c in enumerate(later))
    plan = prepare(tmp_path / "parts", None, ds, FuseOptions(max_rows=300, fusion=FusionOptions(fuse_at="all")))
    model = build(plan).eval()
    assert model.sequence_mask.input == "attention_mask" and model.sequence_mask.levels == (0,)  # [batch, 8, 16]
    export(plan, model, tmp_path / "fused.onnx")
    fused = session(tmp_path / "fused.onnx", "cpu", threads=1)[0]
    sources = {p.stem: session(p, "cpu", threads=1)[0] for p in paths}
    feeds = {n: ds.test.inputs[n] for n in ("rows", "attention_mask")}

    def served(feeds, fused=fused):
        return fused.run(None, feeds), {task: np.mean([sources[f"{task}_{d}"].run(None, feeds)[0] for d in (1, 2)], axis=0)
                                        for task in TASKS}

    got, average = served(feeds)
    for task, out in zip(TASKS, got):  # the untrained fused model: the sources' plain average
        np.testing.assert_allclose(out, average[task], rtol=1e-5, atol=1e-6)
    # what lies under the padding does not matter, the mask does
    noisy = dict(feeds, rows=np.where(feeds["attention_mask"][..., None] == 1, feeds["rows"],
                                      np.random.default_rng(1).random(feeds["rows"].shape, dtype=np.float32)))
    for out, again in zip(got, served(noisy)[0]):
        np.testing.assert_allclose(again, out, rtol=1e-5, atol=1e-6)
    unmasked = served(dict(feeds, attention_mask=np.ones_like(feeds["attention_mask"])))[0]
    assert max(np.abs(a - b).max() for a, b in zip(got, unmasked)) > 1e-3
    # Trained (non-zero residual projections), AKF pools the real positions only: fused.onnx is still
    # blind to what lies under the padding; pooled over every position (sequence_mask none) it is not.
    def trained(mask_option: str) -> torch.nn.Module:
        plan.options.fusion.sequence_mask = mask_option
        model = build(plan).eval()
        with torch.no_grad():
            for p in model.projections.parameters():
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(p.numel()))
        return model

    export(plan, trained("auto"), tmp_path / "fused_trained.onnx")
    fused_trained = session(tmp_path / "fused_trained.onnx", "cpu", threads=1)[0]
    for out, again in zip(served(feeds, fused_trained)[0], served(noisy, fused_trained)[0]):
        np.testing.assert_allclose(again, out, rtol=1e-5, atol=1e-6)
    unpooled = trained("none")
    with torch.no_grad():
        clean, dirty = (unpooled(*[torch.from_numpy(f[n]) for n in model.input_names]) for f in (feeds, noisy))
    assert max((clean[t] - dirty[t]).abs().max().item() for t in TASKS) > 1e-3
