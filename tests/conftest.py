"""Shared test setup: where the real data lives, and small CPU budgets."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from fusekit.threads import apply_threads

REPO = Path(__file__).resolve().parents[1]
SHARED_CENSUS = REPO.parent / "shared" / "data" / "census-income-kdd"
SHARED_DATA = REPO.parent / "shared" / "data"

# The models under test are tiny: a second intra-op thread only adds synchronisation, and on a
# busy 2-core machine it made training steps up to 100x slower. fusekit's own count (which fit
# and the onnxruntime sessions take) is set, not only torch's.
apply_threads(1, torch=True)


@pytest.fixture(scope="session")
def census_dir() -> Path | None:
    """A directory with the Census-Income files, or None to let fusekit obtain them itself."""
    env = os.environ.get("FUSEKIT_DATA_DIR")
    if env:
        return Path(env)
    return SHARED_CENSUS if SHARED_CENSUS.is_dir() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The format samples (AliExpress, Ali-CCP) kept beside the project."""
    if not SHARED_DATA.is_dir():
        pytest.skip("the format samples in ../shared/data are not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def census2(census_dir):
    """The real two-task Census-Income data (income, never_married), encoded once per session."""
    from fusekit.data import load_dataset

    return load_dataset("census-income", ["income", "never_married"], data_dir=census_dir)


@pytest.fixture(scope="session")
def pool(tmp_path_factory, census_dir) -> dict:
    """A small trained and decomposed pool (tests/fusion_pool.py), built once per session."""
    from tests.fusion_pool import build_pool

    return build_pool(tmp_path_factory.mktemp("pool"), census_dir)
