"""Threshold calibration: pick one CAM threshold per backbone on a grid.

A pixel is positive iff ``cam > t`` (strict; compared exactly, in float64), so ``t = 1.0``
gives an empty mask for CAMs in [0, 1]. CAMs outside a filter's region are zeroed first.
For M >= 2 backbones an ensemble combines the M binary masks. Every point of the product
grid is evaluated exactly and the best score wins; among equal scores the lowest grid index
in C order (first backbone's threshold first) wins.

This is the direct implementation: each CAM is binarized once per grid value and every
combination is combined and counted. Its cost is O(pixels x grid^M).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss_bench.metrics import (
    METRIC_NAMES,
    _as_bool,
    _counts,
    case_indices,
    foreground_dice,
    metric_values,
    to_numpy,
)

# Memory budget (bytes) for the per-chunk binarized masks and float64 CAM copies.
_CHUNK_BYTES = 256 * 2**20


def threshold_grid(step: float = 0.1) -> np.ndarray:
    """The grid ``i/n`` for ``i = 0..n``, ``n = round(1/step)``; always holds 0.0 and 1.0."""
    if not (isinstance(step, (int, float, np.floating)) and 0.0 < step <= 1.0):
        raise ValueError(f"step must be in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(1.0 / step - n) > 1e-9:
        raise ValueError(f"1/step must be an integer, got step={step!r} (1/step = {1.0 / step})")
    return np.arange(n + 1, dtype=np.float64) / n


@dataclass(frozen=True)
class GridResult:
    """The chosen thresholds (one per backbone), their grid indices, the best score and all
    scores (one axis per backbone over the grid, shape ``(G,)*M``)."""

    thresholds: tuple[float, ...]
    index: tuple[int, ...]
    score: float
    scores: np.ndarray


def _as_cams(cams: Any) -> np.ndarray:
    c = to_numpy(cams)
    if c.ndim == 3:
        c = c[None]
    if c.ndim != 4:
        raise ValueError(f"cams must be float[M,N,H,W] or float[N,H,W], got shape {c.shape}")
    if not (np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
        raise ValueError(f"cams must be real numbers, got {c.dtype}")
    if np.issubdtype(c.dtype, np.floating) and np.isnan(c).any():
        raise ValueError("cams contain NaN")
    return c


def _check_masks(cams: np.ndarray, region: Any, name: str = "region") -> np.ndarray | None:
    if region is None:
        return None
    r = _as_bool(region)
    if r.shape != cams.shape[1:]:
        raise ValueError(f"{name} shape {r.shape} does not match cams {cams.shape} ([M,N,H,W])")
    return r


def _combine(ensemble: Any, masks: np.ndarray) -> np.ndarray:
    out = np.asarray(ensemble.combine(masks))
    if out.shape != masks.shape[1:]:
        raise ValueError(
            f"ensemble {getattr(ensemble, 'name', ensemble)!r} returned shape {out.shape} for "
            f"masks {masks.shape}; expected {masks.shape[1:]}"
        )
    return out if out.dtype == np.bool_ else out != 0


def _positive(cams: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """float64 copy of cams [M,n,H,W] with values outside ``region`` [n,H,W] set to 0."""
    c = np.array(cams, dtype=np.float64)
    if region is not None:
        c[:, ~region] = 0.0
    return c


def binarize(cams: Any, thresholds: Any, ensemble: Any = None, region: Any = None) -> np.ndarray:
    """Binary masks bool[N,H,W] from cams float[M,N,H,W] (or [N,H,W]) and M thresholds.

    Per backbone ``cams[m] > thresholds[m]`` after zeroing cams outside ``region``
    (bool[N,H,W]); M >= 2 masks are combined by ``ensemble.combine``.
    """
    c = _as_cams(cams)
    t = np.atleast_1d(np.asarray(to_numpy(thresholds), dtype=np.float64))
    if t.shape != (c.shape[0],):
        raise ValueError(f"need {c.shape[0]} thresholds (one per backbone), got {t.shape}")
    masks = _positive(c, _check_masks(c, region)) > t[:, None, None, None]
    if c.shape[0] == 1:
        return masks[0]
    if ensemble is None:
        raise ValueError(f"{c.shape[0]} backbones need an ensemble to combine their masks")
    return _combine(ensemble, masks)


def grid_search(
    cams: Any,
    gt: Any,
    *,
    ensemble: Any = None,
    thresholds: Any = None,
    metric: str = "paper_miou",
    case_ids: Any = None,
    region: Any = None,
) -> GridResult:
    """Evaluate every point of the product threshold grid exactly; return the best.

    ``cams`` float[M,N,H,W] (or [N,H,W] for one backbone), ``gt`` bool[N,H,W],
    ``thresholds`` a 1-D grid (default ``threshold_grid(0.1)``), ``metric`` one of
    ``METRIC_NAMES``, ``case_ids`` the case of each slice (for ``dice_volume``), ``region``
    bool[N,H,W] (cams outside it are zeroed). Ties go to the lowest C-order grid index.
    """
    c = _as_cams(cams)
    m, n, h, w = c.shape
    g = _as_bool(gt)
    if g.shape != (n, h, w):
        raise ValueError(f"gt shape {g.shape} does not match cams {c.shape} ([M,N,H,W])")
    reg = _check_masks(c, region)
    grid = threshold_grid(0.1) if thresholds is None else to_numpy(thresholds)
    grid = np.asarray(grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0 or not np.isfinite(grid).all():
        raise ValueError(f"thresholds must be a non-empty finite 1-D grid, got {grid!r}")
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")
    if m >= 2 and ensemble is None:
        raise ValueError(f"{m} backbones need an ensemble to combine their masks")
    if n == 0:
        raise ValueError("cannot calibrate on zero slices")
    case_index = case_indices(case_ids, n)
    n_cases = int(case_index.max()) + 1

    n_grid = grid.size
    combos = list(itertools.product(range(n_grid), repeat=m))
    k = len(combos)
    per_case = np.zeros((n_cases, k, 4), dtype=np.int64)
    dice_sum = np.zeros(k)
    # Per slice: M*G mask bytes, M float64 CAMs, a stacked M-mask copy, the combined mask.
    per_slice = h * w * (m * n_grid + 8 * m + m + 2) + 32 * k
    chunk = max(1, _CHUNK_BYTES // max(per_slice, 1))
    backbones = np.arange(m)
    for start in range(0, n, chunk):
        sl = slice(start, min(n, start + chunk))
        cc = _positive(c[:, sl], None if reg is None else reg[sl])
        masks = cc[:, None] > grid[None, :, None, None, None]  # [M,G,n,H,W]
        del cc
        gt_c = g[sl]
        gt_count = np.count_nonzero(gt_c, axis=(1, 2))
        counts = np.empty((k, gt_c.shape[0], 4), dtype=np.int64)
        for ki, idx in enumerate(combos):
            if m == 1:
                pred = masks[0, idx[0]]
            else:
                pred = _combine(ensemble, masks[backbones, np.asarray(idx)])
            counts[ki] = _counts(pred, gt_c, gt_count)
        np.add.at(per_case, case_index[sl], counts.transpose(1, 0, 2))
        if metric == "dice_slice":
            dice_sum += foreground_dice(counts).sum(axis=1)
    if metric == "dice_slice":
        values = dice_sum / n
    else:
        values = metric_values(per_case.transpose(1, 0, 2), metric, np.arange(n_cases))

    best = int(np.argmax(values))
    index = tuple(int(i) for i in np.unravel_index(best, (n_grid,) * m))
    return GridResult(
        thresholds=tuple(float(grid[i]) for i in index),
        index=index,
        score=float(values[best]),
        scores=values.reshape((n_grid,) * m),
    )
