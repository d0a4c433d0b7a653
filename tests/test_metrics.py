"""Metrics: hand-computed examples, conventions, overflow, and the real-data sanity check."""

from __future__ import annotations

import json
from fractions import Fraction as F
from pathlib import Path

import numpy as np
import pytest

from wsss_bench.core import metrics
from wsss_bench.core.metrics import (
    METRIC_NAMES,
    metric_values,
    metrics_from_counts,
    score,
    slice_counts,
)


def b(rows: list) -> np.ndarray:
    return np.array(rows, dtype=bool)


def assert_metrics(got: dict[str, float], want: dict[str, F]) -> None:
    assert set(got) == set(METRIC_NAMES)
    for name, value in want.items():
        assert isinstance(got[name], float), name
        assert got[name] == pytest.approx(float(value), abs=1e-12), name


def test_metric_names() -> None:
    assert METRIC_NAMES == ("paper_miou", "paper_dsc", "dice_pooled", "dice_slice", "dice_volume")


def test_slice_counts_columns() -> None:
    gt = b([[[1, 1, 0], [0, 0, 0]], [[0, 0, 0], [0, 0, 0]]])
    pred = b([[[1, 0, 1], [0, 0, 0]], [[1, 1, 1], [1, 0, 0]]])
    c = slice_counts(pred, gt)
    assert c.dtype == np.int64 and c.shape == (2, 4)
    # slice 0: tp 1, fp 1 (0,2), fn 1 (0,1), tn 3; slice 1: fp 4, tn 2
    assert c.tolist() == [[1, 1, 1, 3], [0, 4, 0, 2]]


def test_single_slice_by_hand() -> None:
    gt = b([[[1, 1, 0], [0, 0, 0]]])
    pred = b([[[1, 0, 1], [0, 0, 0]]])
    # tp=1 fp=1 fn=1 tn=3
    # fg IoU = 1/3, bg IoU = 3/5 -> miou = (1/3 + 3/5)/2 = 7/15
    # dsc = 2(7/15)/(1 + 7/15) = 14/22 = 7/11; Dice = 2/(2+1+1) = 1/2 for all three Dice
    assert_metrics(
        score(pred, gt),
        {
            "paper_miou": F(7, 15),
            "paper_dsc": F(7, 11),
            "dice_pooled": F(1, 2),
            "dice_slice": F(1, 2),
            "dice_volume": F(1, 2),
        },
    )


# three 2x2 slices:
#   s0: gt empty, pred empty            -> tp0 fp0 fn0 tn4, Dice 1 (empty vs empty)
#   s1: gt [[1,1],[0,0]] pred [[1,0],[0,0]] -> tp1 fp0 fn1 tn2, Dice 2/3
#   s2: gt [[1,0],[0,0]] pred [[0,0],[0,1]] -> tp0 fp1 fn1 tn2, Dice 0
GT3 = b([[[0, 0], [0, 0]], [[1, 1], [0, 0]], [[1, 0], [0, 0]]])
PRED3 = b([[[0, 0], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 1]]])


def test_three_slices_by_hand() -> None:
    # pooled: tp1 fp1 fn2 tn8; fg IoU 1/4, bg IoU 8/11 -> miou (11/44 + 32/44)/2 = 43/88
    # dsc = (86/88)/(131/88) = 86/131; dice_pooled = 2/(2+1+2) = 2/5
    # dice_slice = (1 + 2/3 + 0)/3 = 5/9
    # dice_volume with cases a,b,b: a -> 1, b (tp1 fp1 fn2) -> 2/5; mean 7/10
    got = score(PRED3, GT3, ["a", "b", "b"])
    assert_metrics(
        got,
        {
            "paper_miou": F(43, 88),
            "paper_dsc": F(86, 131),
            "dice_pooled": F(2, 5),
            "dice_slice": F(5, 9),
            "dice_volume": F(7, 10),
        },
    )
    assert got["dice_slice"] != pytest.approx(got["dice_volume"])


def test_dice_volume_groups_by_case() -> None:
    # cases a,a,b: a (tp1 fp0 fn1) -> 2/3, b (tp0 fp1 fn1) -> 0; mean 1/3
    assert score(PRED3, GT3, [7, 7, 3])["dice_volume"] == pytest.approx(1 / 3, abs=1e-12)
    # one case (None) is the pooled Dice, 2/5; one slice per case is dice_slice, 5/9
    assert score(PRED3, GT3)["dice_volume"] == pytest.approx(2 / 5, abs=1e-12)
    assert score(PRED3, GT3, ["x", "y", "z"])["dice_volume"] == pytest.approx(5 / 9, abs=1e-12)
    # case ids need not be contiguous: b,a,b groups s0+s2 (tp0 fp1 fn1 -> 0) and s1 (2/3)
    assert score(PRED3, GT3, ["b", "a", "b"])["dice_volume"] == pytest.approx(1 / 3, abs=1e-12)


def test_empty_vs_empty_slice_is_one_and_missed_slice_is_zero() -> None:
    gt = b([[[0, 0], [0, 0]], [[0, 1], [0, 0]]])
    pred = np.zeros_like(gt)
    got = score(pred, gt, ["p", "q"])
    # s0 Dice 1 (empty vs empty), s1 Dice 0 (gt but no prediction)
    assert got["dice_slice"] == 0.5
    assert got["dice_volume"] == 0.5
    assert got["dice_pooled"] == 0.0
    assert score(pred[:1], gt[:1])["dice_slice"] == 1.0
    assert score(pred[1:], gt[1:])["dice_slice"] == 0.0


def test_perfect_prediction_scores_one() -> None:
    rng = np.random.default_rng(0)
    gt = rng.random((4, 8, 8)) < 0.3
    gt[0] = False
    assert all(v == 1.0 for v in score(gt.copy(), gt, [0, 0, 1, 2]).values())


def test_empty_union_iou_is_one() -> None:
    empty = np.zeros((2, 3, 3), dtype=bool)
    # fg union empty -> IoU 1; bg IoU 18/18 -> miou 1
    assert all(v == 1.0 for v in score(empty, empty).values())
    full = np.ones((2, 3, 3), dtype=bool)
    # bg union empty -> IoU 1; fg IoU 1
    assert all(v == 1.0 for v in score(full, full).values())
    # all-lesion gt, empty pred: fg IoU 0/18, bg IoU 0/18 (not the empty-union case)
    assert score(empty, full)["paper_miou"] == 0.0


def test_empty_prediction_paper_dsc_formula_random() -> None:
    rng = np.random.default_rng(1)
    gt = rng.random((7, 16, 12)) < 0.15
    g = gt.mean()
    got = score(np.zeros_like(gt), gt)
    assert got["paper_dsc"] == pytest.approx(2 * (1 - g) / (3 - g), abs=1e-12)
    assert got["paper_miou"] == pytest.approx((1 - g) / 2, abs=1e-12)


def test_large_counts_do_not_overflow() -> None:
    counts = np.array([[3_000_000_000, 1_000_000_000, 2_000_000_000, 4_000_000_000]] * 2)
    counts = counts.astype(np.int64)
    # pooled tp 6e9 fp 2e9 fn 4e9 tn 8e9: fg IoU 6/12 = 1/2, bg IoU 8/14 = 4/7
    # miou = (1/2 + 4/7)/2 = 15/28, dsc = (30/28)/(43/28) = 30/43
    # Dice: pooled 12/(12+6) = 2/3, each slice 6/(6+3) = 2/3
    assert_metrics(
        metrics_from_counts(counts, ["a", "b"]),
        {
            "paper_miou": F(15, 28),
            "paper_dsc": F(30, 43),
            "dice_pooled": F(2, 3),
            "dice_slice": F(2, 3),
            "dice_volume": F(2, 3),
        },
    )


def test_metric_values_vectorized_matches_per_candidate() -> None:
    rng = np.random.default_rng(2)
    gt = rng.random((6, 5, 5)) < 0.3
    preds = rng.random((4, 6, 5, 5)) < 0.3
    preds[1] = False
    cases = np.array([0, 0, 1, 2, 2, 2])
    counts = np.stack([slice_counts(p, gt) for p in preds])
    for name in METRIC_NAMES:
        got = metric_values(counts, name, cases)
        want = [score(p, gt, cases)[name] for p in preds]
        assert got.shape == (4,)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="unknown metric"):
        metric_values(counts, "dice", cases)


def test_confusion_from_counts_broadcasts() -> None:
    # tp, predicted positives, gt positives, pixels -> (tp, fp, fn, tn)
    got = metrics.confusion(np.array([[1, 2], [0, 3]]), np.array([[2, 2], [4, 3]]),
                            np.array([3, 5]), 10)
    assert got.dtype == np.int64 and got.shape == (2, 2, 4)
    assert got.tolist() == [[[1, 1, 2, 6], [2, 0, 3, 5]], [[0, 4, 3, 3], [3, 0, 2, 5]]]
    # the same as counting masks
    rng = np.random.default_rng(4)
    gt, pred = rng.random((2, 5, 6, 7)) < 0.4
    tp = np.count_nonzero(pred & gt, axis=(1, 2))
    want = slice_counts(pred, gt)
    assert (metrics.confusion(tp, pred.sum(axis=(1, 2)), gt.sum(axis=(1, 2)), 42) == want).all()


def test_dice_sum_is_the_unnormalised_mean() -> None:
    counts = np.stack([slice_counts(PRED3, GT3), slice_counts(GT3, GT3)])  # [2, 3, 4]
    np.testing.assert_allclose(metrics.dice_sum(counts), [5 / 3, 3.0], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(metrics.dice_sum(counts) / 3,
                                  metric_values(counts, "dice_slice"))


def test_shape_mismatch_raises() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3, 3\).*\(2, 3, 4\)"):
        score(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 4), bool))
    with pytest.raises(ValueError):
        score(np.zeros((3, 3), bool), np.zeros((3, 3), bool))
    with pytest.raises(ValueError, match="case_ids"):
        score(np.zeros((2, 3, 3), bool), np.zeros((2, 3, 3), bool), ["a"])
    with pytest.raises(ValueError):
        metrics_from_counts(np.zeros((2, 3), np.int64))


def test_torch_input() -> None:
    torch = pytest.importorskip("torch")
    want = score(PRED3, GT3, ["a", "b", "b"])
    assert score(torch.from_numpy(PRED3), torch.from_numpy(GT3), ["a", "b", "b"]) == want


def _load_brats_whole_tumour(brats_sample: Path) -> tuple[np.ndarray, np.ndarray]:
    nib = pytest.importorskip("nibabel")
    cases = sorted(p for p in brats_sample.iterdir() if p.is_dir())
    assert len(cases) == 6
    masks, ids = [], []
    for case in cases:
        seg = np.asanyarray(nib.load(case / f"{case.name}_seg.nii.gz").dataobj)
        wt = np.moveaxis(seg > 0, -1, 0)  # axial slices: [155, 240, 240]
        assert wt.shape[1:] == (240, 240)
        masks.append(wt)
        ids += [case.name] * wt.shape[0]
    return np.concatenate(masks), np.array(ids)


def test_real_brats_empty_prediction_paper_dsc(brats_sample: Path) -> None:
    gt, ids = _load_brats_whole_tumour(brats_sample)
    g = np.count_nonzero(gt) / gt.size
    assert 0.005 < g < 0.03
    got = score(np.zeros_like(gt), gt, ids)
    assert abs(got["paper_dsc"] - 2 * (1 - g) / (3 - g)) < 1e-12
    assert got["dice_pooled"] == 0.0 and got["dice_volume"] == 0.0
    # dice_slice of an empty prediction = fraction of slices without lesion
    assert got["dice_slice"] == pytest.approx(np.mean(~gt.any(axis=(1, 2))), abs=1e-12)
    assert 0.0 < got["dice_slice"] < 1.0
    assert metrics.slice_counts(np.zeros_like(gt), gt).sum() == gt.size


def test_real_brats_per_case_tables_reproduce_every_metric(brats_sample: Path) -> None:
    """On the six real BraTS cases, with a prediction that overlaps the tumour in part: the
    per-case table gives the fold's metrics bit for bit, each case alone equals scoring its
    slices alone, and a multiset of cases equals its slices repeated."""
    gt, ids = _load_brats_whole_tumour(brats_sample)
    pred = np.roll(gt, 3, axis=2) | (np.arange(gt.shape[1])[None, :, None] % 17 == 0)
    table = metrics.case_table(metrics.slice_counts(pred, gt), ids)
    assert metrics.case_problem(table) is None and len(table["ids"]) == 6
    assert metrics.metrics_of_cases(table) == score(pred, gt, ids)
    assert json.loads(json.dumps(table)) == table
    weights = np.array([2, 0, 1, 3, 1, 0])
    picks = np.concatenate([np.flatnonzero(ids == c) for c, w in zip(table["ids"], weights,
                                                                      strict=True)
                            for _ in range(w)])
    repeated_ids = np.concatenate([np.full((ids == c).sum(), f"{c}#{k}")
                                   for c, w in zip(table["ids"], weights, strict=True)
                                   for k in range(w)])
    want = score(pred[picks], gt[picks], repeated_ids)
    got = metrics.metrics_of_cases(table, weights)
    for name in metrics.METRIC_NAMES:
        assert got[name] == pytest.approx(want[name], abs=1e-12), name
    for i, case in enumerate(table["ids"]):
        alone = metrics.metrics_of_cases(table, np.eye(6, dtype=int)[i])
        mine = ids == case
        assert alone == pytest.approx(score(pred[mine], gt[mine], ids[mine]), abs=1e-12)
