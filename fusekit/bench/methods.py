"""The methods a benchmark can run: source rows, baselines, fusion variants and the paper's ablation."""
from __future__ import annotations

DEFAULT_TASKS = ["income", "never_married"]
THREE_TASKS = ["income", "never_married", "education"]
SOURCE_ROWS = ["sources", "average"]
EMM_METHODS = ["emm-paper", "emm", "emm-all-levels", "emm-finetune", "emm-all-rows", "emm-finetune-all-rows"]

# Fusion variants: (label, keywords of FusionOptions, or of FuseOptions such as train_rows).
# Table II uses the paper's network. The all-rows variants fuse on every training row, as the
# baselines train, including the 80 % the sources saw (where their outputs are overconfident).
EMM_VARIANTS = {
    "emm-paper": ("EMM (paper network)", {"mode": "paper", "use_mtm": True, "pretrained": True}),
    "emm": ("EMM (fusekit residual, default)", {"mode": "residual", "use_mtm": True, "pretrained": True}),
    "emm-all-levels": ("EMM residual, AKF at every level",
                       {"mode": "residual", "use_mtm": True, "pretrained": True, "fuse_at": "all"}),
    "emm-finetune": ("EMM residual, sources fine-tuned (--finetune all)",
                     {"mode": "residual", "use_mtm": True, "pretrained": True, "finetune": "all"}),
    "emm-all-rows": ("EMM residual, fused on every training row (--train-rows all)",
                     {"mode": "residual", "use_mtm": True, "pretrained": True, "train_rows": "all"}),
    "emm-finetune-all-rows": ("EMM residual, sources fine-tuned on every training row (--finetune all --train-rows all)",
                              {"mode": "residual", "use_mtm": True, "pretrained": True, "finetune": "all",
                               "train_rows": "all"}),
}
ABLATION_VARIANTS = {
    "baseline": ("no trained components, no MTM", {"mode": "paper", "use_mtm": False, "pretrained": False}),
    "baseline+mtm": ("MTM only (no trained components)", {"mode": "paper", "use_mtm": True, "pretrained": False}),
    "baseline+p": ("trained components, no MTM", {"mode": "paper", "use_mtm": False, "pretrained": True}),
    "full": ("full EMM (trained components + MTM)", {"mode": "paper", "use_mtm": True, "pretrained": True}),
}
KIND_ORDER = {"single": 0, "ensemble": 1, "baseline": 2, "emm": 3}


def all_methods() -> list[str]:
    """Every method name ``--methods`` accepts (the baselines' names come from their registry)."""
    from fusekit.models.baselines import BASELINES

    return SOURCE_ROWS + list(BASELINES) + EMM_METHODS + ["ablation"]


def ablation_method(key: str) -> str:
    """The method whose cells give Table II's variant ``key``: an EMM row with the same options, if any."""
    kw = ABLATION_VARIANTS[key][1]
    same = next((m for m, (_, v) in EMM_VARIANTS.items() if v == kw), None)
    return same or f"ablation-{key}"
