"""Ensemble operators: built-ins against NumPy, contracts over the registry.

The filters' tests live in tests/test_filters.py."""

from __future__ import annotations

import numpy as np
import pytest

import wsss_bench
from wsss_bench.contracts import Ensemble
from wsss_bench_plugins.ensembles import And, Or

REGISTRY = wsss_bench.load_registry()
ENSEMBLES = sorted(REGISTRY.ensembles)


def random_masks(m: int, b: int = 3, h: int = 5, w: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((m, b, h, w)) > 0.5


# ---------------------------------------------------------------- built-in ensembles


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize(("op", "reference"), [(And(), np.all), (Or(), np.any)])
def test_and_or_match_numpy(op, reference, m):
    masks = random_masks(m, seed=m)
    original = masks.copy()
    out = op.combine(masks)
    assert out.dtype == bool and out.shape == (3, 5, 7)
    np.testing.assert_array_equal(out, reference(masks, axis=0))
    np.testing.assert_array_equal(masks, original)  # the input is not modified


def test_and_or_truth_table():
    a = np.array([False, False, True, True]).reshape(1, 1, 4)
    b = np.array([False, True, False, True]).reshape(1, 1, 4)
    masks = np.stack([a, b])
    assert And().combine(masks).ravel().tolist() == [False, False, False, True]
    assert Or().combine(masks).ravel().tolist() == [False, True, True, True]
    c = np.array([True, True, True, False]).reshape(1, 1, 4)
    three = np.stack([a, b, c])
    assert And().combine(three).ravel().tolist() == [False, False, False, False]
    assert Or().combine(three).ravel().tolist() == [True, True, True, True]


def test_ensemble_names():
    assert And().name == "and" and Or().name == "or"
    assert {"and", "or"} <= set(ENSEMBLES)


# ---------------------------------------------------------------- contracts over the registry


@pytest.mark.parametrize("name", ENSEMBLES)
@pytest.mark.parametrize("m", [2, 3])
def test_ensemble_contract(name, m):
    op = REGISTRY.ensembles[name]
    assert isinstance(op, Ensemble)
    masks = random_masks(m, b=2, h=6, w=9, seed=10 + m)
    original = masks.copy()
    out = np.asarray(op.combine(masks))
    assert out.dtype == bool and out.shape == (2, 6, 9)
    np.testing.assert_array_equal(masks, original)
    single = random_masks(1, b=2, h=6, w=9, seed=99)[0]
    same = np.stack([single] * m)
    np.testing.assert_array_equal(op.combine(same), single)  # M identical masks -> that mask
    assert not op.combine(np.zeros((m, 2, 6, 9), bool)).any()
    assert op.combine(np.ones((m, 2, 6, 9), bool)).all()
