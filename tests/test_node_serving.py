"""examples/node/serve.js with onnxruntime-node gives the predictions Python's onnxruntime gives.

Runs where ``node`` and ``npm`` are installed and npm's registry is reachable; otherwise it is
skipped and says why. onnxruntime-node is installed once into a folder under the system's
temporary directory and reused by later runs. Its install script only fetches the optional CUDA
binaries (from nuget.org), so it is skipped (``--ignore-scripts``): the CPU build is in the package.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from fusekit.deploy.raw_inputs import export_model, raw_feeds
from fusekit.sample_models import sample_pool

REPO = Path(__file__).resolve().parents[1]
SERVE = REPO / "examples" / "node" / "serve.js"
VERSION = json.loads((REPO / "examples" / "node" / "package.json").read_text())["dependencies"]["onnxruntime-node"]
CACHE = Path(tempfile.gettempdir()) / f"fusekit-onnxruntime-node-{VERSION}"
NPM_FLAGS = ["--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error", "--fetch-retries=1",
             "--fetch-timeout=60000"]


def _onnxruntime_node() -> Path:
    """node_modules holding onnxruntime-node, installed into the cache when missing (or skip)."""
    if not shutil.which("node") or not shutil.which("npm"):
        pytest.skip("node or npm is not installed")
    modules = CACHE / "node_modules"
    if (modules / "onnxruntime-node" / "package.json").is_file():
        return modules
    staging = Path(tempfile.mkdtemp(prefix=f".{CACHE.name}.tmp-", dir=CACHE.parent))
    try:
        try:
            proc = subprocess.run(["npm", "install", "--prefix", str(staging), *NPM_FLAGS, f"onnxruntime-node@{VERSION}"],
                                  capture_output=True, text=True, timeout=600)
        except subprocess.TimeoutExpired:
            pytest.skip(f"npm could not install onnxruntime-node@{VERSION} within 10 minutes")
        if proc.returncode != 0 or not (staging / "node_modules" / "onnxruntime-node").is_dir():
            first = ([ln for ln in proc.stderr.splitlines() if ln.strip() and "complete log" not in ln] or ["no output"])[0]
            pytest.skip(f"npm could not install onnxruntime-node@{VERSION} (registry unreachable?): {first}")
        try:
            os.replace(staging, CACHE)  # whole or not at all; a concurrent run may have won
        except OSError:
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return modules


def test_node_predictions_equal_python_onnxruntime(census_dir, tmp_path):
    from fusekit.data.census import read_census

    modules = _onnxruntime_node()
    served = tmp_path / "served.onnx"
    result = export_model(sample_pool("census2").paths[0], served)
    frame = read_census(census_dir)[1].head(300).copy()
    frame["det_ind_code"] = frame["det_ind_code"] + ".0"  # formatting and unseen values go through the graph too
    frame.loc[frame.index[:10], "education"] = "Martian"
    rows = [{i.name: (str(r[i.column]) if i.kind == "categorical" else float(r[i.column])) for i in result.raw_inputs}
            for r in frame.to_dict("records")]
    (tmp_path / "rows.json").write_text(json.dumps(rows))
    proc = subprocess.run(["node", str(SERVE), str(served), str(tmp_path / "rows.json")], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "NODE_PATH": str(modules)})
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    sess = ort.InferenceSession(str(served), providers=["CPUExecutionProvider"])
    expected = sess.run(None, raw_feeds(frame, result.raw_inputs))[0]
    assert list(got) == ["income"]
    np.testing.assert_allclose(np.array(got["income"]), expected, rtol=0, atol=1e-6)
