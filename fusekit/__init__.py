"""fusekit: fuse trained single-task ONNX models into one multi-task model (EMM).

The public API, importable from here (loaded on first use, so ``import fusekit`` stays light)::

    from fusekit import FuseOptions, FusionOptions, TrainConfig, fuse
    from fusekit.decompose import decompose     # the subpackage owns the name ``fusekit.decompose``
    parts = decompose(["a.onnx", "b.onnx", "c.onnx", "d.onnx"], "parts/")
    result = fuse("parts/", {"income": ["a", "b"], "never_married": ["c", "d"]}, "census-income", "fused/")
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> the module that owns it.
_API = {
    "FusekitError": "fusekit.errors",
    "DecomposeResult": "fusekit.decompose.pipeline",
    "Manifest": "fusekit.decompose.manifest",
    "load_component": "fusekit.onnxio.interpreter",
    "session": "fusekit.onnxio.sessions",
    "fuse": "fusekit.fusion.fuse",
    "FuseResult": "fusekit.fusion.fuse",
    "FuseOptions": "fusekit.fusion.options",
    "FusionOptions": "fusekit.fusion.options",
    "OptionError": "fusekit.errors",
    "TrainConfig": "fusekit.train_config",
    "load_dataset": "fusekit.data",
    "FeatureSpec": "fusekit.data",
    "train_single": "fusekit.models.single",
    "Architecture": "fusekit.models.architecture",
    "evaluate_onnx": "fusekit.deploy.evaluate",
    "predict_onnx": "fusekit.deploy.evaluate",
    "export_model": "fusekit.deploy.raw_inputs",
    "run_bench": "fusekit.bench",
    "run_demo": "fusekit.demo",
    "sample_pool": "fusekit.sample_models",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module 'fusekit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
