"""``fusekit fuse --config run.toml``: every fuse option from a file, flags overriding it."""
from __future__ import annotations

from pathlib import Path

import pytest

from fusekit.cli.fuse import options_from_args, parse_tasks
from fusekit.cli.main import main, parse

RUN = """
parts = "parts"
data = "clicks.csv"
output = "out"
epochs = 3
batch_size = 512
no-mtm = true
mode = "paper"
fuse-at = "all"
split-seed = 7
max-rows = 1000

[tasks]
income = ["income_a", "income_b"]
never_married = "married_a,married_b"

[label]
income = "y1"
never_married = "y2"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "run.toml"
    path.write_text(text)
    return path


def test_every_setting_comes_from_the_file_and_flags_override_it(tmp_path):
    config = _write(tmp_path, RUN)
    argv = ["fuse", "--config", str(config), "--epochs", "9", "--mode", "residual"]
    args = parse(argv)
    options = options_from_args(args)
    assert (args.parts, args.data, args.output) == (Path("parts"), "clicks.csv", Path("out"))
    assert parse_tasks(args.tasks) == {"income": ["income_a", "income_b"], "never_married": ["married_a", "married_b"]}
    assert options.labels == {"income": "y1", "never_married": "y2"}
    assert options.training.max_epochs == 9 and options.fusion.mode == "residual"  # the command line wins
    assert options.training.batch_size == 512 and options.fusion.use_mtm is False and options.fusion.fuse_at == "all"
    assert options.split_seed == 7 and options.max_rows == 1000
    assert options.command == ["fusekit", *argv]
    # what the file does not set keeps the option classes' defaults
    assert options.training.lr == 1e-3 and options.fusion.top_k == 1


def test_unknown_key_is_refused_in_one_line_naming_it_and_the_valid_ones(tmp_path, capsys):
    config = _write(tmp_path, "epoch = 3\n" + RUN)
    assert main(["fuse", "--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"fusekit: error: unknown key 'epoch' in {config}; valid keys: ")
    valid = err[0].split("valid keys: ")[1].split(", ")
    assert {"epochs", "batch-size", "no-mtm", "tasks", "parts", "split-seed"} <= set(valid)
    assert "config" not in valid and "help" not in valid


@pytest.mark.parametrize("line, message", [
    ("epochs = \"ten\"", "epochs must be a whole number"),
    ("no-mtm = \"yes\"", "no-mtm must be true or false"),
    ("mode = \"serial\"", "mode must be one of paper, residual"),
    ("lr = -1.0", "--lr must be at least 0.0"),
    ("top-k = 0", "--top-k must be at least 1"),
    ("epochs = [", "not valid TOML"),
])
def test_bad_values_in_the_file_are_one_line_errors(tmp_path, capsys, line, message):
    others = RUN
    for key in ("epochs = 3\n", 'mode = "paper"\n', "no-mtm = true\n"):
        others = others.replace(key, "")
    config = _write(tmp_path, line + "\n" + others)
    assert main(["fuse", "--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("fusekit: error: ") and message in err[0], err


def test_what_neither_gives_is_asked_for(tmp_path, capsys):
    config = _write(tmp_path, 'data = "clicks.csv"\n')
    assert main(["fuse", "--config", str(config)]) == 2
    assert capsys.readouterr().err == "fusekit: error: fuse needs PARTS, --tasks, -o, on the command line or in --config\n"
    assert main(["fuse", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "does not exist" in capsys.readouterr().err
