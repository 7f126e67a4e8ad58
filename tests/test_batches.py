"""Batches streamed from Parquet/CSV files (fusekit/data/batches.py) against the rows held in memory."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fusekit.data import load_dataset
from fusekit.data.batches import StreamedSplit
from fusekit.errors import FusekitError, OptionError
from fusekit.stream_config import StreamOptions
from tests.fusion_pool import CATEGORICAL, DENSE, LABELS, TASKS


def _frame(pool) -> pd.DataFrame:
    return pd.read_csv(pool["csv"], dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def folder(pool, tmp_path_factory):
    """The pool's rows as a folder of three Parquet files, written in row groups of 300 rows."""
    root = tmp_path_factory.mktemp("stream") / "rows"
    root.mkdir()
    frame = _frame(pool)
    for k, part in enumerate(np.array_split(np.arange(len(frame)), 3)):
        pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), root / f"part{k}.parquet",
                       row_group_size=300)
    return root


def _load(source, spec, stream: str, buffer: int = 700):
    return load_dataset(source, list(TASKS), labels=LABELS, spec=spec,
                        streaming=StreamOptions(stream=stream, shuffle_buffer=buffer))


def _rows(inputs: dict, labels: dict) -> np.ndarray:
    """Every row as one float vector (ids, dense values, labels), sorted: the multiset of rows."""
    table = np.concatenate([inputs["categorical"].astype(np.float64), inputs["dense"].astype(np.float64),
                            np.stack([labels[t] for t in TASKS], axis=1).astype(np.float64)], axis=1)
    return table[np.lexsort(table.T[::-1])]


def _epoch(split: StreamedSplit, batch_size: int, seed: int | None, epoch: int = 0) -> list[tuple[dict, dict]]:
    return list(split.batches(batch_size, seed=seed, epoch=epoch))


def _joined(batches) -> tuple[dict, dict]:
    return ({k: np.concatenate([b[0][k] for b in batches]) for k in batches[0][0]},
            {t: np.concatenate([b[1][t] for b in batches]) for t in batches[0][1]})


@pytest.mark.parametrize("source", ["folder", "csv"])
def test_streamed_epoch_holds_the_rows_held_in_memory(pool, folder, source):
    path = folder if source == "folder" else pool["csv"]
    spec = pool["ds"].spec
    memory = _load(pool["csv"], spec, "never")
    streamed = _load(path, spec, "always")
    assert isinstance(streamed.train, StreamedSplit) and streamed.reading["streamed"]
    assert not memory.reading["streamed"] and "stream=never" in memory.reading["train"]
    assert len(streamed.train) == len(memory.train)
    batches = _epoch(streamed.train, 256, seed=3)
    assert [len(b[1]["income"]) for b in batches] == [256] * (len(memory.train) // 256) + [len(memory.train) % 256]
    inputs, labels = _joined(batches)
    # Ids are given out as the models take them, never as the int32 the buffer holds.
    assert inputs["categorical"].dtype == np.int64 and inputs["dense"].dtype == np.float32
    np.testing.assert_array_equal(_rows(inputs, labels), _rows(memory.train.inputs, memory.train.labels))
    # The carved validation and test rows are the in-memory path's; stream=always reads them from the file too.
    for part in ("val", "test"):
        assert isinstance(getattr(streamed, part), StreamedSplit)
        np.testing.assert_array_equal(getattr(streamed, part).load().cat, getattr(memory, part).cat)
        np.testing.assert_array_equal(getattr(streamed, part).labels["income"], getattr(memory, part).labels["income"])
    assert "carved validation and test rows: streamed" in streamed.reading["eval"]
    held = _joined(_epoch(streamed.train, 1000, seed=None))  # unshuffled: file order
    np.testing.assert_array_equal(held[0]["dense"], memory.train.dense)


def test_shuffle_is_seeded_per_epoch(pool, folder):
    split = _load(folder, pool["ds"].spec, "always").train

    def order(seed, epoch):
        return np.concatenate([b[0]["dense"][:, 0] for b in _epoch(split, 128, seed, epoch)])

    np.testing.assert_array_equal(order(0, 1), order(0, 1))
    assert not np.array_equal(order(0, 1), order(1, 1))
    assert not np.array_equal(order(0, 1), order(0, 2))
    assert np.array_equal(np.sort(order(0, 1)), np.sort(order(1, 2)))


def test_shards_are_disjoint_and_cover_the_split(pool, folder):
    split = _load(folder, pool["ds"].spec, "always").fusion_rows()  # a selection of the file's rows
    shards = [split.shard(rank, 2) for rank in (0, 1)]
    assert set(shards[0].rows).isdisjoint(shards[1].rows)
    np.testing.assert_array_equal(np.sort(np.concatenate([s.rows for s in shards])), split.rows)
    assert abs(len(shards[0]) - len(shards[1])) <= 1
    parts = [_joined(_epoch(s, 200, seed=5)) for s in shards]
    both = ({k: np.concatenate([p[0][k] for p in parts]) for k in parts[0][0]},
            {t: np.concatenate([p[1][t] for p in parts]) for t in parts[0][1]})
    whole = _joined(_epoch(split, 200, seed=None))
    np.testing.assert_array_equal(_rows(*both), _rows(*whole))
    with pytest.raises(FusekitError, match="rank 2 of world 2"):
        split.shard(2, 2)


def test_each_shard_reads_only_the_row_groups_that_hold_its_rows(pool, folder, monkeypatch):
    split = _load(folder, pool["ds"].spec, "always").train
    units = split.file.units
    read: list[int] = []
    real = type(split.file).chunks

    def chunks(self, columns, order=None, dictionary=False):
        read.extend(range(len(units)) if order is None else order)
        return real(self, columns, order, dictionary)

    monkeypatch.setattr(type(split.file), "chunks", chunks)
    seen = []
    for rank in (0, 1):
        read.clear()
        shard = split.shard(rank, 2, equal=True)
        rows = np.concatenate([b[1]["income"] for b in _epoch(shard, 128, seed=2)])
        assert len(rows) == len(shard)
        mine = {u for u, (_, _, first, n) in enumerate(units)
                if np.searchsorted(shard.rows, first + n) > np.searchsorted(shard.rows, first)}
        assert set(read) == mine and len(read) == len(mine)  # each row group at most once, only its own
        seen.append(mine)
    assert len(seen[0] & seen[1]) <= 1 and seen[0] | seen[1] == set(range(len(units)))
    assert len(seen[0]) < len(units) and len(seen[1]) < len(units)  # neither rank read the whole folder


def test_equal_shards_leave_out_the_last_rows_so_every_rank_takes_as_many_steps(pool, folder):
    split = _load(folder, pool["ds"].spec, "always").fusion_rows()
    for world in (2, 3):
        extra = len(split) % world
        split_of = split if extra else split.subset(np.arange(len(split) - 1))  # an uneven split
        extra = len(split_of) % world
        assert extra
        shards = [split_of.shard(rank, world, equal=True) for rank in range(world)]
        assert {len(s) for s in shards} == {len(split_of) // world}
        assert len({s.steps(64) for s in shards}) == 1
        held = np.sort(np.concatenate([s.rows for s in shards]))
        np.testing.assert_array_equal(held, split_of.rows[:len(split_of) - extra])  # the last `extra` rows left out
        assert [len(b[1]["income"]) for b in _epoch(shards[0], 64, seed=1)] == \
            [len(b[1]["income"]) for b in _epoch(shards[-1], 64, seed=1)]


def test_fuse_trains_on_a_streamed_parquet_folder(pool, folder, tmp_path):
    from fusekit.fusion.fuse import fuse
    from fusekit.fusion.options import FuseOptions
    from fusekit.train import TrainConfig

    options = FuseOptions(training=TrainConfig(max_epochs=2, batch_size=256, progress=False, device="cpu", threads=1),
                          labels=LABELS, streaming=StreamOptions(stream="always", shuffle_buffer=500))
    result = fuse(pool["parts"], TASKS, folder, tmp_path / "fused", options)
    reading = result.metrics["data"]["reading"]
    assert reading["streamed"] and reading["train"].startswith("streamed")
    assert result.metrics["rows"]["train"] == len(pool["ds"].fusion_rows())
    assert (tmp_path / "fused" / "fused.onnx").is_file()
    assert all(np.isfinite(r["train_loss"]) for r in result.metrics["history"])


def test_auto_keeps_small_files_in_memory_and_streams_above_the_budget(pool):
    spec = pool["ds"].spec
    small = load_dataset(pool["csv"], list(TASKS), labels=LABELS, spec=spec)
    assert not small.reading["streamed"] and "within the 1024 MB budget" in small.reading["train"]
    tight = load_dataset(pool["csv"], list(TASKS), labels=LABELS, spec=spec,
                         streaming=StreamOptions(memory_budget=1))
    assert tight.reading["streamed"] and "above the 1 MB budget" in tight.reading["train"]
    # The carved validation and test rows (a fifth of the file) fit the same budget: loaded once, not streamed.
    assert len(tight.val) + len(tight.test) < 0.25 * (len(tight.train) + len(tight.val) + len(tight.test))
    assert "eval" not in tight.reading
    assert not isinstance(tight.val, StreamedSplit) and not isinstance(tight.test, StreamedSplit)
    # Without the models' specification the encoders are fitted in passes over the file.
    fitted = load_dataset(pool["csv"], list(TASKS), labels=LABELS, categorical=CATEGORICAL, dense=DENSE,
                          streaming=StreamOptions(memory_budget=1))
    assert fitted.reading["streamed"] and "fitted in passes over the file" in fitted.reading["train"]


@pytest.mark.parametrize("source", ["folder", "csv"])
@pytest.mark.parametrize("named", [True, False])
def test_a_specification_fitted_on_a_streamed_file_is_the_one_fitted_in_memory(pool, folder, tmp_path, source, named):
    """Vocabularies, means and stds to the bit (the same fingerprint), the columns' kinds inferred alike,
    and the streamed rows encoded by it as the in-memory rows; a Parquet float column typed in the
    file (not text) too."""
    frame = _frame(pool)
    if source == "folder":
        path = folder
        typed = tmp_path / "typed.parquet"  # a typed dense column and an integer categorical one
        frame = frame.assign(age=frame["age"].astype(float) + 0.25, sex=frame["sex"].astype("category").cat.codes)
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), typed, row_group_size=700)
        paths = [folder, typed]
    else:
        paths = [pool["csv"]]
    columns = {"categorical": CATEGORICAL, "dense": DENSE} if named else {"exclude": []}
    for path in paths:
        both = {stream: load_dataset(path, list(TASKS), labels=LABELS, **columns,
                                     streaming=StreamOptions(stream=stream, shuffle_buffer=700))
                for stream in ("never", "always")}
        memory, streamed = both["never"], both["always"]
        assert isinstance(streamed.train, StreamedSplit) and not isinstance(memory.train, StreamedSplit)
        assert streamed.spec.to_dict() == memory.spec.to_dict()
        assert streamed.spec.fingerprint() == memory.spec.fingerprint()
        held = _joined(_epoch(streamed.train, 1000, seed=None))
        np.testing.assert_array_equal(held[0]["categorical"], memory.train.cat)
        np.testing.assert_array_equal(held[0]["dense"], memory.train.dense)
        np.testing.assert_array_equal(streamed.val.load().cat, memory.val.cat)  # stream=always: read from the file


def test_a_folder_file_without_a_column_is_refused_in_one_line(pool, tmp_path):
    root = tmp_path / "rows"
    root.mkdir()
    frame = _frame(pool)
    pq.write_table(pa.Table.from_pandas(frame.iloc[:2000], preserve_index=False), root / "a.parquet")
    pq.write_table(pa.Table.from_pandas(frame.iloc[2000:].drop(columns=["education"]), preserve_index=False),
                   root / "b.parquet")
    for stream in ("always", "auto"):
        with pytest.raises(FusekitError) as info:
            _load(root, pool["ds"].spec, stream)
        message = str(info.value)
        assert "b.parquet" in message and "'education'" in message and "\n" not in message


def test_stream_options_check_themselves():
    with pytest.raises(OptionError, match="stream"):
        StreamOptions(stream="sometimes")
    with pytest.raises(OptionError, match="memory_budget"):
        StreamOptions(memory_budget=0)


class _Input:
    def __init__(self, name, shape, dtype):
        self.name, self.shape, self.dtype = name, shape, dtype


@pytest.mark.parametrize("kind", ["parquet", "csv"])
def test_named_inputs_stream_with_the_casts_of_the_in_memory_reader(tmp_path, kind):
    from fusekit.data.named import read_splits

    rng = np.random.default_rng(0)
    n = 1500
    frame = pd.DataFrame({"item id": rng.integers(0, 50, n), "w[0]": rng.normal(size=n), "w[1]": rng.normal(size=n),
                          "clicked": rng.integers(0, 2, n), "note": ["x"] * n})
    if kind == "csv":
        path = tmp_path / "rows.csv"
        frame.to_csv(path, index=False)
    else:
        path = tmp_path / "rows"
        path.mkdir()
        for k, part in enumerate(np.array_split(np.arange(n), 2)):
            pq.write_table(pa.Table.from_pandas(frame.iloc[part], preserve_index=False), path / f"{k}.parquet",
                           row_group_size=256)
    inputs = [_Input("item id", ["batch"], "int64"), _Input("w", ["batch", 2], "float32")]
    read = {stream: read_splits(path, inputs=inputs, tasks={"clicked": "binary"}, index_inputs=["item id"],
                                streaming=StreamOptions(stream=stream, shuffle_buffer=300))
            for stream in ("never", "always")}
    streamed, memory = read["always"], read["never"]
    assert isinstance(streamed.train, StreamedSplit) and streamed.report.reading["streamed"]
    assert streamed.report.partition.to_dict() == memory.report.partition.to_dict()
    assert [i.fed for i in streamed.report.inputs] == [i.fed for i in memory.report.inputs]
    batches = _epoch(streamed.train, 128, seed=1)
    got = {k: np.concatenate([b[0][k] for b in batches]) for k in ("item id", "w")}
    assert got["item id"].dtype == np.int64 and got["w"].dtype == np.float32 and got["w"].shape[1:] == (2,)
    labels = np.concatenate([b[1]["clicked"] for b in batches])

    def rows(ids, w, y):
        table = np.column_stack([ids, w, y]).astype(np.float64)
        return table[np.lexsort(table.T[::-1])]

    np.testing.assert_array_equal(rows(got["item id"], got["w"], labels),
                                  rows(memory.train.inputs["item id"], memory.train.inputs["w"],
                                       memory.train.labels["clicked"]))
    assert isinstance(streamed.val, StreamedSplit) and "carved val and test: streamed" in streamed.report.reading["eval"]
    np.testing.assert_array_equal(streamed.val.load().inputs["w"], memory.val.inputs["w"])
    # The baselines' layout of named inputs (ids 0..the largest seen), read batch by batch.
    from fusekit.models.baselines.inputs import InputLayout

    layout = InputLayout.from_split(streamed.train)
    assert layout == InputLayout.from_split(memory.train) and layout.cardinalities["item id"][0] > 40


def test_predict_writes_a_parquet_folder_batch_by_batch(pool, folder, tmp_path, monkeypatch):
    import fusekit.data.batches as batches
    from fusekit.deploy.evaluate import predict_onnx

    model = pool["models"]["income_a"]
    whole = predict_onnx(model, pool["csv"], tmp_path / "whole.csv")
    monkeypatch.setattr(batches, "READ_ROWS", 512)  # many record batches from the small folder
    streamed = predict_onnx(model, folder, tmp_path / "streamed.parquet")
    csv_out = predict_onnx(model, pool["csv"], tmp_path / "streamed.csv")
    assert whole.rows == streamed.rows == csv_out.rows == len(_frame(pool))
    assert pq.ParquetFile(tmp_path / "streamed.parquet").metadata.num_row_groups > 1
    expected = pd.read_csv(tmp_path / "whole.csv")
    np.testing.assert_allclose(pd.read_parquet(tmp_path / "streamed.parquet")["income"], expected["income"],
                               rtol=1e-6)
    assert (tmp_path / "streamed.csv").read_text() == (tmp_path / "whole.csv").read_text()
    assert streamed.encoding.to_dict() == whole.encoding.to_dict()


def test_eval_scores_a_streamed_training_split_as_the_in_memory_one(pool, folder):
    from fusekit.deploy.evaluate import evaluate_onnx

    model = pool["models"]["income_a"]
    scores = {stream: evaluate_onnx(model, load_dataset(folder if stream == "always" else pool["csv"], ["income"],
                                                        spec=pool["ds"].spec,
                                                        streaming=StreamOptions(stream=stream)),
                                    split="train").scores["income"]
              for stream in ("always", "never")}
    assert scores["always"] == pytest.approx(scores["never"], abs=1e-12)


def test_train_single_streams_a_parquet_file_and_fits_the_in_memory_specification(pool, tmp_path, capsys):
    import json

    import onnx

    from fusekit.cli.main import main

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(pool), preserve_index=False), rows, row_group_size=500)
    results, specs = {}, {}
    for stream in ("never", "always"):
        out = tmp_path / f"{stream}.onnx"
        code = main(["train-single", "--data", str(rows), "--task", "income", "--exclude", "never_married",
                     "--hidden", "16", "--epochs", "3", "--batch-size", "256", "--lr", "1e-2", "--stream", stream,
                     "--shuffle-buffer", "1000", "--threads", "1", "-q", "--json", "-o", str(out)])
        printed, err = capsys.readouterr()
        assert code == 0, err
        results[stream] = json.loads(printed)
        specs[stream] = {p.key: p.value for p in onnx.load(str(out)).metadata_props}["fusekit.feature_spec"]
    assert results["always"]["reading"]["streamed"] and not results["never"]["reading"]["streamed"]
    assert specs["always"] == specs["never"]  # the same encoding, so the two models could share a pool
    assert results["always"]["train_rows"] == results["never"]["train_rows"]
    # Other batches (the streamed shuffle buffer against a permutation in memory): close, not equal
    # (measured: test AUC 0.8781 in memory, 0.8810 streamed).
    assert results["always"]["test_score"] > 0.8 and results["never"]["test_score"] > 0.8
    assert abs(results["always"]["test_score"] - results["never"]["test_score"]) < 0.03
    with pytest.raises(SystemExit) as refused:
        main(["train-single", "--data", str(rows), "--task", "income", "--stream", "sometimes", "-o",
              str(tmp_path / "x.onnx")])
    assert refused.value.code == 2 and "sometimes" in capsys.readouterr().err


def test_bench_trains_its_baselines_on_a_streamed_parquet_file_and_says_so(pool, tmp_path, capsys):
    import json

    from fusekit.cli.main import main

    rows = tmp_path / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(_frame(pool), preserve_index=False), rows, row_group_size=500)
    scores = {}
    for stream in ("always", "never"):
        out = tmp_path / stream
        code = main(["bench", str(rows), "--tasks", "income,never_married", "--methods", "mmoe", "--quick",
                     "--stream", stream, "--shuffle-buffer", "1000", "--threads", "1", "-q", "-o", str(out)])
        assert code == 0, capsys.readouterr().err
        results = json.loads((out / "results.json").read_text())
        data = results["sets"][0]["data"]
        assert data["reading"]["streamed"] == (stream == "always"), data["reading"]
        assert json.loads((out / "protocol.json").read_text())["data"]["streaming"]["stream"] == stream
        scores[stream] = [c["scores"] for c in results["sets"][0]["cells"]]
    # the same rows and specification, other batches (a shuffle buffer against a permutation)
    assert scores["always"] and all(0.5 < s <= 1 for cell in scores["always"] for s in cell.values())


def test_streamed_validation_and_test_rows_score_as_the_rows_in_memory(pool, folder):
    """Carved from a streamed file and kept streamed (stream=always): fit's validation scores, evaluate
    and predict give the in-memory numbers (the same rows in the same order, read batch by batch)."""
    from fusekit.models.architecture import Architecture
    from fusekit.models.single import build_model
    from fusekit.train import TrainConfig, evaluate, fit, predict

    spec = pool["ds"].spec
    memory = _load(pool["csv"], spec, "never")
    streamed = load_dataset(folder, list(TASKS), labels=LABELS, spec=spec,
                            streaming=StreamOptions(stream="always", shuffle_buffer=700))
    assert isinstance(streamed.val, StreamedSplit) and isinstance(streamed.test, StreamedSplit)
    assert "streamed" in streamed.reading["eval"]
    config = TrainConfig(max_epochs=2, batch_size=256, eval_batch_size=300, progress=False, device="cpu", threads=1)
    history = {}
    for name, val in (("memory", memory.val), ("streamed", streamed.val)):
        model = build_model(spec, "income", Architecture(hidden=[16]), seed=0)
        history[name] = fit(model, memory.train, val, ["income"], config).history
        outputs = predict(model, streamed.test if name == "streamed" else memory.test, ["income"], batch_size=300)
        history[name + " test"] = (evaluate(model, val, ["income"], batch_size=300), outputs["income"])
    for a, b in zip(history["memory"], history["streamed"]):
        assert abs(a.val_score["income"] - b.val_score["income"]) <= 1e-6
    assert history["memory"][0].val_score != history["memory"][1].val_score  # the scores moved: a real comparison
    np.testing.assert_allclose(history["streamed test"][1], history["memory test"][1], atol=1e-6)
    assert history["streamed test"][0]["income"] == pytest.approx(history["memory test"][0]["income"], abs=1e-6)
