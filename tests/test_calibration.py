"""Threshold calibration against a brute-force oracle."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_bench import calibration, metrics
from wsss_bench.calibration import GridResult, binarize, grid_search, threshold_grid
from wsss_bench.metrics import METRIC_NAMES


class And:
    name = "and"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return masks.all(0)


class Or:
    name = "or"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return masks.any(0)


ENSEMBLES = {"and": And(), "or": Or()}


def oracle(cams, gt, grid, ensemble, metric, case_ids, region):
    """Binarize, combine and score every threshold tuple; keep the first strict maximum."""
    m = cams.shape[0]
    if region is not None:
        cams = np.where(region[None], cams, 0.0)
    scores = np.empty((len(grid),) * m)
    best, best_idx = -np.inf, None
    for idx in itertools.product(range(len(grid)), repeat=m):
        masks = np.stack([cams[j] > grid[i] for j, i in enumerate(idx)])
        pred = masks[0] if m == 1 else ensemble.combine(masks)
        s = metrics.score(pred, gt, case_ids)[metric]
        scores[idx] = s
        if s > best:
            best, best_idx = s, idx
    return best_idx, best, scores


def test_threshold_grid() -> None:
    np.testing.assert_array_equal(threshold_grid(), np.arange(11) / 10)
    assert threshold_grid(0.1)[3] == 0.3 and threshold_grid(0.1)[7] == 0.7
    assert len(threshold_grid(0.05)) == 21
    assert len(threshold_grid(0.01)) == 101
    np.testing.assert_array_equal(threshold_grid(0.5), [0.0, 0.5, 1.0])
    np.testing.assert_array_equal(threshold_grid(1.0), [0.0, 1.0])
    for step in (0.1, 0.05, 0.01, 0.25):
        t = threshold_grid(step)
        assert t[0] == 0.0 and t[-1] == 1.0 and np.all(np.diff(t) > 0)
    for bad in (0.3, 0.0, -0.1, 1.5, 0.15, float("nan")):
        with pytest.raises(ValueError):
            threshold_grid(bad)


@settings(max_examples=150, deadline=None)
@given(
    m=st.sampled_from([1, 2, 3]),
    n=st.integers(1, 6),
    h=st.integers(1, 8),
    w=st.integers(1, 8),
    step=st.sampled_from([0.1, 0.25, 0.5]),
    metric=st.sampled_from(METRIC_NAMES),
    ens=st.sampled_from(["and", "or"]),
    use_region=st.booleans(),
    n_cases=st.integers(1, 3),
    gt_p=st.sampled_from([0.0, 0.2, 0.5]),
    seed=st.integers(0, 2**32 - 1),
)
def test_grid_search_matches_oracle(m, n, h, w, step, metric, ens, use_region, n_cases, gt_p, seed):
    if m == 3 and step == 0.1:
        step = 0.25  # keep the oracle's 11**3 loop out of the fast suite
    rng = np.random.default_rng(seed)
    # half the values sit exactly on multiples of 1/20 (so on grid points), half are continuous
    cams = np.where(
        rng.random((m, n, h, w)) < 0.5,
        rng.integers(0, 21, (m, n, h, w)) / 20,
        rng.random((m, n, h, w)),
    )
    gt = rng.random((n, h, w)) < gt_p
    region = rng.random((n, h, w)) < 0.7 if use_region else None
    case_ids = [f"case{i}" for i in rng.integers(0, n_cases, n)]
    grid = threshold_grid(step)
    ensemble = ENSEMBLES[ens]

    got = grid_search(
        cams,
        gt,
        ensemble=ensemble,
        thresholds=grid,
        metric=metric,
        case_ids=case_ids,
        region=region,
    )
    want_idx, want_score, want_scores = oracle(cams, gt, grid, ensemble, metric, case_ids, region)
    assert isinstance(got, GridResult)
    assert got.scores.shape == (len(grid),) * m
    np.testing.assert_allclose(got.scores, want_scores, rtol=0, atol=1e-12)
    assert got.index == want_idx
    assert got.thresholds == tuple(float(grid[i]) for i in want_idx)
    assert got.score == pytest.approx(want_score, abs=1e-12)
    # binarize at the chosen thresholds reproduces the chosen score
    pred = binarize(cams, got.thresholds, ensemble, region)
    assert metrics.score(pred, gt, case_ids)[metric] == pytest.approx(got.score, abs=1e-12)


def test_chunking_gives_same_result(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    cams = rng.random((2, 9, 6, 5))
    gt = rng.random((9, 6, 5)) < 0.3
    ids = rng.integers(0, 3, 9)
    for metric in METRIC_NAMES:
        whole = grid_search(cams, gt, ensemble=Or(), metric=metric, case_ids=ids)
        monkeypatch.setattr(calibration, "_CHUNK_BYTES", 1)  # one slice per chunk
        chunked = grid_search(cams, gt, ensemble=Or(), metric=metric, case_ids=ids)
        monkeypatch.undo()
        np.testing.assert_allclose(chunked.scores, whole.scores, rtol=0, atol=1e-12)
        assert chunked.index == whole.index


def test_ties_pick_lowest_index() -> None:
    gt = np.zeros((3, 4, 4), dtype=bool)
    gt[0, 1:3, 1:3] = True
    cams = np.zeros((2, 3, 4, 4))  # every threshold gives the same empty mask
    for metric in METRIC_NAMES:
        res = grid_search(cams, gt, ensemble=And(), metric=metric)
        assert res.index == (0, 0)
        assert res.thresholds == (0.0, 0.0)
        assert np.all(res.scores == res.scores[0, 0])
    # single backbone, [N,H,W] input
    res = grid_search(cams[0], gt)
    assert res.index == (0,) and res.scores.shape == (11,)


def test_tie_lowest_index_first_backbone_first() -> None:
    # backbone 0 decides everything under "or" when backbone 1 is all zero: scores depend on
    # the first index only, so the best row is taken at its lowest second index (0)
    gt = np.zeros((1, 2, 2), dtype=bool)
    gt[0, 0, 0] = True
    cams = np.zeros((2, 1, 2, 2))
    cams[0, 0] = [[0.9, 0.2], [0.1, 0.0]]
    res = grid_search(cams, gt, ensemble=Or(), thresholds=threshold_grid(0.25))
    # t0 in {0.25, 0.5, 0.75} gives exactly the lesion pixel: first is index 1
    assert res.index == (1, 0) and res.score == 1.0


def test_strict_threshold() -> None:
    cams = np.full((1, 1, 2, 2), 0.5)
    assert not binarize(cams, [0.5]).any()
    assert binarize(cams, [0.4999]).all()
    assert not binarize(np.ones((1, 2, 2)), [1.0]).any()  # t = 1.0 is the empty mask
    # float32 CAMs are compared exactly: float32(0.1) > 0.1 in exact arithmetic
    c32 = np.full((1, 1, 1, 1), 0.1, dtype=np.float32)
    assert binarize(c32, [0.1]).all() == (float(np.float32(0.1)) > 0.1)


def test_interior_optimum_needs_strict_comparison() -> None:
    # pixel cams 1.0, 0.5, 0.5, 0.0 with the lesion on the first pixel only.
    # With '>': t=0 -> 3 positives, t=0.5 -> exactly the lesion (score 1), t=1 -> empty.
    # With '>=' the perfect mask would appear at t=1.0 (index 2), not at 0.5.
    cams = np.array([[[[1.0, 0.5], [0.5, 0.0]]]])
    gt = np.array([[[True, False], [False, False]]])
    for metric in METRIC_NAMES:
        res = grid_search(cams, gt, thresholds=threshold_grid(0.5), metric=metric)
        assert res.index == (1,) and res.thresholds == (0.5,)
        assert res.score == 1.0
        assert res.scores[0] < 1.0 and res.scores[2] < 1.0


def test_region_zeroes_cams_outside() -> None:
    cams = np.ones((1, 2, 4, 4))
    region = np.zeros((2, 4, 4), dtype=bool)
    region[:, :, :2] = True
    np.testing.assert_array_equal(binarize(cams, [0.0], region=region), region)
    gt = region.copy()
    res = grid_search(cams, gt, region=region)
    assert res.index == (0,) and res.score == 1.0
    res_no_region = grid_search(cams, gt)
    assert res_no_region.score < 1.0
    # ensembles see the region-zeroed masks of every backbone
    both = np.ones((2, 2, 4, 4))
    np.testing.assert_array_equal(binarize(both, [0.0, 0.0], Or(), region), region)


def test_validation_errors() -> None:
    cams = np.zeros((2, 1, 3, 3))
    gt = np.zeros((1, 3, 3), dtype=bool)
    with pytest.raises(ValueError, match="ensemble"):
        grid_search(cams, gt)
    with pytest.raises(ValueError, match="ensemble"):
        binarize(cams, [0.5, 0.5])
    with pytest.raises(ValueError, match="metric"):
        grid_search(cams, gt, ensemble=And(), metric="dice")
    with pytest.raises(ValueError, match="gt"):
        grid_search(cams, np.zeros((1, 3, 4), dtype=bool), ensemble=And())
    with pytest.raises(ValueError, match="region"):
        grid_search(cams, gt, ensemble=And(), region=np.ones((2, 3, 3), dtype=bool))
    with pytest.raises(ValueError, match="thresholds"):
        binarize(cams, [0.5], And())


def test_torch_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    cams = rng.random((2, 3, 5, 5)).astype(np.float32)
    gt = rng.random((3, 5, 5)) < 0.3
    region = rng.random((3, 5, 5)) < 0.8
    want = grid_search(cams, gt, ensemble=And(), region=region, case_ids=[0, 1, 1])
    got = grid_search(
        torch.from_numpy(cams),
        torch.from_numpy(gt),
        ensemble=And(),
        region=torch.from_numpy(region),
        case_ids=torch.tensor([0, 1, 1]),
    )
    assert got.index == want.index
    np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(
        binarize(torch.from_numpy(cams), [0.3, 0.6], And()), binarize(cams, [0.3, 0.6], And())
    )
