"""``Budget``: the training budget every trained method of the benchmark gets (no torch needed)."""
from __future__ import annotations

from dataclasses import dataclass

from fusekit.options import Options, option, seed_option
from fusekit.train_config import DEVICE_PATTERN, DEVICES, TrainConfig


@dataclass
class Budget(Options):
    """The training budget every trained method gets (the EMM paper's optimiser settings)."""

    max_epochs: int = option(100, minimum=1, help="epoch budget of every trained method")
    patience: int = option(5, minimum=1, help="early-stopping patience")
    lr: float = option(1e-3, above=0.0, help="learning rate (Adam)")
    batch_size: int = option(1024, minimum=1, help="rows per optimiser step")
    weight_decay: float = option(1e-6, minimum=0.0, help="Adam weight decay")
    # Quick runs: a seeded row subsample of every split.
    train_rows: int | None = option(None, kind="int", minimum=1, help="training rows (subsample)")
    val_rows: int | None = option(None, kind="int", minimum=1, help="validation rows (subsample)")
    test_rows: int | None = option(None, kind="int", minimum=1, help="test rows (subsample)")
    device: str = option("auto", choices=DEVICES, pattern=DEVICE_PATTERN, help="auto: CUDA when available")
    in_process_fusion: bool = option(False, help="train fused models without fuse's ONNX export (quick runs)")
    split_seed: int = seed_option(help="seed of the validation/test split of the data")

    def train_config(self, seed: int, progress: bool = False) -> TrainConfig:
        """The TrainConfig of one training run under this budget."""
        return TrainConfig(lr=self.lr, batch_size=self.batch_size, weight_decay=self.weight_decay,
                           max_epochs=self.max_epochs, patience=self.patience, seed=seed, device=self.device,
                           progress=progress)

    @classmethod
    def for_run(cls, quick: bool, max_epochs: int | None = None, patience: int | None = None,
                device: str = "auto", split_seed: int = 0, batch_size: int | None = None) -> "Budget":
        """The full budget, or the quick smoke-test one (2 epochs on 10,000 rows, batch 256)."""
        # Quick: ~80 optimiser steps per method. Income (6 % positives) needs a few dozen steps
        # before its AUC passes 0.5, so a smaller batch rather than fewer rows.
        changes = {"device": device, "split_seed": split_seed,
                   **({"max_epochs": max_epochs} if max_epochs is not None else {}),
                   **({"patience": patience} if patience is not None else {}),
                   **({"batch_size": batch_size} if batch_size is not None else {})}
        if quick:
            return cls(**{"max_epochs": 2, "patience": 2, "batch_size": 256, "train_rows": 10000, "val_rows": 4000,
                          "test_rows": 20000, "in_process_fusion": True, **changes})
        return cls(**changes)
