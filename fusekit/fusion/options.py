"""The options of the fusion network (``FusionOptions``) and of ``fuse`` (``FuseOptions``).

Both check themselves when made (OptionError naming the field); the command line reads their
defaults, choices and help from here. Nothing here imports torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fusekit.errors import OptionError
from fusekit.options import Options, option, seed_option
from fusekit.stream_config import StreamOptions
from fusekit.train_config import TrainConfig

# Paper mode's early-stopping warm-up (TrainConfig.warmup_epochs left unset): its new towers start
# from random weights over frozen components, and a seed whose first epochs stall was stopped at
# epoch 6 by a patience of 5 (income AUC 0.809 on Census-Income). Ten epochs, twice the patience,
# before patience counts; capped below the epoch budget.
PAPER_WARMUP_EPOCHS = 10

MODES = ("paper", "residual")
FINETUNE = ("none", "heads", "last", "all")
FUSE_AT = ("auto", "last", "all")
# fusekit.fusion.akf.ACTIVATIONS holds the modules; their names are here so that no torch is needed to check one.
ACTIVATION_NAMES = ("relu", "gelu", "elu", "tanh")
TRAIN_ROWS = ("holdout", "all")


@dataclass
class FusionOptions(Options):
    """Architecture options of the fusion network (the Table II ablations among them)."""

    mode: str = option("residual", choices=MODES,
                       help="residual: source paths and heads kept, fusion added as zero-initialised residuals; "
                            "paper: the EMM network with new towers")
    use_mtm: bool = option(True, help="fusion gate / Multi-Task Merge (off: the Table II ablation)")
    pretrained: bool = option(True, help="use the trained components (off: same structure trained from scratch)")
    top_k: int = option(1, minimum=1, help="tasks each task's fusion gate selects")
    tower_hidden: int = option(32, minimum=1, help="hidden width of the task towers")
    # Residual mode: logit correction from the last z_t (paper mode always has towers).
    tower: bool = option(True, help="residual mode: tower correction on the mixed heads")
    activation: str = option("relu", choices=ACTIVATION_NAMES, help="activation of the AKF attention networks")
    seed: int = seed_option(help="seed of the fusion network")
    # Source weights trained along with the fusion: none (the paper), the heads (residual mode),
    # the last level (+ heads) or all components; at finetune_lr times the fusion's learning rate.
    finetune: str = option("none", choices=FINETUNE,
                           help="also train these source weights: heads (residual mode), the last level and heads, "
                                "or all (none: sources frozen, as in the paper)")
    finetune_lr: float = option(0.1, above=0.0,
                                help="learning rate of fine-tuned source weights, as a fraction of the fusion's")
    # Levels that get an AKF module: every level (the paper) or only the last. "auto": the
    # last in residual mode (as accurate on Census, a fraction of the serving cost), all in paper mode.
    fuse_at: str = option("auto", choices=FUSE_AT,
                          help="levels that get an AKF module: last or all (auto: last in residual mode, "
                               "all in paper mode)")
    # AKF pools a sequence boundary over its real positions only (fusion/masks.py).
    sequence_mask: str = option("auto", help="input marking the padding of sequence boundaries: auto "
                                             "(attention_mask if the models read one), none, NAME (nonzero = a "
                                             "real position) or NAME:padding (nonzero = padding)")

    def _check(self) -> None:
        from fusekit.fusion.masks import check_option

        check_option(self.sequence_mask)
        if self.fuse_at == "last" and self.mode == "paper":
            raise OptionError("the paper's network fuses at every level: {fuse_at='last'} cannot go with "
                              "{mode='paper'}; use {fuse_at='all'}", owner="FusionOptions")
        if self.finetune != "none" and not self.pretrained:
            raise OptionError("{finetune} trains the source models' own weights; it cannot go with "
                              "{pretrained=False}", owner="FusionOptions")
        if self.finetune == "heads" and self.mode != "residual":
            raise OptionError("{finetune='heads'} needs {mode='residual'} (the paper's network does not use the heads)",
                              owner="FusionOptions")

    def check_task_count(self, n_tasks: int) -> None:
        """OptionError when the fusion gate would select more tasks than there are other tasks."""
        if self.use_mtm and self.top_k > n_tasks - 1:
            raise OptionError(f"{{top_k={self.top_k}}} selects more tasks than the {n_tasks - 1} other task(s) each "
                              f"task has; use {{top_k={max(1, n_tasks - 1)}}} or fewer", owner="FusionOptions")

    def fused_levels(self, n_levels: int) -> list[int]:
        """Indices of the levels with an AKF module."""
        at = self.fuse_at if self.fuse_at != "auto" else ("last" if self.mode == "residual" else "all")
        return [n_levels - 1] if at == "last" else list(range(n_levels))

    def to_dict(self) -> dict:
        """Plain dict for metrics.json."""
        return dict(self.__dict__)


@dataclass
class FuseOptions(Options):
    """Everything ``fuse`` can be told besides the parts, tasks, data and output."""

    fusion: FusionOptions = option(default_factory=FusionOptions, kind=FusionOptions)
    # Optimiser, budget, seed, device and progress bar; its checkpoint_dir and resume are set by fuse.
    training: TrainConfig = option(default_factory=TrainConfig, kind=TrainConfig)
    # Whether the training file is held in memory or read in batches (auto: by its size).
    streaming: StreamOptions = option(default_factory=StreamOptions, kind=StreamOptions)
    resume: bool = option(False, help="continue an interrupted run from its last checkpoint")
    force: bool = option(False, help="replace a non-empty output directory")
    labels: dict[str, str] | None = option(None, kind="str_map", help="task -> label column, for CSV/Parquet data")
    val: Path | None = option(None, kind="path", help="validation file (CSV, Parquet, .npz or a Parquet folder); "
                                                      "default: carved from the training data")
    test: Path | None = option(None, kind="path", help="test file (CSV, Parquet, .npz or a Parquet folder); "
                                                       "default: carved from the training data")
    # Detected from how the sources' outputs end (Sigmoid, Softmax, nothing) unless named here.
    task_kinds: dict[str, str] | None = option(None, kind="str_map",
                                               help="task -> kind: binary, multiclass, regression or count "
                                                    "(binary:logit and the like also name the output form)")
    outputs: dict[str, str] | None = option(None, kind="str_map",
                                            help="task -> the source models' output to fuse, for models with several")
    data_dir: Path | None = option(None, kind="path", help="folder holding the Census-Income files")
    max_rows: int | None = option(None, kind="int", minimum=1, help="use at most this many rows of each split")
    # The validation/test split of the data: the source models' (not the training seed).
    split_seed: int = seed_option(help="seed of the validation/test split of the data "
                                                "(use the one the source models used)")
    # "holdout": the training rows the source models did not see, when their specification
    # records a holdout (all rows otherwise); "all": every training row.
    train_rows: str = option("holdout", choices=TRAIN_ROWS,
                             help="holdout: train on the rows the source models did not see, when their feature "
                                  "specification records a holdout; all: every training row")
    ignore_task_metadata: bool = option(False, help="accept a task mapping that puts a model in another task than "
                                                    "the fusekit.task of its metadata")
    parity_tol: float = option(1e-5, above=0.0, help="largest onnxruntime-vs-torch difference accepted")
    on_epoch: Callable | None = option(None, kind="callable")  # called with each EpochRecord (progress reporting)
    on_data: Callable | None = option(None, kind="callable")  # called once with how the data files were read
    # The command line that asked for this run (argv as typed), for the run record.
    command: list[str] | None = option(None, kind="str_list")

    def _check(self) -> None:
        # The nested options may have been changed since they were made.
        self.fusion.validate()
        self.training.validate()
        self.streaming.validate()
        from fusekit.task_kinds import parse_kind

        for text in (self.task_kinds or {}).values():
            try:
                parse_kind(text)
            except Exception as exc:
                raise OptionError(f"{{task_kinds}}: {exc}", owner="FuseOptions") from None
