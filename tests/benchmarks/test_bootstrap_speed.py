"""Bootstrap speed at BraTS scale: ``statistics.annotate`` vs the brute-force reference.

Target (issue): the leaderboard's statistics of a BraTS-sized board — 369 cases in 3 folds of
123, 30 measured rows, 1000 resamples — in under 5 s on 2 CPU cores (every row × every
resample: intervals of the five metrics, paired tests against the best row and ``Empty`` with
Holm, rank intervals).

Everything is measured side by side in one run; the last test of this file checks the target
from the medians the benchmarks above it recorded, prints a markdown table (``-s`` shows it)
and writes it to ``$WSSS_BENCH_TABLE`` when that is set. The whole module is skipped unless
benchmarks are enabled (see ``conftest.py``). Run it on an otherwise idle machine with::

    .venv/bin/python -m pytest tests/benchmarks/test_bootstrap_speed.py --benchmark-enable \\
        -p no:cacheprovider -s

The board (seeded, made once): 30 rows (``Empty`` and 29 methods of qualities spread from 0.2
to 0.8), one seed, per case 128 slices of 128×128 (the ``brats`` plugin's default crop), about
40 % of them with a lesion of 50–3,000 pixels; each row keeps its per-case tables as a run
stores them. What each timed call does:

* annotate: ``statistics.annotate(board, Bootstrap(resamples=1000))`` on the whole board (one
  warm-up round, then ``ROUNDS`` calls).
* reference: ``tests.test_statistics.brute_replicates`` on ``REFERENCE_RESAMPLES`` resamples:
  per resample, row and fold, the drawn cases' 128 slices each repeated explicitly and scored
  with ``metrics.metrics_from_counts``, folds averaged (replicates only: the intervals, tests
  and ranks on top cost next to nothing). One round; its replicates are checked against
  ``statistics.replicates`` on the same draws (1e-12).

The two are compared per resample (median / resamples), the reference running far fewer.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from tests.benchmarks.report import cpu_name, report_targets
from tests.test_statistics import brute_replicates, make_row
from wsss_bench.core import metrics, statistics

GROUP = "bootstrap brats 369 cases × 30 rows"
FOLDS, CASES_PER_FOLD, SLICES_PER_CASE, PIXELS = 3, 123, 128, 128 * 128
ROWS, RESAMPLES, REFERENCE_RESAMPLES = 30, 1000, 20
ROUNDS = 5  # annotate, after one warm-up round

# Target of the issue.
MAX_ANNOTATE_S = 5.0

MEDIANS: dict[str, float] = {}  # variant -> median seconds (enabled runs only)
PER_RESAMPLE = {"annotate": RESAMPLES, "reference": REFERENCE_RESAMPLES}


@pytest.fixture(scope="module")
def board() -> tuple[dict, dict]:
    """The BraTS-sized board and each row's per-slice counts (method -> (seed, fold) -> case
    -> int64[128, 4])."""
    rng = np.random.default_rng(0)
    names = rng.permutation(FOLDS * CASES_PER_FOLD)
    lesions = [{f"BraTS20_Training_{names[f * CASES_PER_FOLD + c]:03d}":
                rng.integers(50, 3000, SLICES_PER_CASE) * (rng.random(SLICES_PER_CASE) < 0.4)
                for c in range(CASES_PER_FOLD)} for f in range(FOLDS)]
    qualities = {"Empty": 0.0, **{f"method{i:02d}": q for i, q in
                                  enumerate(np.linspace(0.2, 0.8, ROWS - 1))}}
    raw = {}
    for name, q in qualities.items():
        raw[name] = {}
        for f, fold in enumerate(lesions):
            raw[name][0, f] = {}
            for case, lesion in fold.items():
                found = np.clip(q + rng.normal(0, 0.2, lesion.shape), 0, 1) * (q > 0)
                tp = np.floor(lesion * found).astype(np.int64)
                false = rng.integers(0, 200, lesion.shape) * (q > 0)
                raw[name][0, f][case] = metrics.confusion(tp, tp + false, lesion, PIXELS)
    rows = [make_row(name, raw[name]) for name in qualities]
    return {"dataset": "brats", "name": "bench", "rows": rows}, raw


def _measure(benchmark, key: str, fn: Callable[[], object], rounds: int) -> object:
    benchmark.group = GROUP
    benchmark.extra_info.update(rows=ROWS, cases=FOLDS * CASES_PER_FOLD,
                                resamples=PER_RESAMPLE[key])
    result = benchmark.pedantic(fn, rounds=rounds, iterations=1,
                                warmup_rounds=0 if rounds == 1 else 1)
    if benchmark.stats is not None:  # None when benchmarks are disabled
        MEDIANS[key] = float(benchmark.stats.stats.median)
    return result


def test_bootstrap_annotate(benchmark, board) -> None:
    b, _ = board
    settings = statistics.Bootstrap(resamples=RESAMPLES)
    _measure(benchmark, "annotate", lambda: statistics.annotate(b, settings), ROUNDS)
    assert b["statistics"]["resamples"] == RESAMPLES
    assert all(row["stats"]["ci"]["paper_dsc"][0] <= row["metrics"]["paper_dsc"]["mean"]
               <= row["stats"]["ci"]["paper_dsc"][1] for row in b["rows"])


def test_bootstrap_reference(benchmark, board) -> None:
    b, raw = board
    rows = b["rows"]
    got = _measure(benchmark, "reference",
                   lambda: brute_replicates(rows, raw, REFERENCE_RESAMPLES, seed=0), rounds=1)
    fast = statistics.replicates(rows, statistics.design(rows[0]),
                                 statistics.Bootstrap(resamples=REFERENCE_RESAMPLES, seed=0))
    for m in metrics.METRIC_NAMES:
        np.testing.assert_allclose(fast[m], got[m], rtol=0, atol=1e-12)


def _table() -> str:
    annotate, reference = MEDIANS["annotate"], MEDIANS["reference"]
    per = {k: MEDIANS[k] / PER_RESAMPLE[k] for k in PER_RESAMPLE}
    return "\n".join([
        f"Bootstrap speed, {FOLDS * CASES_PER_FOLD} cases in {FOLDS} folds × {SLICES_PER_CASE} "
        f"slices, {ROWS} rows, {cpu_name()}, {os.cpu_count()} CPUs, numpy {np.__version__} "
        f"(medians)",
        "",
        "| variant | resamples | median s | ms per resample (all rows) | × annotate |",
        "|---|---:|---:|---:|---:|",
        f"| statistics.annotate | {RESAMPLES} | {annotate:.3f} | {per['annotate'] * 1e3:.2f} "
        f"| 1.0 |",
        f"| brute-force reference | {REFERENCE_RESAMPLES} | {reference:.2f} | "
        f"{per['reference'] * 1e3:.1f} | {per['reference'] / per['annotate']:.0f} |",
    ])


def test_speed_targets() -> None:
    """Runs last (file order): the issue's target, from this run's medians only."""
    if not {"annotate", "reference"} <= MEDIANS.keys():
        pytest.skip("no medians for annotate and reference (benchmarks disabled or "
                    "deselected)")
    report_targets(_table(), [(f"annotate, {ROWS} rows × {RESAMPLES} resamples ≤ "
                               f"{MAX_ANNOTATE_S:g} s", MEDIANS["annotate"], MAX_ANNOTATE_S)])
