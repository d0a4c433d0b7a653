"""Threshold calibration: the histogram implementation against the naive oracle, exactly."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.calibration_oracle import oracle_grid_search
from wsss_bench.core import calibration, metrics
from wsss_bench.core.calibration import GridResult, binarize, grid_search, threshold_grid
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.errors import UsageError
from wsss_bench_plugins.ensembles import And, Bigger, Mean, Or, Smaller, Vote


class NoRule:
    """Third-party style: no declared rule, only ``combine`` (the generic path)."""

    symbol = pixel_rule = slice_rule = None
    fuses = False


class First(NoRule):
    """The first backbone's mask."""

    name = "first"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return masks[0].copy()


class Xor(NoRule):
    """An odd number of backbones say so."""

    name = "xor"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return masks.sum(axis=0) % 2 == 1


class AtLeast(NoRule):
    """A pixel rule with any k, also k <= 0 (always positive) and k > M (never)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.name = f"at-least-{k}"
        self.pixel_rule = f"at-least-{k}"

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return masks.sum(axis=0) >= self.k


ENSEMBLES = {
    e.name: e
    for e in (And(), Or(), Smaller(), Bigger(), Vote(), Mean(), First(), Xor(), AtLeast(2))
}


def random_cams(rng: np.random.Generator, shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """CAMs in [0, 1]: a quarter continuous, a quarter exactly on multiples of 1/20 (grid
    points), a quarter 1 ulp (of ``dtype``) around them, a quarter on a few repeated values."""
    on_grid = rng.integers(0, 21, shape) / 20
    near = np.nextafter(on_grid.astype(dtype), rng.choice([-1.0, 2.0], shape).astype(dtype))
    kind = rng.integers(0, 4, shape)
    c = np.select(
        [kind == 0, kind == 1, kind == 2],
        [rng.random(shape), on_grid, near],
        rng.choice([0.0, 0.3, 0.7], shape),
    )
    return np.clip(c, 0.0, 1.0).astype(dtype)


def check_against_oracle(cams, gt, grid, ensemble, metric, case_ids, region) -> GridResult:
    got = grid_search(cams, gt, ensemble=ensemble, thresholds=grid, metric=metric,
                      case_ids=case_ids, region=region)
    want_idx, want_score, want_scores = oracle_grid_search(
        cams, gt, grid, ensemble, metric, case_ids, region)
    assert isinstance(got, GridResult)
    assert got.scores.shape == want_scores.shape
    np.testing.assert_allclose(got.scores, want_scores, rtol=0, atol=1e-12)
    assert got.index == want_idx
    assert got.thresholds == tuple(float(np.asarray(grid)[i]) for i in want_idx)
    assert got.score == pytest.approx(want_score, abs=1e-12)
    # binarize at the chosen thresholds reproduces the chosen score
    pred = binarize(cams, got.thresholds, ensemble, region)
    assert metrics.score(pred, gt, case_ids)[metric] == pytest.approx(got.score, abs=1e-12)
    return got


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


@pytest.mark.parametrize("step", [1.0, 0.5, 0.25, 0.1, 0.05, 0.02, 0.01, 1 / 3, 1 / 7, 0.001])
@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_bins_are_exact_on_and_around_grid_points(step: float, dtype: type) -> None:
    grid = threshold_grid(step)
    points = grid.astype(dtype)
    values = np.concatenate([
        points,
        np.nextafter(points, dtype(-np.inf)),
        np.nextafter(points, dtype(np.inf)),
        np.nextafter(np.nextafter(points, dtype(np.inf)), dtype(np.inf)),
        np.array([0.0, -0.0, -1e-30, -3.0, 1.5, 7.0, np.inf, -np.inf], dtype=dtype),
        np.array([np.finfo(dtype).smallest_subnormal, np.finfo(dtype).tiny], dtype=dtype),
        np.random.default_rng(0).random(500).astype(dtype),
    ])
    if dtype is np.float64:
        values = np.concatenate([values, np.nextafter(grid, -1.0), np.nextafter(grid, 2.0)])
    want = (values.astype(np.float64)[:, None] > grid[None, :]).sum(axis=1)
    fast = calibration._Grid(grid)
    assert fast.n == len(grid) - 1  # the uniform-grid paths, not the binary search
    assert fast.ceil32  # float32 (and float16) CAMs take ceil(c·n) on every such grid
    np.testing.assert_array_equal(fast.bins(values), want)
    fast.ceil32 = False  # and the rounding path (float64's) is exact for them too
    np.testing.assert_array_equal(fast.bins(values), want)


@pytest.mark.parametrize("grid", [[0.3, 0.1, 0.7], [-0.5, 0.0, 0.0, 0.5, 2.0], [0.25]])
def test_bins_on_any_grid(grid: list[float]) -> None:
    g = calibration._Grid(np.asarray(grid, dtype=np.float64))
    assert g.n == 0  # binary search path
    values = np.r_[np.asarray(grid), np.nextafter(grid, -9.0), np.nextafter(grid, 9.0), -1.0,
                   0.0, 3.0, np.random.default_rng(1).random(50)]
    want = (values[:, None] > g.values[None, :]).sum(axis=1)
    np.testing.assert_array_equal(g.bins(values), want)
    np.testing.assert_array_equal(g.bins(values.astype(np.float32)),
                                  (values.astype(np.float32).astype(np.float64)[:, None]
                                   > g.values[None, :]).sum(axis=1))
    np.testing.assert_array_equal(g.bins(np.array([-2, 0, 1, 3])),
                                  (np.array([-2, 0, 1, 3])[:, None] > g.values).sum(axis=1))


@settings(max_examples=200, deadline=None)
@given(
    m=st.sampled_from([1, 2, 2, 3]),
    ens=st.sampled_from(sorted(ENSEMBLES)),
    n=st.integers(1, 6),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    step=st.sampled_from([0.1, 0.25, 0.5]),
    metric=st.sampled_from(METRIC_NAMES),
    use_region=st.booleans(),
    n_cases=st.integers(1, 3),
    gt_p=st.sampled_from([0.0, 0.2, 0.5, 1.0]),
    dtype=st.sampled_from([np.float64, np.float32]),
    seed=st.integers(0, 2**32 - 1),
)
def test_grid_search_matches_oracle(m, ens, n, h, w, step, metric, use_region, n_cases, gt_p,
                                    dtype, seed):
    if m == 3 and step == 0.1:
        step = 0.25  # keep the oracle's 11**3 loop out of the fast suite
    rng = np.random.default_rng(seed)
    cams = random_cams(rng, (m, n, h, w), dtype)
    gt = rng.random((n, h, w)) < gt_p
    region = rng.random((n, h, w)) < 0.7 if use_region else None
    case_ids = [f"case{i}" for i in rng.integers(0, n_cases, n)]
    ensemble = ENSEMBLES[ens] if m >= 2 else None
    got = check_against_oracle(cams, gt, threshold_grid(step), ensemble, metric, case_ids, region)
    dims = 1 if m == 1 or ens == "mean" else m
    assert got.scores.shape == (len(threshold_grid(step)),) * dims


@settings(max_examples=40, deadline=None)
@given(
    k=st.integers(-1, 4),
    m=st.sampled_from([2, 3]),
    metric=st.sampled_from(METRIC_NAMES),
    seed=st.integers(0, 2**32 - 1),
)
def test_any_k_of_m_matches_oracle(k: int, m: int, metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    cams = random_cams(rng, (m, 3, 4, 3), np.float64)
    gt = rng.random((3, 4, 3)) < 0.3
    check_against_oracle(cams, gt, threshold_grid(0.25), AtLeast(k), metric, [0, 1, 1], None)


@settings(max_examples=40, deadline=None)
@given(
    grid=st.lists(st.sampled_from([-0.5, 0.0, 0.05, 0.1, 0.3, 0.5, 0.7, 1.0, 1.5]),
                  min_size=1, max_size=5),
    m=st.sampled_from([1, 2]),
    ens=st.sampled_from(["and", "smaller", "mean", "xor"]),
    metric=st.sampled_from(METRIC_NAMES),
    seed=st.integers(0, 2**32 - 1),
)
def test_unsorted_grid_with_duplicates_matches_oracle(grid, m, ens, metric, seed) -> None:
    rng = np.random.default_rng(seed)
    cams = random_cams(rng, (m, 3, 3, 4), np.float32)
    gt = rng.random((3, 3, 4)) < 0.3
    region = rng.random((3, 3, 4)) < 0.8
    ensemble = ENSEMBLES[ens] if m == 2 else None
    check_against_oracle(cams, gt, np.asarray(grid), ensemble, metric, [2, 1, 2], region)


@pytest.mark.parametrize("ens", sorted(ENSEMBLES))
@pytest.mark.parametrize("metric", ["paper_miou", "dice_volume"])
def test_fine_grid_005_matches_oracle(ens: str, metric: str) -> None:
    rng = np.random.default_rng(7)
    cams = random_cams(rng, (2, 4, 3, 3), np.float32)
    gt = rng.random((4, 3, 3)) < 0.3
    region = rng.random((4, 3, 3)) < 0.8
    check_against_oracle(cams, gt, threshold_grid(0.05), ENSEMBLES[ens], metric,
                         ["a", "b", "a", "c"], region)


@pytest.mark.parametrize("ens", [None, "vote", "bigger", "mean"])
def test_fine_grid_001_matches_oracle(ens: str | None) -> None:
    rng = np.random.default_rng(11)
    m = 1 if ens is None else 2
    cams = np.round(rng.random((m, 2, 3, 3)), 2)  # on the grid
    cams[:, 1] = rng.random((m, 3, 3))
    gt = rng.random((2, 3, 3)) < 0.4
    ensemble = None if ens is None else ENSEMBLES[ens]
    check_against_oracle(cams, gt, threshold_grid(0.01), ensemble, "dice_slice", None, None)


@pytest.mark.parametrize("ens", ["and", "or", "vote", "smaller", "bigger", "mean", "xor"])
def test_chunking_gives_same_result(monkeypatch: pytest.MonkeyPatch, ens: str) -> None:
    rng = np.random.default_rng(5)
    cams = random_cams(rng, (2, 9, 6, 5), np.float32)
    gt = rng.random((9, 6, 5)) < 0.3
    region = rng.random((9, 6, 5)) < 0.8
    ids = rng.integers(0, 3, 9)  # cases interleaved: slices are gathered by case
    for metric in METRIC_NAMES:
        kwargs = dict(ensemble=ENSEMBLES[ens], metric=metric, case_ids=ids, region=region)
        whole = grid_search(cams, gt, **kwargs)
        for chunk, block in ((1, 1), (4000, 70), (30000, 10**6)):
            monkeypatch.setattr(calibration, "_CHUNK_BYTES", chunk)
            monkeypatch.setattr(calibration, "_BLOCK_PIXELS", block)  # 1: one slice a block
            chunked = grid_search(cams, gt, **kwargs)
            monkeypatch.undo()
            np.testing.assert_allclose(chunked.scores, whole.scores, rtol=0, atol=1e-12)
            assert chunked.index == whole.index


def test_ties_pick_lowest_index() -> None:
    gt = np.zeros((3, 4, 4), dtype=bool)
    gt[0, 1:3, 1:3] = True
    cams = np.zeros((2, 3, 4, 4))  # every threshold gives the same empty mask
    for ens in ("and", "or", "smaller", "bigger", "xor"):
        for metric in METRIC_NAMES:
            res = grid_search(cams, gt, ensemble=ENSEMBLES[ens], metric=metric)
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


def test_slice_rule_ties_take_first_backbone() -> None:
    # equal areas, different masks: "smaller" and "bigger" both take backbone 0's mask
    gt = np.array([[[True, False]]])
    cams = np.array([[[[0.9, 0.0]]], [[[0.0, 0.9]]]])
    for ens in (Smaller(), Bigger()):
        res = grid_search(cams, gt, ensemble=ens, thresholds=threshold_grid(0.5))
        assert res.scores[0, 0] == 1.0 and res.index == (0, 0)
        assert binarize(cams, [0.0, 0.0], ens).tolist() == [[[True, False]]]


def test_strict_threshold() -> None:
    cams = np.full((1, 1, 2, 2), 0.5)
    assert not binarize(cams, [0.5]).any()
    assert binarize(cams, [0.4999]).all()
    assert not binarize(np.ones((1, 2, 2)), [1.0]).any()  # t = 1.0 is the empty mask
    # float32 CAMs are compared exactly: float32(0.1) > 0.1 in exact arithmetic
    c32 = np.full((1, 1, 1, 1), 0.1, dtype=np.float32)
    assert binarize(c32, [0.1]).all() == (float(np.float32(0.1)) > 0.1)
    # and so does grid_search: float32(0.1) is above t = 0.1, float32(0.7) below t = 0.7
    assert float(np.float32(0.1)) > 0.1 and float(np.float32(0.7)) < 0.7
    gt = np.ones((1, 1, 2), dtype=bool)
    c = np.array([[[0.1, 0.7]]], dtype=np.float32)
    res = grid_search(c, gt, metric="dice_pooled")
    assert res.scores[1] == 1.0 and res.scores[6] == pytest.approx(2 / 3)
    assert res.scores[7] == 0.0


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
    # ensembles see the region-zeroed masks (or CAMs) of every backbone
    both = np.ones((2, 2, 4, 4))
    for ens in ("or", "and", "smaller", "mean", "xor"):
        t = [0.0] if ens == "mean" else [0.0, 0.0]
        want = np.zeros_like(region) if ens == "xor" else region
        np.testing.assert_array_equal(binarize(both, t, ENSEMBLES[ens], region), want)
    res = grid_search(both, gt, ensemble=Mean(), region=region)
    assert res.index == (0,) and res.score == 1.0
    # a negative threshold puts the zeroed pixels above it
    res = grid_search(cams, gt, thresholds=[-0.5, 0.5], region=region)
    assert res.index == (1,) and res.scores[0] < 1.0


def test_fuse_ensemble_has_one_threshold() -> None:
    rng = np.random.default_rng(4)
    cams = rng.random((3, 4, 5, 5))
    gt = rng.random((4, 5, 5)) < 0.3
    res = grid_search(cams, gt, ensemble=Mean())
    assert len(res.thresholds) == 1 and res.scores.shape == (11,)
    single = grid_search(cams.mean(axis=0), gt)
    np.testing.assert_allclose(res.scores, single.scores, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(binarize(cams, res.thresholds, Mean()),
                                  cams.mean(axis=0) > res.thresholds[0])
    # M thresholds: the mask contract (combine), not the fused map
    np.testing.assert_array_equal(binarize(cams, [0.5] * 3, Mean()),
                                  Mean().combine(cams > 0.5))


def test_ensemble_by_name() -> None:
    rng = np.random.default_rng(8)
    cams = random_cams(rng, (2, 4, 6, 6), np.float32)
    gt = rng.random((4, 6, 6)) < 0.3
    for name in ("and", "smaller", "mean"):
        by_name = grid_search(cams, gt, ensemble=name, metric="dice_slice")
        by_obj = grid_search(cams, gt, ensemble=ENSEMBLES[name], metric="dice_slice")
        assert by_name.index == by_obj.index
        np.testing.assert_array_equal(by_name.scores, by_obj.scores)
        np.testing.assert_array_equal(binarize(cams, by_name.thresholds, name),
                                      binarize(cams, by_obj.thresholds, ENSEMBLES[name]))
    with pytest.raises(UsageError, match="no-such-ensemble"):
        grid_search(cams, gt, ensemble="no-such-ensemble")


def test_large_grid_on_many_slices_is_quick_and_bounded() -> None:
    rng = np.random.default_rng(9)
    n = 2000
    cams = rng.random((2, n, 32, 32), dtype=np.float32)
    gt = rng.random((n, 32, 32)) < 0.05
    ids = np.repeat(np.arange(40), n // 40)
    grid = threshold_grid(0.01)
    tracemalloc.start()
    try:
        for ens, metric in (("and", "dice_slice"), ("smaller", "dice_volume"),
                            ("or", "paper_miou")):
            res = grid_search(cams, gt, ensemble=ENSEMBLES[ens], thresholds=grid,
                              metric=metric, case_ids=ids)
            assert res.scores.shape == (101, 101)
            assert np.isfinite(res.scores).all()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 512 * 2**20, f"peak {peak / 2**20:.0f} MiB"


def test_rule_validation() -> None:
    cams = np.zeros((2, 1, 2, 2))
    gt = np.zeros((1, 2, 2), dtype=bool)

    class BadSlice(NoRule):
        name = "bad-slice"
        slice_rule = "median"

        def combine(self, masks):
            return masks[0]

    class BadPixel(NoRule):
        name = "bad-pixel"

        def pixel_rule(self, m):  # a method, not a declared str
            return 1

        def combine(self, masks):
            return masks[0]

    with pytest.raises(ValueError, match="slice_rule"):
        grid_search(cams, gt, ensemble=BadSlice())
    with pytest.raises(ValueError, match="pixel_rule"):
        grid_search(cams, gt, ensemble=BadPixel())
    with pytest.raises(ValueError, match="combine"):
        grid_search(cams, gt, ensemble=object())

    class Undeclared:  # combine() but none of the declared attributes
        name = "undeclared"

        def combine(self, masks):
            return masks[0]

    with pytest.raises(ValueError, match="'undeclared'.*missing declared attribute `fuses`"):
        grid_search(cams, gt, ensemble=Undeclared())
    with pytest.raises(ValueError, match="pixel_rule"):
        binarize(cams, [0.5, 0.5], ensemble=BadPixel())


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
    with pytest.raises(ValueError, match="thresholds"):
        grid_search(cams, gt, ensemble=And(), thresholds=[0.1, np.nan])
    with pytest.raises(ValueError, match="NaN"):
        grid_search(np.full((1, 3, 3), np.nan), gt)
    with pytest.raises(ValueError, match="zero slices"):
        grid_search(np.zeros((0, 3, 3)), np.zeros((0, 3, 3), dtype=bool))


def test_torch_input() -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    cams = rng.random((2, 3, 5, 5)).astype(np.float32)
    gt = rng.random((3, 5, 5)) < 0.3
    region = rng.random((3, 5, 5)) < 0.8
    for ens in (And(), Smaller(), Mean()):
        want = grid_search(cams, gt, ensemble=ens, region=region, case_ids=[0, 1, 1],
                           metric="dice_volume")
        got = grid_search(
            torch.from_numpy(cams),
            torch.from_numpy(gt),
            ensemble=ens,
            region=torch.from_numpy(region),
            case_ids=torch.tensor([0, 1, 1]),
            metric="dice_volume",
        )
        assert got.index == want.index
        np.testing.assert_array_equal(got.scores, want.scores)
    np.testing.assert_array_equal(
        binarize(torch.from_numpy(cams), [0.3, 0.6], And()), binarize(cams, [0.3, 0.6], And())
    )
