"""Preprocessing throughput: building the ``brats`` slice cache of the real BraTS sample.

6 real cases (FLAIR + seg: 12 NIfTI volumes of 240×240×155, gzip), default options
(per-slice min–max, crop to 128×128×128), written as a fresh cache each round. Measured side by
side in one run:

* ``nibabel``: the reference floor, ``nib.load(f).get_fdata()`` of the same 12 files and
  nothing else (no checks, no normalisation, no cache write), in one process;
* ``workers=1``: ``slice_cache.prepare`` decoding in this process;
* ``workers=2``: ``slice_cache.prepare`` with 2 worker processes.

Target: 2 workers take at most 0.8× the time of 1 worker (the decoding is gzip- and
NumPy-bound and splits over cases). Skipped unless benchmarks are enabled; run with::

    .venv/bin/python -m pytest tests/benchmarks/test_prepare_speed.py --benchmark-enable \\
        -p no:cacheprovider -s
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import nibabel as nib
import pytest

from tests.benchmarks.report import cpu_name, report_targets
from wsss_bench.core import slice_cache
from wsss_bench_plugins.brats import Brats

GROUP = "prepare brats-sample"
ROUNDS = 5
MAX_TWO_WORKER_RATIO = 0.8
MEDIANS: dict[str, float] = {}
VARIANTS = ("nibabel", "workers=1", "workers=2")


def volumes(root: Path) -> list[Path]:
    return [p for s in Brats().sources(root) for p in s.files.values()]


def _prepare(root: Path, workers: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        return len(slice_cache.prepare(Brats(), root, Path(tmp), workers=workers))


def _nibabel(root: Path) -> int:
    return sum(nib.load(str(p)).get_fdata().shape[2] for p in volumes(root))


@pytest.mark.parametrize("variant", VARIANTS)
def test_prepare(benchmark, variant: str, brats_sample: Path) -> None:
    benchmark.group = GROUP
    fn = ((lambda: _nibabel(brats_sample)) if variant == "nibabel"
          else (lambda: _prepare(brats_sample, int(variant[-1]))))
    result = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert result == (155 * 12 if variant == "nibabel" else 6 * 128)
    if benchmark.stats is not None:
        MEDIANS[variant] = float(benchmark.stats.stats.median)


def test_speed_targets(brats_sample: Path) -> None:
    """Runs last (file order): the table and the target from this run's medians."""
    if not set(VARIANTS) <= MEDIANS.keys():
        pytest.skip("benchmarks disabled or deselected")
    n_volumes = len(volumes(brats_sample))
    lines = [f"Preprocessing brats-sample (6 cases, {n_volumes} NIfTI volumes 240×240×155 → 768 "
             f"slices 128×128 in the cache), {cpu_name()}, {os.cpu_count()} CPUs (medians of "
             f"{ROUNDS})", "",
             "| variant | s | volumes/s | cases/s |", "|---|---:|---:|---:|"]
    for v in VARIANTS:
        t = MEDIANS[v]
        lines.append(f"| {v} | {t:.3f} | {n_volumes / t:.1f} | {6 / t:.2f} |")
    report_targets("\n".join(lines), [
        (f"workers=2 ≤ {MAX_TWO_WORKER_RATIO} × workers=1", MEDIANS["workers=2"],
         MAX_TWO_WORKER_RATIO * MEDIANS["workers=1"])])
