"""The hostile cases that need real processes: two runs on one output, Ctrl-C twice, and a reader
of stdout that goes away (``fusekit inspect X | head``). Part of the catalogue in
tests/test_bad_input.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from fusekit.locks import lock_path

REPO = Path(__file__).resolve().parents[1]


def fusekit(*argv, **kwargs) -> subprocess.Popen:
    """``python -m fusekit ARGV`` as a real process (this checkout's fusekit, one thread)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-m", "fusekit", *map(str, argv)], env=env, text=True, **streams)


def long_fuse(pool, out, *extra, quiet=True, epochs=200):
    """A fuse that trains for a while (small batches, many epochs) so that another process meets it running."""
    from tests.test_bad_input import LABEL_ARGS, TASK_ARGS

    return ["fuse", pool["parts"], "--tasks", *TASK_ARGS, "--data", pool["csv"], *LABEL_ARGS, "-o", out,
            "--epochs", str(epochs), "--patience", "200", "--batch-size", "32", "--device", "cpu",
            *(["--quiet"] if quiet else []), *extra]


def test_two_force_runs_started_together_one_runs_the_other_is_refused(pool, tmp_path):
    out = tmp_path / "fused"
    argv = long_fuse(pool, out, "--force")
    first, second = fusekit(*argv), fusekit(*argv)
    procs = {first.pid: first, second.pid: second}
    # The refused one ends at once; the running one is then stopped (its run is not what is tested).
    refused = None
    while refused is None:
        for proc in procs.values():
            if proc.poll() is not None:
                refused = proc
        time.sleep(0.1)
    running = next(p for p in procs.values() if p is not refused)
    err = refused.stderr.read()
    assert refused.returncode == 2, err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("fusekit: error:")]
    assert len(lines) == 1 and re.search(rf"fused is in use by fusekit run pid {running.pid} on \S+ "
                                         r"\(fusekit fuse .*--force.*\), running since ", lines[0]), err
    assert running.poll() is None  # still training, undisturbed
    running.send_signal(signal.SIGINT)
    running_err = running.communicate(timeout=120)[1]
    assert running.returncode == 130 and "Traceback" not in running_err, running_err
    assert not out.exists() and not lock_path(out).exists()


def test_ctrl_c_twice_stops_cleanly_and_keeps_the_last_epoch(pool, tmp_path):
    out = tmp_path / "fused"
    proc = fusekit(*long_fuse(pool, out, quiet=False))
    lines = []
    while not any(ln.startswith("epoch 2") for ln in lines):
        line = proc.stderr.readline()
        assert line, "".join(lines)
        lines.append(line)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)  # a second Ctrl-C while the first is being handled
    err = "".join(lines) + proc.communicate(timeout=120)[1]
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert re.search(r"fusekit: training interrupted in epoch \d+; rerun with --resume", err) or \
        "fusekit: interrupted" in err, err
    work = out.parent / f".{out.name}.fusekit-run"
    assert (work / "run.json").is_file() and not lock_path(out).exists()
    # The last finished epoch is kept, whole (tests/test_fuse.py resumes from such a checkpoint).
    import torch

    state = torch.load(work / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["epoch"] >= 2 and len(state["history"]) == state["epoch"]


def test_inspect_into_a_closed_pipe_stops_quietly(pool):
    # stdout is a pipe whose reader has already gone, as when `| head` has read all it wanted.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        proc = fusekit("inspect", "--verbose", pool["models"]["income_a"], stdout=write_end)
    finally:
        os.close(write_end)
    _, err = proc.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode == 128 + signal.SIGPIPE and err == "", err


def test_a_ctrl_c_caught_after_it_crossed_exec_of_a_string_still_exits_130(tmp_path):
    # Dataclasses exec strings while torch imports, so a Ctrl-C early in a run crosses one; under
    # ``python -m`` CPython would then end the process by SIGINT (-2) instead of fusekit's 130.
    (tmp_path / "interrupted_run.py").write_text(
        "import sys\nimport fusekit.cli.main as m\n"
        "m._run = lambda *a: exec('raise KeyboardInterrupt')\n"
        "sys.exit(m.main(['inspect', 'x']))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "interrupted_run"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "fusekit: interrupted"
