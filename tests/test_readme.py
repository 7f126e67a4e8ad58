"""The README's examples run, on a small budget, so that the documentation cannot rot.

Every ```python and ```bash block of README.md is run in order in one scratch folder (Python
blocks share one namespace; shell blocks run with this environment's ``fusekit`` first on PATH),
except blocks right after a ``<!-- readme: not run (reason) -->`` line. The budget is cut by
rewriting ``max_epochs=N`` and ``--epochs N`` to 1 epoch; nothing else is changed.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
_FENCE = re.compile(r"(?P<before>[^\n]*)\n```(?P<lang>python|bash)\n(?P<body>.*?)\n```", re.S)
_SKIP = "<!-- readme: not run"


def readme_blocks() -> list[tuple[str, str, bool]]:
    """(language, code, runs) for every python/bash block, in README order."""
    text = README.read_text()
    blocks = []
    for m in _FENCE.finditer(text):
        runs = not m.group("before").strip().startswith(_SKIP)
        blocks.append((m.group("lang"), m.group("body"), runs))
    return blocks


def small_budget(code: str) -> str:
    """The same example with one training epoch."""
    code = re.sub(r"max_epochs=\d+", "max_epochs=1", code)
    return re.sub(r"--epochs \d+", "--epochs 1", code)


def test_every_skipped_block_says_why():
    text = README.read_text()
    for line in text.splitlines():
        if line.startswith(_SKIP):
            assert re.match(r"<!-- readme: not run \(.+\) -->", line), line


def test_readme_has_runnable_python_and_shell_examples():
    langs = {lang for lang, _, runs in readme_blocks() if runs}
    assert langs == {"python", "bash"}


@pytest.mark.slow
def test_readme_examples_run(tmp_path, census_dir, monkeypatch):
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    if census_dir is not None:
        env["FUSEKIT_DATA_DIR"] = str(census_dir)
        monkeypatch.setenv("FUSEKIT_DATA_DIR", str(census_dir))
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__readme__"}
    for k, (lang, code, runs) in enumerate(readme_blocks()):
        if not runs:
            continue
        code = small_budget(code)
        if lang == "python":
            exec(compile(code, f"README.md python block {k}", "exec"), namespace)  # noqa: S102 - our own README
        else:
            done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=tmp_path, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"README bash block {k} failed:\n{code}\n{done.stderr[-3000:]}"
