"""The installed entry points work from any directory, not only from the repository."""
import subprocess
import sys
from pathlib import Path

from fusekit import __version__


def test_console_script_and_module_run_outside_the_repository(tmp_path):
    script = Path(sys.executable).with_name("fusekit")
    for cmd in ([str(script), "--version"], [sys.executable, "-m", "fusekit", "--version"]):
        done = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"fusekit {__version__}"


def test_user_error_is_one_line_exit_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fusekit", "decompose", "only_one.onnx", "-o", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("fusekit: error: ")
    assert "Traceback" not in done.stderr and not (tmp_path / "out").exists()


def test_no_command_prints_help_and_exits_2(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fusekit"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "decompose" in done.stdout and "fuse" in done.stdout
