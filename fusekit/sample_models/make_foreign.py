"""A pool of models fusekit did not make, for the README's "bring your own models" walkthrough.

Plain torch models with one ONNX input per feature (the raw int64 code of two Census-Income
code columns, the raw float of three numeric ones; names with spaces), a Wide&Deep-style
wide term beside the MLP, and a logit output [batch, 1] with no fusekit metadata. Two per task
(income > 50K, never married), one exported by each torch exporter, trained on a seeded 80 % of
6,000 training rows. The data is written as CSV files whose columns are the model inputs and the
labels: train.csv (the rows the models saw), fusion.csv (the other 20 %), val.csv and test.csv.

    python -m fusekit.sample_models.make_foreign OUT_DIR [--data-dir FOLDER_WITH_CENSUS]
"""
from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from fusekit.data.census import read_census

CODES = {"industry code": ("det_ind_code", 52), "occupation code": ("det_occ_code", 47)}
NUMBERS = {"age": "age", "weeks worked": "weeks_worked", "capital gains": "capital_gains"}
INPUTS = list(CODES) + list(NUMBERS)
MODELS = {"income": {"inc_small": (16, 8), "inc_deep": (32, 16, 8)},
          "never_married": {"nm_small": (16, 8), "nm_deep": (32, 16, 8)}}


class WideDeep(nn.Module):
    """Embeddings of the codes and scaled numbers into an MLP, plus a wide linear term; a logit."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, 4) for _, n in CODES.values())
        self.wide = nn.ModuleList(nn.Embedding(n, 1) for _, n in CODES.values())
        layers, width = [], 4 * len(CODES) + len(NUMBERS)
        for out in widths:
            layers += [nn.Linear(width, out), nn.ReLU()]
            width = out
        self.mlp = nn.Sequential(*layers)
        self.out = nn.Linear(width, 1)

    def forward(self, industry, occupation, age, weeks, gains):
        codes = (industry, occupation)
        numbers = torch.stack([age / 100.0, weeks / 52.0, torch.log1p(gains) / 10.0], dim=1)
        deep = torch.cat([e(c) for e, c in zip(self.embeddings, codes)] + [numbers], dim=1)
        return self.out(self.mlp(deep)) + sum(w(c) for w, c in zip(self.wide, codes))


def frame_of(rows: pd.DataFrame) -> pd.DataFrame:
    """The columns the models read, named as their inputs, and the two 0/1 labels."""
    out = pd.DataFrame({name: rows[col].astype(np.int64).to_numpy() for name, (col, _) in CODES.items()})
    for name, col in NUMBERS.items():
        out[name] = rows[col].to_numpy(np.float32)
    out["income"] = (rows["income_50k"] == "50000+.").astype(int).to_numpy()
    out["never_married"] = (rows["marital_stat"] == "Never married").astype(int).to_numpy()
    return out


def train(model: nn.Module, frame: pd.DataFrame, task: str, steps: int = 150) -> nn.Module:
    inputs = [torch.as_tensor(frame[n].to_numpy()) for n in INPUTS]
    y = torch.as_tensor(frame[task].to_numpy(np.float32))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(model(*inputs).squeeze(1), y).backward()
        opt.step()
    return model.eval()


def export(model: nn.Module, path: Path, dynamo: bool) -> None:
    example = tuple(torch.zeros(2, dtype=torch.int64) for _ in CODES) + tuple(torch.ones(2) for _ in NUMBERS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, example, str(path), input_names=INPUTS, output_names=["logit"], dynamo=True,
                              dynamic_shapes=tuple({0: batch} for _ in INPUTS), verbose=False)
        else:
            torch.onnx.export(model, example, str(path), input_names=INPUTS, output_names=["logit"], dynamo=False,
                              dynamic_axes={n: {0: "batch"} for n in INPUTS + ["logit"]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    train_df, test_df = read_census(args.data_dir)
    rng = np.random.default_rng(0)
    rows = frame_of(train_df.iloc[np.sort(rng.choice(len(train_df), 6000, replace=False))])
    held = frame_of(test_df.iloc[np.sort(rng.choice(len(test_df), 4000, replace=False))])
    seen = rng.permutation(len(rows)) < int(0.8 * len(rows))
    rows[seen].to_csv(args.out / "train.csv", index=False)
    rows[~seen].to_csv(args.out / "fusion.csv", index=False)
    held.iloc[:2000].to_csv(args.out / "val.csv", index=False)
    held.iloc[2000:].to_csv(args.out / "test.csv", index=False)
    for task, models in MODELS.items():
        for k, (name, widths) in enumerate(models.items()):
            torch.manual_seed(k)
            export(train(WideDeep(widths), rows[seen], task), args.out / f"{name}.onnx", dynamo=k == 1)
            print(f"wrote {args.out / name}.onnx ({task}, MLP {widths})")


if __name__ == "__main__":
    main()
