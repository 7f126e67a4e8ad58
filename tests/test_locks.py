"""fusekit.locks: one run per output, checked with real processes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fusekit.errors import FusekitError
from fusekit.locks import OutputBusy, lock_path, output_lock

REPO = Path(__file__).resolve().parents[1]
HOLD = """
import signal, sys, time
# A job started in the background by a shell inherits an ignored SIGINT; a user's Ctrl-C is not ignored.
signal.signal(signal.SIGINT, signal.default_int_handler)
from fusekit.locks import output_lock
with output_lock(sys.argv[1], ["fusekit", "fuse", "--test-holder"]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def holder(output: Path, seconds: float = 60.0) -> subprocess.Popen:
    """A real process holding ``output``'s lock (it says so on stdout once it holds it)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(output), str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "held", proc.stderr.read()
    return proc


def test_a_second_holder_is_refused_with_the_first_ones_pid_command_and_start(tmp_path):
    out = tmp_path / "out"
    proc = holder(out)
    try:
        with pytest.raises(OutputBusy) as caught:
            with output_lock(out):
                pass
        message = str(caught.value)
        assert f"pid {proc.pid} on " in message and "fusekit fuse --test-holder" in message
        assert "running since 20" in message and "wait for it to finish or choose another output" in message
        assert isinstance(caught.value, FusekitError) and "\n" not in message
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path):
    out = tmp_path / "out"
    proc = holder(out)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = lock_path(out)
    assert json.loads(stale.read_text())["pid"] == proc.pid  # left behind by the killed run
    with output_lock(out) as path:
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert not stale.exists()  # released and removed


def test_the_lock_is_released_on_error_and_is_reentrant_within_a_process(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with output_lock(out):
            with output_lock(out):  # a library call of the same run
                assert lock_path(out).exists()
            raise RuntimeError("boom")
    assert not lock_path(out).exists()
    proc = holder(out, 0.1)  # another process gets it at once
    proc.wait()
    assert proc.returncode == 0


def test_the_lock_is_released_on_ctrl_c(tmp_path):
    out = tmp_path / "out"
    proc = holder(out, 60)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    assert not lock_path(out).exists()
    with output_lock(out):
        pass


def test_waiting_holders_never_run_together(tmp_path):
    # Eight processes race for one output, each holding it briefly and recording when: the
    # intervals never overlap (the lock file is removed on release and re-checked on acquire).
    out = tmp_path / "out"
    log = tmp_path / "log"
    code = f"""
import time, os
from fusekit.locks import output_lock, OutputBusy
done = False
while not done:
    try:
        with output_lock({str(out)!r}):
            start = time.monotonic(); time.sleep(0.05)
            with open({str(log)!r}, "a") as f:
                f.write(f"{{start}} {{time.monotonic()}}\\n")
            done = True
    except OutputBusy:
        time.sleep(0.01)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env) for _ in range(8)]
    for p in procs:
        assert p.wait(timeout=120) == 0
    spans = sorted(tuple(map(float, line.split())) for line in log.read_text().splitlines())
    assert len(spans) == 8
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
