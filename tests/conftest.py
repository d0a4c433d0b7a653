"""Shared fixtures: where the real data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BRATS_SAMPLE = SHARED_DATA / "brats-sample"
PROSTATE_LABELS = SHARED_DATA / "msd-prostate-labels" / "Task05_Prostate" / "labelsTr"


@pytest.fixture(scope="session")
def brats_sample() -> Path:
    if not BRATS_SAMPLE.is_dir():
        pytest.fail(f"real data missing: {BRATS_SAMPLE} (../shared/data must sit beside the repo)")
    return BRATS_SAMPLE
