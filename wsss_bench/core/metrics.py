"""Segmentation metrics from per-slice confusion counts.

Every metric is computed from int64 confusion counts ``(tp, fp, fn, tn)`` per slice (or per
group of slices), so that scores of many candidate predictions (calibration: every point of a
threshold grid at once, from one pass of counts) and of whole folds are cheap and exact.
Names (used verbatim in code, JSON and leaderboards):

- ``paper_miou``: counts pooled over all slices; mean of background IoU ``tn/(tn+fp+fn)`` and
  foreground IoU ``tp/(tp+fp+fn)`` (the paper's SEAM/PuzzleCAM evaluation).
- ``paper_dsc``: ``2m/(1+m)`` of ``m = paper_miou`` (the paper's "DSC" column; not a Dice).
- ``dice_pooled``: foreground Dice ``2tp/(2tp+fp+fn)`` of the pooled counts.
- ``dice_slice``: mean over slices of the per-slice foreground Dice.
- ``dice_volume``: mean over cases of the Dice of each case's summed counts.

Empty against empty is perfect agreement: a Dice or IoU whose denominator is 0 is 1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METRIC_NAMES = ("paper_miou", "paper_dsc", "dice_pooled", "dice_slice", "dice_volume")

_POOLED = ("paper_miou", "paper_dsc", "dice_pooled")


def to_numpy(x: Any) -> np.ndarray:
    """Return ``x`` as a NumPy array; torch tensors are detached and moved to the CPU."""
    if hasattr(x, "detach"):
        x = x.detach().cpu()
        if str(getattr(x, "dtype", "")) == "torch.bfloat16":  # NumPy has no bfloat16
            x = x.float()
    return np.asarray(x)


def _as_bool(x: Any) -> np.ndarray:
    a = to_numpy(x)
    return a if a.dtype == np.bool_ else a != 0


def slice_counts(pred: Any, gt: Any) -> np.ndarray:
    """Per-slice confusion counts ``int64[N,4]`` with columns (tp, fp, fn, tn).

    ``pred`` and ``gt`` are bool[N,H,W] (non-bool arrays count as ``!= 0``).
    """
    p, g = _as_bool(pred), _as_bool(gt)
    if p.shape != g.shape or p.ndim != 3:
        raise ValueError(
            f"pred and gt must be bool[N,H,W] of the same shape, got pred {p.shape} and "
            f"gt {g.shape}"
        )
    return _counts(p, g, np.count_nonzero(g, axis=(1, 2)))


def _counts(pred: np.ndarray, gt: np.ndarray, gt_count: np.ndarray) -> np.ndarray:
    """Counts of bool[N,H,W] ``pred`` against ``gt`` given ``gt``'s per-slice positives."""
    _, h, w = pred.shape
    tp = np.count_nonzero(pred & gt, axis=(1, 2))
    return confusion(tp, np.count_nonzero(pred, axis=(1, 2)), gt_count, h * w)


def confusion(tp: Any, predicted: Any, positives: Any, pixels: Any) -> np.ndarray:
    """Confusion counts ``int64[...,4]`` (tp, fp, fn, tn) from true positives, predicted
    positives, ground-truth positives and pixel counts (broadcast against each other)."""
    tp, pp, pos, tot = (np.asarray(x, dtype=np.int64) for x in (tp, predicted, positives, pixels))
    out = np.empty(np.broadcast_shapes(tp.shape, pp.shape, pos.shape, tot.shape) + (4,), np.int64)
    out[..., 0] = tp
    np.subtract(pp, tp, out=out[..., 1])
    np.subtract(pos, tp, out=out[..., 2])
    np.subtract(tot - pp, out[..., 2], out=out[..., 3])
    return out


def foreground_dice(counts: np.ndarray) -> np.ndarray:
    """Foreground Dice ``2tp/(2tp+fp+fn)`` of counts ``[...,4]``; 1 where the denominator is 0."""
    c = np.asarray(counts, dtype=np.int64)
    num = 2 * c[..., 0]
    den = num + c[..., 1] + c[..., 2]
    return np.divide(num, den, out=np.ones(den.shape), where=den != 0)


def dice_sum(counts: np.ndarray) -> np.ndarray:
    """Sum of the foreground Dice over axis 1 of counts ``[K,C,4]`` -> float64[K]."""
    return foreground_dice(counts).sum(axis=1)


def _iou(inter: np.ndarray, union: np.ndarray) -> np.ndarray:
    return np.divide(inter, union, out=np.ones(union.shape), where=union != 0)


def case_indices(case_ids: Any, n: int) -> np.ndarray:
    """Map ``n`` case ids (any sortable values; None = one case) to ints ``0..C-1``."""
    if case_ids is None:
        return np.zeros(n, dtype=np.int64)
    ids = to_numpy(case_ids)
    if ids.shape != (n,):
        raise ValueError(f"case_ids must have shape ({n},), got {ids.shape}")
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    return np.unique(ids, return_inverse=True)[1].reshape(n).astype(np.int64)


def _case_sums(counts: np.ndarray, case_index: np.ndarray) -> np.ndarray:
    """Sum counts ``[K,N,4]`` over the slices of each case present -> ``[K,C,4]``."""
    _, inv = np.unique(case_index, return_inverse=True)
    inv = inv.reshape(-1)
    order = np.argsort(inv, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(inv[order]) != 0])
    return np.add.reduceat(counts[:, order], starts, axis=1)


def metric_values(counts: Any, name: str, case_index: Any = None) -> np.ndarray:
    """Evaluate metric ``name`` for K candidate predictions at once.

    ``counts`` is int64[K,N,4] (per-slice (tp, fp, fn, tn) of each candidate); ``case_index``
    is int[N], the case number of each slice (None = all one case). Cases are the distinct
    values of ``case_index``. Returns float64[K].
    """
    c = to_numpy(counts)
    if c.ndim != 3 or c.shape[2] != 4:
        raise ValueError(f"counts must be [K,N,4], got shape {c.shape}")
    if not np.issubdtype(c.dtype, np.integer):
        raise ValueError(f"counts must be integers, got {c.dtype}")
    c = c.astype(np.int64, copy=False)
    k, n, _ = c.shape
    if n == 0:
        raise ValueError("cannot score zero slices")
    if name in _POOLED:
        tp, fp, fn, tn = np.moveaxis(c.sum(axis=1, dtype=np.int64), -1, 0)
        if name == "dice_pooled":
            return foreground_dice(np.stack([tp, fp, fn], axis=-1))
        miou = (_iou(tn, tn + fp + fn) + _iou(tp, tp + fp + fn)) / 2.0
        return miou if name == "paper_miou" else 2.0 * miou / (1.0 + miou)
    if name == "dice_slice":
        return dice_sum(c) / n
    if name == "dice_volume":
        if case_index is None:
            per_case = c.sum(axis=1, dtype=np.int64)[:, None, :]
        else:
            idx = to_numpy(case_index)
            if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
                raise ValueError(f"case_index must be int[{n}], got {idx.dtype}{list(idx.shape)}")
            per_case = _case_sums(c, idx)
        return dice_sum(per_case) / per_case.shape[1]
    raise ValueError(f"unknown metric {name!r}; expected one of {METRIC_NAMES}")


def metrics_from_counts(counts: Any, case_ids: Any = None) -> dict[str, float]:
    """All five metrics (``METRIC_NAMES``) from per-slice counts ``int64[N,4]``.

    ``case_ids`` (length N, or None = one case) groups slices into cases for ``dice_volume``.
    Computed through the per-case table (:func:`case_table`), so that the metrics of a fold
    equal, bit for bit, those recomputed from its stored per-case results.
    """
    return metrics_of_cases(case_table(counts, case_ids))


def score(pred: Any, gt: Any, case_ids: Any = None) -> dict[str, float]:
    """All five metrics of bool[N,H,W] ``pred`` against ``gt`` (slices grouped by ``case_ids``)."""
    return metrics_from_counts(slice_counts(pred, gt), case_ids)


# ---- per-case results: every metric of any multiset of cases, exactly ----------------------

CASE_FIELDS = ("ids", "counts", "slices", "dice_slice_sum")


def case_table(counts: Any, case_ids: Any = None) -> dict[str, list]:
    """Per-case results of per-slice counts ``int64[N,4]`` (slices grouped by ``case_ids``;
    None = one case ``""``), in sorted case order: ``ids``; ``counts`` (the case's summed
    (tp, fp, fn, tn), int64); ``slices`` (its number of slices); ``dice_slice_sum`` (the sum
    of its slices' foreground Dice, float64). :func:`metrics_of_cases` computes all five
    metrics of any multiset of cases from them; of all the cases, they are the fold's metrics.
    Plain lists, ready for JSON (floats round-trip exactly)."""
    c = to_numpy(counts).astype(np.int64, copy=False)
    if c.ndim != 2 or c.shape[1] != 4:
        raise ValueError(f"counts must be [N,4], got shape {c.shape}")
    n = c.shape[0]
    if case_ids is None:
        ids, inv = np.array([""]), np.zeros(n, dtype=np.int64)
    else:
        raw = to_numpy(case_ids)
        if raw.shape != (n,):
            raise ValueError(f"case_ids must have shape ({n},), got {raw.shape}")
        ids, inv = np.unique(raw, return_inverse=True)  # the order metric_values uses
        inv = inv.reshape(n)
    k = len(ids)
    summed = np.zeros((k, 4), dtype=np.int64)
    np.add.at(summed, inv, c)
    dice = foreground_dice(c)
    dice_sum = np.array([dice[inv == i].sum() for i in range(k)], dtype=np.float64)
    return {"ids": [str(i) for i in ids], "counts": summed.tolist(),
            "slices": np.bincount(inv, minlength=k).astype(np.int64).tolist(),
            "dice_slice_sum": [float(v) for v in dice_sum]}


def case_problem(table: Any) -> str | None:
    """What is wrong with a per-case table (a phrase), or None when it is well formed."""
    if not isinstance(table, dict) or any(f not in table for f in CASE_FIELDS):
        return f"a per-case table needs the fields {', '.join(CASE_FIELDS)}"
    if not all(isinstance(table[f], list) for f in CASE_FIELDS):
        return f"its fields {', '.join(CASE_FIELDS)} must be lists"
    lengths = {len(table[f]) for f in CASE_FIELDS}
    if len(lengths) != 1 or not table["ids"]:
        return "its fields have different lengths or no cases"
    try:
        counts = np.asarray(table["counts"])
        slices = np.asarray(table["slices"])
        dice_sum = np.asarray(table["dice_slice_sum"])
    except (ValueError, TypeError):
        return "its counts, slices or Dice sums are ragged"
    if counts.shape != (len(table["ids"]), 4) or not _integers(counts):
        return "its counts are not int[cases,4]"
    if not _integers(slices) or dice_sum.dtype.kind not in "if":
        return "its slices are not integers or its Dice sums not numbers"
    if (counts < 0).any() or (slices < 1).any():
        return "it has negative counts or a case without slices"
    if not (np.isfinite(dice_sum) & (dice_sum >= 0) & (dice_sum <= slices)).all():
        return "a case's Dice sum is not between 0 and its number of slices"
    return None


def _integers(a: np.ndarray) -> bool:
    return np.issubdtype(a.dtype, np.integer) and a.dtype != np.bool_


def metrics_of_cases(table: dict[str, list], weights: Any = None) -> dict[str, float]:
    """All five metrics (``METRIC_NAMES``) of a multiset of the cases of ``table``
    (:func:`case_table`): ``weights[c]`` copies of case ``c`` (None = each case once, which
    gives the metrics of the slices the table was made from)."""
    counts = np.asarray(table["counts"], dtype=np.int64)
    slices = np.asarray(table["slices"], dtype=np.int64)
    dice_sum = np.asarray(table["dice_slice_sum"], dtype=np.float64)
    if weights is None:
        pooled, n, total = counts.sum(axis=0), slices.sum(), dice_sum.sum()
        volume, cases = foreground_dice(counts).sum(), len(slices)
    else:
        w = np.asarray(weights, dtype=np.int64)
        pooled, n = (w[:, None] * counts).sum(axis=0), (w * slices).sum()
        total, volume = (w * dice_sum).sum(), (w * foreground_dice(counts)).sum()
        cases = int(w.sum())
    tp, fp, fn, tn = (int(v) for v in pooled)
    miou = float((_iou(np.asarray(tn), np.asarray(tn + fp + fn))
                  + _iou(np.asarray(tp), np.asarray(tp + fp + fn))) / 2.0)
    return {"paper_miou": miou, "paper_dsc": 2.0 * miou / (1.0 + miou),
            "dice_pooled": float(foreground_dice(np.asarray([tp, fp, fn]))),
            "dice_slice": float(total / n), "dice_volume": float(volume / cases)}
