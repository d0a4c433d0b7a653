"""Cost per epoch of the end-to-end methods against a plain classifier on the same slices, side
by side in one run (CPU; the same on a GPU when one is there).

* classifier: :func:`wsss_bench.core.training.train_classifier` of a resnet18 (the pipeline's
  training loop, no validation, no BatchNorm recompute), one epoch.
* seam (resnet18): SEAM's training with the classifier's backbone, so the ratio is the cost of
  SEAM's head (two views, the pixel correlation module, four losses).
* seam (resnet34): SEAM with its default backbone (resnet34 at output stride 16).
* wss-cmer: WSS-CMER's default (one 3-pool U-Net of base width 16 per modality, both views).

Every method trains one epoch of the same 2-channel slices (``N`` of 128×128, batch 16, the
default ``--batch-size``). Expected (issue): SEAM's head ≈ 2× the classifier, WSS-CMER ≈ 3×;
the report gives each ratio. Skipped unless benchmarks are enabled (``conftest.py``). Run::

    .venv/bin/python -m pytest tests/benchmarks/test_method_cost.py -p no:xdist \\
        --benchmark-enable -s
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.benchmarks.report import cpu_name, report_targets
from wsss_bench.core.training import TrainConfig, train_classifier
from wsss_bench.pipeline.methods import method_context
from wsss_bench_plugins.method_seam import Seam
from wsss_bench_plugins.method_wsscmer import WssCmer

N, SIZE, BATCH, ROUNDS = 64, 128, 16, 3
# the expectation, with room for the machine: a ratio above it fails the report
LIMITS = {"seam (resnet18)": 2.0 * 1.5, "wss-cmer": 3.0 * 1.5}
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def slices() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (N, 2, SIZE, SIZE)).astype(np.float32)
    return images, (np.arange(N) % 2).astype(np.int64)


def _measure(benchmark, key: str, fn) -> None:
    benchmark.group = f"one training epoch, {N} slices of 2×{SIZE}×{SIZE}, batch {BATCH}"
    benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        MEDIANS[key] = float(benchmark.stats.stats.median)


def test_classifier(benchmark, slices):
    images, labels = slices
    context = method_context(batch_size=BATCH)
    config = TrainConfig(epochs=1, batch_size=BATCH, lr=0.01, precise_bn=False)

    def epoch() -> None:
        torch.manual_seed(0)
        model = context.build_backbone("resnet18", 2, 32)
        train_classifier(model, images, labels, config, torch.device("cpu"))

    _measure(benchmark, "classifier resnet18", epoch)


@pytest.mark.parametrize(("key", "method"), [
    ("seam (resnet18)", Seam(backbone="resnet18", output_stride=32)),
    ("seam (resnet34)", Seam()),
    ("wss-cmer", WssCmer()),
])
def test_method(benchmark, slices, key, method):
    images, labels = slices
    context = method_context(batch_size=BATCH, epochs=1)
    _measure(benchmark, key, lambda: method.train(images, labels, context))


def test_report():
    base = MEDIANS.get("classifier resnet18")
    if not base:
        pytest.skip("no medians (benchmarks disabled)")
    lines = [f"One training epoch, {N} slices of 2×{SIZE}×{SIZE}, batch {BATCH}, {cpu_name()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__} (medians of "
             f"{ROUNDS})", "", "| training | s per epoch | × resnet18 classifier | slices/s |",
             "|---|---:|---:|---:|",
             f"| resnet18 classifier | {base:.2f} | 1.00 | {N / base:.1f} |"]
    checks = []
    for key in ("seam (resnet18)", "seam (resnet34)", "wss-cmer"):
        if key in MEDIANS:
            got = MEDIANS[key]
            lines.append(f"| {key} | {got:.2f} | {got / base:.2f} | {N / got:.1f} |")
            if key in LIMITS:
                checks.append((f"{key} ≤ {LIMITS[key]:g} × classifier", got, LIMITS[key] * base))
    report_targets("\n".join(lines), checks)
