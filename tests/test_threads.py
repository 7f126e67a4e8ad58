"""fusekit.threads: the default count (affinity, distributed runs, OMP_NUM_THREADS), applying it to
torch and onnxruntime, and --threads on the command line."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusekit import threads
from fusekit.cli.main import main
from fusekit.errors import FusekitError
from fusekit.onnxio.sessions import session
from tests import onnx_fixtures as F

REPO = Path(__file__).resolve().parents[1]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE")}
    env["PYTHONPATH"] = str(REPO)
    return {**env, **extra}


def _python(code: str, **env: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], env=_clean_env(**env), capture_output=True, text=True,
                          cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
def fresh(monkeypatch):
    """No count applied yet in this process, no thread variables set; restored afterwards."""
    monkeypatch.setattr(threads, "_applied", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    return monkeypatch


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_default_follows_the_cpu_affinity():
    cpu = min(os.sched_getaffinity(0))
    code = ("import os; from fusekit import threads; "
            f"os.sched_setaffinity(0, {{{cpu}}}); print(threads.available_cores(), threads.default_threads())")
    assert _python(code) == "1 1"
    assert _python("from fusekit import threads; print(threads.default_threads())") == str(len(os.sched_getaffinity(0)))


def test_processes_of_a_distributed_run_share_the_cores(fresh):
    cores = threads.available_cores()
    assert threads.default_threads() == cores
    fresh.setenv("LOCAL_WORLD_SIZE", "2")
    assert threads.local_processes() == 2 and threads.default_threads() == max(1, cores // 2)
    fresh.setenv("LOCAL_WORLD_SIZE", str(cores * 4))
    assert threads.default_threads() == 1  # never zero
    fresh.setenv("LOCAL_WORLD_SIZE", "two")
    with pytest.raises(FusekitError, match="LOCAL_WORLD_SIZE"):
        threads.default_threads()


def test_omp_num_threads_is_an_explicit_choice(fresh):
    fresh.setenv("LOCAL_WORLD_SIZE", "2")
    fresh.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    fresh.setenv("OMP_NUM_THREADS", "4,2")  # OpenMP's nested form: the outer level counts
    assert threads.default_threads() == 4
    fresh.setenv("OMP_NUM_THREADS", "0")
    with pytest.raises(FusekitError, match="OMP_NUM_THREADS"):
        threads.default_threads()


def test_applied_count_is_what_later_calls_and_sessions_use(fresh, tmp_path):
    model = F.export(F.dense_mlp(), (torch.randn(2, 8),), tmp_path / "m.onnx", False, ["x"], ["y"])
    assert threads.apply_threads(3, torch=False) == 3
    assert threads.thread_count() == threads.current_threads() == 3
    assert threads.apply_threads(None, torch=False) == 3  # None keeps what this process chose
    options = session(model, "cpu")[0].get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (3, 1)
    assert session(model, "cpu", threads=2)[0].get_session_options().intra_op_num_threads == 2
    for bad in (0, -1, 1.5, True):
        with pytest.raises(FusekitError, match="threads must be a whole number of at least 1"):
            threads.thread_count(bad)


def test_run_record_names_the_thread_count(fresh, tmp_path):
    from fusekit.provenance import run_record

    csv = tmp_path / "d.csv"
    csv.write_text("a,y\n1,0\n")
    threads.apply_threads(5, torch=False)
    assert run_record(["fusekit"], csv, cwd=tmp_path)["threads"] == 5


@pytest.mark.parametrize("argv", [
    ["decompose", "a.onnx", "b.onnx", "-o", "out"],
    ["fuse", "parts", "--tasks", "t=a,b", "--data", "d.csv", "-o", "out"],
    ["train-single", "--data", "d.csv", "--task", "t", "-o", "out.onnx"],
    ["eval", "m.onnx", "--data", "d.csv"],
    ["predict", "m.onnx", "d.csv", "-o", "out.csv"],
    ["bench", "d.csv", "-o", "out"],
    ["demo", "-o", "out"],
])
def test_zero_threads_is_refused_in_one_line(argv, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*argv, "--threads", "0"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert err.startswith("fusekit: error: --threads must be") and "at least 1" in err
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_cli_threads_reach_torch_before_any_work(tmp_path):
    # Each run stops at its data file, which is missing: the count was applied before that work.
    code = ("import json, torch; from fusekit.cli.main import main; from fusekit import threads; seen = []\n"
            "for n in ('3', '1'):\n"
            f"    code = main(['train-single', '--data', {str(tmp_path / 'absent.csv')!r}, '--task', 'y', "
            f"'--threads', n, '-o', {str(tmp_path / 'm.onnx')!r}])\n"
            "    seen.append([code, torch.get_num_threads(), threads.current_threads()])\n"
            "print(json.dumps(seen))")
    assert json.loads(_python(code)) == [[2, 3, 3], [2, 1, 1]]
    assert not (tmp_path / "m.onnx").exists()
