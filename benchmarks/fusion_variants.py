"""What each fusion option does to test AUC, over seeds: the variant study in the README.

Every variant is one `fusekit fuse` configuration (the flag names are FusionOptions,
TrainConfig and FuseOptions fields) run on a bundled pool for each seed; the table gives the
mean and spread of the test AUC per task next to the plain average of the source models.

    .venv/bin/python benchmarks/fusion_variants.py [--pool census2] [--seeds 0,1,2]
        [--variants default,finetune-all,...] [--data-dir ../shared/data] [-o OUT.json]

About a minute per variant and seed on one CPU core.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fusekit.decompose.pipeline import decompose
from fusekit.sample_models import sample_pool  # noqa: E402
from fusekit.fusion.fuse import FuseOptions, fuse  # noqa: E402
from fusekit.fusion.model import FusionOptions  # noqa: E402
from fusekit.threads import apply_threads  # noqa: E402
from fusekit.train import TrainConfig  # noqa: E402

# name -> settings, as `fusekit fuse` flags would give them.
VARIANTS: dict[str, dict] = {
    "default": {},
    "fuse-at-all": {"fuse_at": "all"},
    "finetune-heads": {"finetune": "heads"},
    "finetune-last": {"finetune": "last"},
    "finetune-all": {"finetune": "all"},
    "finetune-all-lr0.05": {"finetune": "all", "finetune_lr": 0.05},
    "finetune-all-lr0.3": {"finetune": "all", "finetune_lr": 0.3},
    "finetune-all-lr1": {"finetune": "all", "finetune_lr": 1.0},
    "finetune-all-slow": {"finetune": "all", "lr": 5e-4, "patience": 10},
    "finetune-all-all-rows": {"finetune": "all", "train_rows": "all"},
    "all-rows": {"train_rows": "all"},
    "top-k-2": {"top_k": 2},
    "finetune-all-top-k-2": {"finetune": "all", "top_k": 2},
}


def options_for(settings: dict, seed: int) -> FuseOptions:
    """FuseOptions of one variant and seed (settings split over FusionOptions, TrainConfig, FuseOptions)."""
    fusion_keys = {f.name for f in dataclasses.fields(FusionOptions)}
    training_keys = {f.name for f in dataclasses.fields(TrainConfig)} - {f.name for f in dataclasses.fields(FuseOptions)}
    fusion = {k: v for k, v in settings.items() if k in fusion_keys}
    training = {k: v for k, v in settings.items() if k in training_keys}
    rest = {k: v for k, v in settings.items() if k not in fusion_keys | training_keys}
    return FuseOptions(fusion=FusionOptions(seed=seed, **fusion),
                       training=TrainConfig(seed=seed, progress=False, **training), force=True, **rest)


def _mean_and_spread(values: list[float]) -> str:
    """Mean ± sample standard deviation, as the bench tables write them."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.5f} ± {spread:.5f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="census2", help="a bundled sample pool (census2 or census3)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("-o", "--output", type=Path, help="also write the results as JSON")
    args = parser.parse_args()
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}")
    apply_threads(1, torch=True)  # one thread: variants run side by side
    seeds = [int(s) for s in args.seeds.split(",")]
    pool = sample_pool(args.pool)
    models, tasks = pool.paths, pool.models
    work = Path(tempfile.mkdtemp(prefix="fusion_variants-"))
    decompose(models, work / "parts")
    results: dict = {"pool": args.pool, "seeds": seeds, "variants": {}}
    average: dict[str, float] = {}
    for name in args.variants.split(","):
        aucs: dict[str, list[float]] = {t: [] for t in tasks}
        for seed in seeds:
            result = fuse(work / "parts", tasks, "census-income", work / "out",
                          options_for({**VARIANTS[name], "data_dir": args.data_dir}, seed))
            for row in result.rows:
                aucs[row["task"]].append(row["fused"])
                average[row["task"]] = row["average"]
            print(f"{name} seed {seed}: " + ", ".join(f"{t} {v[-1]:.5f}" for t, v in aucs.items()), flush=True)
        results["variants"][name] = {"settings": VARIANTS[name], "test_auc": aucs}
    results["average_of_sources"] = average

    print(f"\n| variant | settings | {' | '.join(tasks)} |")
    print("|---|---|" + "---|" * len(tasks))
    print(f"| average of the sources | – | {' | '.join(f'{average[t]:.5f}' for t in tasks)} |")
    for name, entry in results["variants"].items():
        cells = [_mean_and_spread(v) for v in entry["test_auc"].values()]
        settings = ", ".join(f"{k}={v}" for k, v in entry["settings"].items()) or "defaults"
        print(f"| {name} | {settings} | {' | '.join(cells)} |")
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
