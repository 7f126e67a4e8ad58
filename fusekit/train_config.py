"""``TrainConfig``: optimiser, budget, device and bookkeeping of :func:`fusekit.train.fit`.

Apart from the training loop so that the command line reads its defaults without importing torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fusekit.errors import OptionError
from fusekit.options import Options, option, seed_option

DEVICES = ("auto", "cpu", "cuda")
DEVICE_PATTERN = r"cuda:\d+"  # a given GPU, for library callers


@dataclass
class TrainConfig(Options):
    """Optimiser, budget, device and bookkeeping for :func:`fit` (defaults: the EMM paper's)."""

    # 0 is allowed: it trains nothing, which checks early stopping and the bookkeeping around it.
    lr: float = option(1e-3, minimum=0.0, help="learning rate (Adam)")
    batch_size: int = option(1024, minimum=1, help="rows per optimiser step")
    weight_decay: float = option(1e-6, minimum=0.0, help="Adam weight decay")
    max_epochs: int = option(100, minimum=1, help="maximum epochs (early stopping on mean validation AUC)")
    patience: int = option(5, minimum=1, help="early stopping: epochs without a better mean validation AUC")
    # None: 0, except fuse's paper mode (fusion/options.py:PAPER_WARMUP_EPOCHS).
    warmup_epochs: int | None = option(None, kind="int", minimum=0,
                                       help="early stopping: epochs before patience starts counting (default 0; "
                                            "fuse's paper mode 10)")
    seed: int = seed_option(help="seed of initialisation and shuffling")
    device: str = option("auto", choices=DEVICES, pattern=DEVICE_PATTERN,
                         help="auto: CUDA when torch sees a GPU, else CPU")
    amp: bool = option(True, help="mixed precision on CUDA")
    progress: bool = option(True, help="per-epoch lines on stderr (and progress bars when stderr is a terminal)")
    checkpoint_dir: Path | None = option(None, kind="path", help="write checkpoint.pt here after every epoch")
    resume: bool = option(False, help="continue from the checkpoint in checkpoint_dir")
    eval_batch_size: int = option(16384, minimum=1, help="rows per validation batch")
    threads: int | None = option(None, kind="int", minimum=1,
                                 help="torch and onnxruntime threads (default: the cores this process may use, "
                                      "divided among the processes of a distributed run; OMP_NUM_THREADS when set)")

    def _check(self) -> None:
        if self.warmup_epochs is not None and self.warmup_epochs >= self.max_epochs:
            raise OptionError(f"{{warmup_epochs={self.warmup_epochs}}} leaves no epoch for early stopping within "
                              f"{{max_epochs={self.max_epochs}}}; choose a warm-up below the epoch budget",
                              owner="TrainConfig")
        if self.resume and self.checkpoint_dir is None:
            raise OptionError("{resume=True} needs {checkpoint_dir}, the folder holding the checkpoint",
                              owner="TrainConfig")
