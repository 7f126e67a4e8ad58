"""``fusekit fuse`` started by torchrun: two gloo processes on this machine, on the small real pool.

Two processes at the same global batch and seed draw the same permutation, take rank-strided
halves of each batch and average their gradients (weighted by their share of the batch), which
is the gradient one process computes on the whole batch; only the order of the float sums
differs. Measured here (2-core machine, --threads 1): the validation AUCs and training losses of
the two runs agreed to the last printed digit (differences below 1e-6); the test allows 1e-4.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from fusekit.errors import FusekitError
from tests.conftest import REPO
from tests.fusion_pool import LABELS, TASKS

torch_distributed = pytest.importorskip("torch.distributed")
pytestmark = pytest.mark.skipif(not torch_distributed.is_available(), reason="torch was built without distributed")

TOLERANCE = 1e-4  # measured differences were below 1e-6 (module docstring)
TASK_ARGS = [f"{t}={','.join(ms)}" for t, ms in TASKS.items()]
LABEL_ARGS = sum((["--label", f"{t}={c}"] for t, c in LABELS.items()), [])


def fuse_argv(pool, out, *extra, data=None) -> list[str]:
    return ["fuse", str(pool["parts"]), "--tasks", *TASK_ARGS, "--data", str(data or pool["csv"]), *LABEL_ARGS,
            "-o", str(out), "--epochs", "3", "--patience", "5", "--batch-size", "256", "--device", "cpu",
            "--threads", "1", "--quiet", *extra]


def torchrun(argv: list[str], processes: int = 2) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node N -m fusekit ARGV`` with this checkout's fusekit."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
               "-m", "fusekit", *argv]
    # Generous: on a loaded machine two processes plus the ONNX export took over 300 s.
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def history(out) -> list[dict]:
    return json.loads((out / "metrics.json").read_text())["history"]


def in_process(argv: list[str]):
    """``fusekit ARGV`` (a fuse command) in this process: (parsed arguments, FuseOptions)."""
    from fusekit.cli.fuse import options_from_args
    from fusekit.cli.main import parse

    args = parse(argv)
    return args, options_from_args(args)


def interrupted_run(pool, out, epochs: int) -> list:
    """One in-process fuse run stopped (as by Ctrl-C) after ``epochs`` epochs: their records; the
    work directory beside ``out`` keeps the checkpoint of the last one."""
    from fusekit.fusion.fuse import fuse

    args, options = in_process(fuse_argv(pool, out))
    seen = []

    def record(epoch):
        seen.append(epoch)
        if len(seen) == epochs:
            raise KeyboardInterrupt

    options.on_epoch = record
    with pytest.raises(FusekitError, match="resume"):
        fuse(args.parts, dict(TASKS), args.data, out, options)
    return seen


def test_two_processes_resume_a_run_and_match_one_process(pool, tmp_path):
    """One process trains epochs 1-3. Another run is interrupted after epoch 1 (its checkpoint kept),
    then resumed by two processes for epochs 2-3: their validation scores and losses match."""
    from fusekit.fusion.fuse import work_dir_for

    single = interrupted_run(pool, tmp_path / "one", 3)
    two = tmp_path / "two"
    interrupted_run(pool, two, 1)
    assert (work_dir_for(two) / "checkpoint.pt").is_file() and not two.exists()

    done = torchrun(fuse_argv(pool, two, "--resume"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints (and writes)
    metrics = json.loads((two / "metrics.json").read_text())
    assert metrics["processes"] == 2
    assert not work_dir_for(two).exists()
    ddp = metrics["history"]
    assert [r["epoch"] for r in ddp] == [1, 2, 3]
    assert ddp[0]["val_score"] == single[0].val_score  # epoch 1 came from the checkpoint
    for a, b in zip(single[1:], ddp[1:]):
        assert abs(a.train_loss - b["train_loss"]) <= TOLERANCE * abs(a.train_loss)
        for task in TASKS:
            assert abs(a.val_score[task] - b["val_score"][task]) <= TOLERANCE
        assert b["train_loss"] != ddp[0]["train_loss"]  # epochs 2-3 were trained, not copied
    print("largest differences:", max(abs(a.train_loss - b["train_loss"]) for a, b in zip(single[1:], ddp[1:])),
          max(abs(a.val_score[t] - b["val_score"][t]) for a, b in zip(single[1:], ddp[1:]) for t in TASKS))


# Each rank shuffles its own shard (and one row of an odd split is left out), so the two runs see
# the same rows in other batches: not the same numbers, only close. Measured here (2 epochs, batch
# 256): validation scores within 2.5e-5 and epoch losses within 3e-4 of each other (relative); the
# test allows 1e-3 and 1 %.
STREAMED_TOLERANCE = 1e-3


def test_two_processes_train_on_their_shards_of_a_streamed_parquet_file(pool, tmp_path):
    """fuse --stream always on a Parquet file: two processes (each reads its half of the rows) finish,
    rank 0 alone writes, and the validation scores are close to one process's streamed run."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from fusekit.fusion.fuse import fuse

    rows = tmp_path / "rows.parquet"
    frame = pd.read_csv(pool["csv"], dtype=str, keep_default_na=False)
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), rows, row_group_size=500)
    extra = ("--stream", "always", "--shuffle-buffer", "1000", "--epochs", "2")
    args, options = in_process(fuse_argv(pool, tmp_path / "one", *extra, data=rows))
    one = fuse(args.parts, dict(TASKS), args.data, tmp_path / "one", options).metrics
    done = torchrun(fuse_argv(pool, tmp_path / "two", *extra, data=rows))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints (and writes)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two["processes"] == 2 and one["processes"] == 1
    assert two["data"]["reading"]["streamed"] and one["data"]["reading"]["streamed"]
    assert len(two["history"]) == len(one["history"]) == 2
    differences = [abs(a["val_score"][t] - b["val_score"][t]) for a, b in zip(one["history"], two["history"])
                   for t in TASKS]
    losses = [abs(a["train_loss"] - b["train_loss"]) / a["train_loss"] for a, b in zip(one["history"], two["history"])]
    print("streamed, 1 vs 2 processes: largest validation difference", max(differences), "relative loss", max(losses))
    assert max(differences) <= STREAMED_TOLERANCE
    assert max(losses) <= 0.01  # a rank weighing its loss wrongly (or training on both shards) would be far off
    assert two["history"][0]["train_loss"] != two["history"][1]["train_loss"]


def test_a_bad_input_ends_both_processes_with_one_line_and_no_output(pool, tmp_path):
    out = tmp_path / "out"
    argv = fuse_argv(pool, out)
    argv[argv.index("income=income")] = "income=no_such_column"
    done = torchrun(argv)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if line.startswith("fusekit:")]
    assert len(lines) == 1 and "no label column 'no_such_column'" in lines[0], done.stderr[-2000:]
    assert str(REPO / "fusekit") not in done.stderr  # no traceback through fusekit (torchrun prints its own summary)
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no output, work directory or lock left


def test_a_global_batch_that_does_not_divide_among_the_processes_is_refused():
    from fusekit.train import check_global_batch

    check_global_batch(256, 2)
    check_global_batch(255, 1)
    with pytest.raises(FusekitError, match=r"TrainConfig.batch_size=255 is the global batch of the 2 processes"):
        check_global_batch(255, 2)


def test_the_ranks_shards_cover_each_batch_once_and_weigh_as_one_process():
    import torch

    from fusekit.distributed import Launch
    from fusekit.train import batch_starts, shard

    batch = torch.arange(7)
    parts = [shard(batch, Launch(rank, 2, rank, 2)) for rank in range(2)]
    assert sorted(torch.cat([rows for rows, _ in parts]).tolist()) == list(range(7))
    # DDP averages the ranks' gradients: weighting each rank's mean by n_r * world / N makes that
    # average the mean over all 7 rows, as one process computes it (here: of the row values).
    losses = batch.double() ** 2
    assert sum(weight * losses[rows].mean() for rows, weight in parts) / 2 == pytest.approx(losses.mean().item())
    assert [w for _, w in parts] == [pytest.approx(4 * 2 / 7), pytest.approx(3 * 2 / 7)]
    assert shard(batch, Launch()) == (batch, 1.0)
    assert list(batch_starts(10, 4, 2)) == [0, 4, 8]
    assert list(batch_starts(9, 4, 2)) == [0, 4]  # a last batch of one row cannot give both ranks a row
    assert list(batch_starts(9, 4, 1)) == [0, 4, 8]


def test_train_single_on_two_processes_matches_one_process(pool, tmp_path, capsys):
    """train-single under torchrun: the same global batch on two processes gives one process's
    validation and test scores (data in memory: the same gradient), and rank 0 alone writes."""
    from fusekit.cli.main import main

    def argv(out):
        return ["train-single", "--data", str(pool["csv"]), "--task", "income", "--exclude", "never_married",
                "--hidden", "16", "--epochs", "3", "--patience", "5", "--batch-size", "256", "--device", "cpu",
                "--threads", "1", "--quiet", "--json", "-o", str(out)]

    assert main(argv(tmp_path / "one.onnx")) == 0
    one = json.loads(capsys.readouterr().out)
    done = torchrun(argv(tmp_path / "two.onnx"))
    assert done.returncode == 0, done.stderr[-2000:]
    two = json.loads(done.stdout)  # one JSON document: rank 0 alone prints
    assert (tmp_path / "two.onnx").is_file() and not list(tmp_path.glob("two.onnx.*"))
    assert one["epochs"] == two["epochs"] == 3
    assert abs(one["val_score"] - two["val_score"]) <= TOLERANCE
    assert abs(one["test_score"] - two["test_score"]) <= TOLERANCE
    assert one["train_rows"] == two["train_rows"]


def test_bench_baselines_on_two_processes_score_as_one_process(tmp_path, capsys):
    """bench under torchrun: the baselines and the fused model train data-parallel on the digits
    (held in memory: the same gradient), so every cell scores as in one process; rank 0 alone writes."""
    from fusekit.cli.main import main

    def argv(out):
        return ["bench", "digits", "--quick", "--seeds", "1", "--methods", "average,shared-bottom,emm",
                "--threads", "1", "-q", "-o", str(out)]

    def scores(out):
        cells = json.loads((out / "results.json").read_text())["sets"][0]["cells"]
        return {c["method"]: c["scores"] for c in cells}

    assert main(argv(tmp_path / "one")) == 0
    capsys.readouterr()
    done = torchrun(argv(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("wrote ") == 1  # rank 0 alone prints (and writes)
    one, two = scores(tmp_path / "one"), scores(tmp_path / "two")
    assert [json.loads((tmp_path / d / "results.json").read_text())["processes"] for d in ("one", "two")] == [1, 2]
    assert set(one) == set(two) == {"average", "shared-bottom", "emm"}
    for method in one:
        for task, value in one[method].items():
            assert abs(value - two[method][task]) <= TOLERANCE, (method, task, value, two[method][task])
