"""Scaling: CAM generation and calibration at 1×, 2× and 4× the slices, side by side in one
run. Both must be linear in the number of slices: the time at 4× at most 4 × 1.15 the time at
1× (and at least 4 / 1.15: a smaller ratio means a fixed cost hides the per-slice one). The
table gives the per-slice constant of each (the slope of a least-squares line through the
three medians) and its fixed part (the intercept).

* CAMs: :func:`wsss_bench.pipeline.cams.compute_cams` (the pipeline's CAM stage: batches of
  64, finish, float16 out) with ``gradcam`` on ``timm:test_resnet`` (random init, eval) at
  64×64, the default run's backbone and size; 384 slices at 1× (the default phantom).
* calibration: :func:`wsss_bench.core.calibration.grid_search`, ``and`` of 2 backbones, the
  11×11 grid, ``paper_miou``, 500 slices of 128×128 at 1× (structured CAMs as in
  ``test_calibration_speed.py``).

Skipped unless benchmarks are enabled (``conftest.py``). Run::

    .venv/bin/python -m pytest tests/benchmarks/test_scaling.py -p no:xdist \\
        --benchmark-enable -s
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.benchmarks.report import cpu_name, report_targets
from wsss_bench.core.calibration import grid_search, threshold_grid
from wsss_bench.pipeline.cams import compute_cams
from wsss_bench_plugins.cams import GradCAM
from wsss_bench_plugins.ensembles import And

SCALES = (1, 2, 4)
CAM_SLICES, CAM_SIZE = 384, 64
CAL_SLICES, CAL_SIZE = 500, 128
ROUNDS = 5
MAX_NONLINEARITY = 1.15
MEDIANS: dict[tuple[str, int], float] = {}


@pytest.fixture(scope="module")
def cam_setup():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", pretrained=False, in_chans=1, num_classes=2).eval()
    rng = np.random.default_rng(0)
    images = rng.standard_normal((CAM_SLICES * max(SCALES), 1, CAM_SIZE, CAM_SIZE))
    return model, images.astype(np.float32)


@pytest.fixture(scope="module")
def calibration_setup():
    """Two backbones' CAMs: Gaussian blobs near a disc-shaped lesion (40 % of the slices),
    plus noise, min-max normalised per slice."""
    n = CAL_SLICES * max(SCALES)
    rng = np.random.default_rng(0)
    yy = np.arange(CAL_SIZE, dtype=np.float32)
    centre = rng.uniform(24, CAL_SIZE - 24, (n, 2)).astype(np.float32)
    radius = rng.uniform(10, 22, n).astype(np.float32)
    d2 = (yy[None, :, None] - centre[:, :1, None]) ** 2 + (yy[None, None, :]
                                                          - centre[:, 1:, None]) ** 2
    gt = (d2 <= radius[:, None, None] ** 2) & (rng.random(n) < 0.4)[:, None, None]
    cams = np.empty((2, n, CAL_SIZE, CAL_SIZE), dtype=np.float32)
    for m, spread in enumerate((1.0, 1.8)):
        cam = np.exp(-d2 / (2 * (radius * spread)[:, None, None] ** 2))
        cam += rng.random(cam.shape, dtype=np.float32) * np.float32(0.15)
        cam -= cam.min(axis=(1, 2), keepdims=True)
        cams[m] = cam / cam.max(axis=(1, 2), keepdims=True)
    return cams, gt


def _measure(benchmark, key: tuple[str, int], fn) -> object:
    benchmark.group = f"scaling {key[0]}"
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        MEDIANS[key] = float(benchmark.stats.stats.median)
    return out


@pytest.mark.parametrize("scale", SCALES)
def test_cams(benchmark, cam_setup, scale):
    model, images = cam_setup
    part = images[: CAM_SLICES * scale]
    out = _measure(benchmark, ("cams", scale), lambda: compute_cams(
        GradCAM(), model, model.layer4, part, 64, torch.device("cpu"),
        out=np.empty((len(part), CAM_SIZE, CAM_SIZE), dtype=np.float16)))
    assert out.shape == (len(part), CAM_SIZE, CAM_SIZE)


@pytest.mark.parametrize("scale", SCALES)
def test_calibration(benchmark, calibration_setup, scale):
    cams, gt = calibration_setup
    n = CAL_SLICES * scale
    part, truth = cams[:, :n], gt[:n]
    res = _measure(benchmark, ("calibration", scale), lambda: grid_search(
        part, truth, ensemble=And(), thresholds=threshold_grid(0.1)))
    assert res.scores.shape == (11, 11)


def test_report():
    stages = {"cams": CAM_SLICES, "calibration": CAL_SLICES}
    if not all((s, k) in MEDIANS for s in stages for k in SCALES):
        pytest.skip("no medians for every scale (benchmarks disabled or deselected)")
    lines = [f"Scaling with the number of slices, {cpu_name()}, {torch.get_num_threads()} "
             f"threads, torch {torch.__version__}, numpy {np.__version__} (medians of {ROUNDS})",
             "", "| stage | slices at 1× | 1× s | 2× s | 4× s | 4× / 1× | s per 1,000 slices "
             "| fixed s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    checks = []
    for stage, base in stages.items():
        t = [MEDIANS[(stage, k)] for k in SCALES]
        slope, intercept = np.polyfit([base * k for k in SCALES], t, 1)
        lines.append(f"| {stage} | {base} | {t[0]:.3f} | {t[1]:.3f} | {t[2]:.3f} | "
                     f"{t[2] / t[0]:.2f} | {1000 * slope:.3f} | {intercept:.3f} |")
        checks += [(f"{stage}: 4× ≤ 4 × {MAX_NONLINEARITY:g} × 1×", t[2],
                    4 * MAX_NONLINEARITY * t[0]),
                   (f"{stage}: 1× ≤ 4× × {MAX_NONLINEARITY:g} / 4", t[0],
                    MAX_NONLINEARITY * t[2] / 4)]
    report_targets("\n".join(lines), checks)
