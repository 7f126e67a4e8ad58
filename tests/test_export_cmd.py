"""``fusekit export`` and predict's unseen report through the command line."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest

from fusekit.cli.main import main
from fusekit.deploy.raw_inputs import raw_feeds, raw_inputs_of
from fusekit.sample_models import sample_pool

SOURCE = sample_pool("census2").paths[0]


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture()
def rows(census_dir, tmp_path):
    from fusekit.data.census import read_census

    path = tmp_path / "rows.csv"
    read_census(census_dir)[1].head(40).to_csv(path, index=False)
    return path


def test_export_raw_inputs_writes_a_checked_file(rows, tmp_path, capsys):
    out = tmp_path / "served.onnx"
    assert main(["export", str(SOURCE), "--raw-inputs", "-o", str(out), "--check-data", str(rows)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith(f"wrote {out} (39 raw-column inputs;")
    assert "checked on 40" in captured.err and "max difference from FeatureSpec.encode + the model 0.0e+00" in captured.err
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    inputs = raw_inputs_of(sess.get_modelmeta().custom_metadata_map)
    frame = pd.read_csv(rows, dtype=str, keep_default_na=False)
    assert sess.run(None, raw_feeds(frame, inputs))[0].shape == (40,)
    # --json: one document; --force replaces the file, quantised this time.
    assert main(["export", str(SOURCE), "--raw-inputs", "--quantize", "dynamic", "-o", str(out), "--force",
                 "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["quantized"] == "dynamic" and doc["check_source"] == "synthesised" and doc["max_diff"] == 0.0
    assert "MatMulInteger" in {n.op_type for n in onnx.load(str(out)).graph.node}


@pytest.mark.parametrize("argv, message", [
    (["--raw-inputs", "-o", "{out}"], None),  # the output exists already
    (["-o", "{new}"], "nothing to export: ask for --raw-inputs and/or --quantize dynamic"),
    (["--raw-inputs", "-o", "{new}", "--check-data", "{missing}"], "does not exist"),
    (["--raw-inputs", "-o", "{new}", "--check-data", "{bad}"], "lacks column(s)"),
    (["--raw-inputs", "-o", "{model}", "--force"], "is the model itself"),
])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(argv, message, tmp_path, capsys):
    model = tmp_path / "m.onnx"
    model.write_bytes(SOURCE.read_bytes())
    out = tmp_path / "served.onnx"
    out.write_bytes(b"keep me")
    bad = tmp_path / "bad.csv"
    bad.write_text("age,sex\n3,Male\n")
    paths = {"out": out, "new": tmp_path / "new.onnx", "missing": tmp_path / "none.csv", "bad": bad, "model": model}
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert main(["export", str(model), *[a.format(**paths) for a in argv]]) == 2
    line = _error(capsys)
    assert line.startswith("fusekit: error: ")
    assert (message or f"{out} exists; choose another -o or pass --force") in line
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_a_model_that_is_not_onnx_is_refused(tmp_path, capsys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    assert main(["export", str(junk), "--raw-inputs", "-o", str(tmp_path / "x.onnx")]) == 2
    assert "is not a readable ONNX model" in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.onnx"]


def test_predict_reports_unseen_and_normalised_values_per_column(rows, tmp_path, capsys):
    frame = pd.read_csv(rows, dtype=str, keep_default_na=False)
    frame["det_ind_code"] = frame["det_ind_code"] + ".0"
    frame.loc[:4, "race"] = "Martian"
    mangled = tmp_path / "mangled.csv"
    frame.to_csv(mangled, index=False)
    assert main(["predict", str(SOURCE), str(rows), "-o", str(tmp_path / "clean.csv")]) == 0
    assert "unseen" not in capsys.readouterr().err
    assert main(["predict", str(SOURCE), str(mangled), "-o", str(tmp_path / "p.csv"), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["encoding"] == {"rows": 40, "unseen": {"race": 5},
                                                     "normalised": {"det_ind_code": 40}}
    assert "column 'race': 5 of 40 rows unseen (id 0)" in captured.err
    assert "column 'det_ind_code': 40 found after normalising spaces or numbers" in captured.err
    clean, got = pd.read_csv(tmp_path / "clean.csv"), pd.read_csv(tmp_path / "p.csv")
    np.testing.assert_allclose(got["income"][5:], clean["income"][5:], atol=1e-7)  # 33.0 is 33
