"""The naive reference for threshold calibration: binarize at every grid point and score.

Written to be obviously right, not fast: for every threshold tuple (``itertools.product``)
each CAM is binarized with ``>`` in float64, the masks are combined with ``ensemble.combine``
(or the fused CAM of a ``fuse`` ensemble is thresholded) and scored with ``metrics.score``.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np

from wsss_bench.core import metrics


def oracle_grid_search(
    cams: Any,
    gt: Any,
    grid: Any,
    ensemble: Any = None,
    metric: str = "paper_miou",
    case_ids: Any = None,
    region: Any = None,
) -> tuple[tuple[int, ...], float, np.ndarray]:
    """(index of the first strict maximum in C order, its score, all scores) of the grid."""
    c = np.asarray(cams, dtype=np.float64)
    if c.ndim == 3:
        c = c[None]
    if region is not None:
        c = np.where(np.asarray(region, dtype=bool)[None], c, 0.0)
    if c.shape[0] >= 2 and ensemble.fuses:
        c = np.asarray(ensemble.fuse(c), dtype=np.float64)[None]  # one map, one threshold
    grid = np.asarray(grid, dtype=np.float64)
    m = c.shape[0]
    scores = np.empty((len(grid),) * m)
    best, best_idx = -np.inf, None
    for idx in itertools.product(range(len(grid)), repeat=m):
        masks = np.stack([c[j] > grid[i] for j, i in enumerate(idx)])
        pred = masks[0] if m == 1 else ensemble.combine(masks)
        s = metrics.score(pred, gt, case_ids)[metric]
        scores[idx] = s
        if s > best:
            best, best_idx = s, idx
    assert best_idx is not None
    return best_idx, float(best), scores
