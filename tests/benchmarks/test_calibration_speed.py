"""Calibration speed: histogram ``grid_search`` vs the naive oracle, 2 backbones, 2,000 slices.

Targets (issue): on 2 backbones × 2,000 slices of 128×128 with an 11×11 threshold grid,
``grid_search`` is at least 20× faster than the naive oracle (binarize at every grid point,
combine, score) for each of the ensembles and / or / smaller / bigger; and ``grid_search`` on
the 101×101 grid (step 0.01) costs at most 2× its 11×11 time.

Everything is measured side by side in one run; the last test of this file checks the ratios
from the medians the benchmarks above it recorded, prints a markdown table (``-s`` shows it)
and writes it to ``$WSSS_BENCH_TABLE`` when that is set. The whole module is skipped unless
benchmarks are enabled (see ``conftest.py``). Run it on an otherwise idle machine with::

    .venv/bin/python -m pytest tests/benchmarks/test_calibration_speed.py --benchmark-enable \\
        -p no:cacheprovider -s

What each timed call does (same float32 CAMs [2,2000,128,128], bool gt, paper_miou):

* naive: ``tests.calibration_oracle.oracle_grid_search`` on the 11×11 grid: one float64 copy
  of the CAMs, then per threshold tuple two ``cam > t`` masks, ``ensemble.combine`` and
  ``metrics.score``. About half a minute a call on 2 cores, so one round (no warm-up); its
  result is checked against ``grid_search``'s.
* grid_search 11×11 / 101×101: ``wsss_bench.core.calibration.grid_search`` (one warm-up round,
  then ``ROUNDS`` calls).

The three measurements of an ensemble run back to back, so that a slow drift of the
machine's speed hits the compared numbers as little as possible.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from tests.benchmarks.report import cpu_name, report_targets
from tests.calibration_oracle import oracle_grid_search
from wsss_bench.core.calibration import grid_search, threshold_grid
from wsss_bench_plugins.ensembles import And, Bigger, Or, Smaller

GROUP = "calibration 2×2000×128×128"
BACKBONES, SLICES, SIZE = 2, 2000, 128
ROUNDS = 5  # grid_search, after one warm-up round
ENSEMBLES = {"and": And(), "or": Or(), "smaller": Smaller(), "bigger": Bigger()}
VARIANTS = ("naive", "grid11", "grid101")

# Targets of the issue.
MIN_SPEEDUP_VS_NAIVE = 20.0
MAX_FINE_GRID_RATIO = 2.0

MEDIANS: dict[str, float] = {}  # "<ensemble>:<variant>" -> median seconds (enabled runs only)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    """Seeded CAMs with structure and a gt with ~2% lesion pixels.

    40% of the slices hold a disc-shaped lesion (radius 10–22 px). Backbone 0's CAM is a
    Gaussian blob near the lesion (or anywhere), backbone 1's a wider, shifted one; both get
    noise and per-slice min-max normalisation, as a CAM method returns them.
    """
    rng = np.random.default_rng(0)
    yy = np.arange(SIZE, dtype=np.float32)
    centre = rng.uniform(24, SIZE - 24, (SLICES, 2)).astype(np.float32)
    radius = rng.uniform(10, 22, SLICES).astype(np.float32)
    lesion = rng.random(SLICES) < 0.4
    dy = (yy[None, :] - centre[:, :1]) ** 2  # [N, H]
    dx = (yy[None, :] - centre[:, 1:]) ** 2  # [N, W]
    gt = (dy[:, :, None] + dx[:, None, :]) <= radius[:, None, None] ** 2
    gt &= lesion[:, None, None]
    cams = np.empty((BACKBONES, SLICES, SIZE, SIZE), dtype=np.float32)
    for m, (shift, spread) in enumerate(((4.0, 1.0), (12.0, 1.8))):
        c = centre + rng.normal(0, shift, (SLICES, 2)).astype(np.float32)
        s = (radius * spread)[:, None]
        gy = np.exp(-((yy[None, :] - c[:, :1]) ** 2) / (2 * s**2))
        gx = np.exp(-((yy[None, :] - c[:, 1:]) ** 2) / (2 * s**2))
        cam = gy[:, :, None] * gx[:, None, :]
        cam += rng.random(cam.shape, dtype=np.float32) * np.float32(0.15)
        cam -= cam.min(axis=(1, 2), keepdims=True)
        cam /= cam.max(axis=(1, 2), keepdims=True)
        cams[m] = cam
    return cams, gt


def _measure(benchmark, key: str, fn: Callable[[], object], rounds: int) -> object:
    benchmark.group = GROUP
    benchmark.extra_info["slices"] = SLICES
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1,
                                warmup_rounds=0 if rounds == 1 else 1)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        MEDIANS[key] = float(benchmark.stats.stats.median)
    return result


@pytest.mark.parametrize("key", [f"{e}:{v}" for e in ENSEMBLES for v in VARIANTS])
def test_calibration(benchmark, data, key: str) -> None:
    cams, gt = data
    name, variant = key.split(":")
    ensemble = ENSEMBLES[name]
    if variant == "naive":
        grid = threshold_grid(0.1)
        index, score, scores = _measure(
            benchmark, key, lambda: oracle_grid_search(cams, gt, grid, ensemble), rounds=1)
        fast = grid_search(cams, gt, ensemble=ensemble, thresholds=grid)
        assert fast.index == index
        np.testing.assert_allclose(fast.scores, scores, rtol=0, atol=1e-12)
    else:
        grid = threshold_grid(0.1 if variant == "grid11" else 0.01)
        res = _measure(benchmark, key,
                       lambda: grid_search(cams, gt, ensemble=ensemble, thresholds=grid), ROUNDS)
        assert res.scores.shape == (grid.size, grid.size)


def _table() -> str:
    lines = [
        f"Calibration speed, {BACKBONES} backbones × {SLICES} slices × {SIZE}×{SIZE}, "
        f"paper_miou, {cpu_name()}, {os.cpu_count()} CPUs, numpy {np.__version__} (medians)",
        "",
        "| ensemble | naive 11×11 s | grid_search 11×11 s | speed-up | "
        "grid_search 101×101 s | 101×101 / 11×11 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in ENSEMBLES:
        naive, g11, g101 = (MEDIANS[f"{name}:{v}"] for v in VARIANTS)
        lines.append(f"| {name} | {naive:.2f} | {g11:.3f} | {naive / g11:.1f}× | {g101:.3f} | "
                     f"{g101 / g11:.2f} |")
    return "\n".join(lines)


def test_speed_targets() -> None:
    """Runs last (file order): the issue's targets, from this run's medians only."""
    needed = {f"{e}:{v}" for e in ENSEMBLES for v in VARIANTS}
    if not needed <= MEDIANS.keys():
        pytest.skip(f"no medians for {sorted(needed - MEDIANS.keys())} (benchmarks disabled "
                    f"or deselected)")
    checks = []  # (target, measured seconds, limit seconds)
    for name in ENSEMBLES:
        naive, g11, g101 = (MEDIANS[f"{name}:{v}"] for v in VARIANTS)
        checks += [
            (f"{name}: grid_search 11×11 ≤ naive / {MIN_SPEEDUP_VS_NAIVE:g}", g11,
             naive / MIN_SPEEDUP_VS_NAIVE),
            (f"{name}: grid_search 101×101 ≤ {MAX_FINE_GRID_RATIO:g} × 11×11", g101,
             MAX_FINE_GRID_RATIO * g11),
        ]
    report_targets(_table(), checks)
