"""Per-case results and the leaderboard's statistics, checked against slow references.

Everything here starts from per-slice confusion counts made up on the spot (no model, no
pipeline run): the per-case tables must give every metric of any multiset of cases exactly,
and the bootstrap (intervals, paired p-values, Holm, ranks) must equal a brute-force loop that
rebuilds each resampled fold from its slices and scores it with ``metrics.metrics_from_counts``.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math

import numpy as np
import pytest
from rich.console import Console

from tests.test_cli import run_main
from wsss_bench.core import leaderboard, metrics, statistics
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.errors import UsageError
from wsss_bench.pipeline import evaluate
from wsss_bench.pipeline.run import evaluation_outdated

POOLED = ("paper_miou", "paper_dsc", "dice_pooled")
PIXELS = 400  # pixels of a synthetic slice


# ---- synthetic data ---------------------------------------------------------------------------

def masks(rng: np.random.Generator, slices: dict[str, int], size: int = 8
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """bool pred and gt [N,size,size] and case ids [N], slices of the cases interleaved.

    Case ``gt_empty`` has no lesion anywhere, case ``pred_empty`` no prediction anywhere; about
    a third of the other slices are empty in gt, pred or both."""
    ids = np.array([c for c, n in slices.items() for _ in range(n)])
    ids = ids[rng.permutation(len(ids))]
    n = len(ids)
    gt = rng.random((n, size, size)) < rng.uniform(0.05, 0.5, (n, 1, 1))
    pred = np.where(rng.random((n, size, size)) < 0.8, gt, ~gt)
    gt &= (rng.random(n) < 0.7)[:, None, None]
    pred &= (rng.random(n) < 0.7)[:, None, None]
    gt[ids == "gt_empty"] = False
    pred[ids == "pred_empty"] = False
    return pred, gt, ids


def truth(rng: np.random.Generator, sizes: tuple[int, ...]) -> list[dict[str, np.ndarray]]:
    """Per fold, case id -> lesion pixels of each of its 1-5 slices (0 or 10-59; about one
    case in five has no lesion). Ids are shuffled so that sorted order is not making order."""
    names = rng.permutation(sum(sizes))
    out, k = [], 0
    for n in sizes:
        fold = {}
        for _ in range(n):
            s = int(rng.integers(1, 6))
            lesion = rng.integers(10, 60, s) * (rng.random(s) < 0.7)
            if rng.random() < 0.2:
                lesion[:] = 0
            fold[f"case{names[k]:03d}"] = lesion.astype(np.int64)
            k += 1
        out.append(fold)
    return out


def predict(rng: np.random.Generator, lesion: np.ndarray, quality: float, false: int
            ) -> np.ndarray:
    """Per-slice counts [S,4] of a prediction finding about ``quality`` of each lesion plus up
    to ``false`` false positive pixels a slice."""
    found = np.clip(quality + rng.normal(0, 0.15, lesion.shape), 0, 1)
    tp = np.floor(lesion * found).astype(np.int64)
    return metrics.confusion(tp, tp + rng.integers(0, false + 1, lesion.shape), lesion, PIXELS)


def make_row(method: str, raw: dict[tuple[int, int], dict[str, np.ndarray]], **extra) -> dict:
    """A measured leaderboard row, as ``publish`` makes it, from per-slice counts of each case
    of each (seed, fold)."""
    per_case, folds = [], []
    for (seed, fold), cases in sorted(raw.items()):  # seed-major, fold by fold
        ids = np.array([c for c, v in cases.items() for _ in range(len(v))])
        counts = np.concatenate(list(cases.values()))
        per_case.append({"seed": seed, "fold": fold, **metrics.case_table(counts, ids)})
        folds.append(metrics.metrics_from_counts(counts, ids))
    values = {m: [f[m] for f in folds] for m in METRIC_NAMES}
    return {"method": method, "seeds": sorted({s for s, _ in raw}),
            "backbones": [] if method == "Empty" else ["resnet18"],
            "cam": None if method == "Empty" else "gradcam", "ensemble": None,
            "filter": None if method == "Empty" else "none", "options": {},
            "dataset_options": {}, "thresholds": [[0.5]] * len(per_case),
            "metrics": {m: {"mean": float(np.mean(v)), "std": float(np.std(v)), "folds": v}
                        for m, v in values.items()},
            "per_case": per_case, "source": "measured",
            "run": {"seed": 0, "date": "2026-01-01"}, **extra}


def synthetic(seed: int, sizes: tuple[int, ...], methods: dict[str, tuple[float, int, tuple]]
              ) -> tuple[list[dict], dict[str, dict]]:
    """Rows of ``methods`` (name -> (quality, false positives, seeds)) on one made-up split,
    and each row's per-slice counts: method -> (seed, fold) -> case -> int64[S,4]."""
    rng = np.random.default_rng(seed)
    gt = truth(rng, sizes)
    raw = {name: {(s, f): {c: predict(rng, lesion, q, fp) for c, lesion in gt[f].items()}
                  for s in seeds for f in range(len(sizes))}
           for name, (q, fp, seeds) in methods.items()}
    return [make_row(name, raw[name]) for name in methods], raw


def shifted(rng: np.random.Generator, sizes: tuple[int, ...], shift: int
            ) -> tuple[dict[tuple[int, int], dict[str, np.ndarray]], ...]:
    """Per-slice counts of ``better`` (finds 80 % of each lesion, 2 false pixels a slice),
    ``worse`` (the same with ``shift`` of the found pixels of each lesion slice missed) and
    ``empty``: ``worse`` is strictly worse on every metric of every case with a lesion and
    equal on the others."""
    gt = truth(rng, sizes)
    better, worse, empty = {}, {}, {}
    for f, fold in enumerate(gt):
        better[0, f], worse[0, f], empty[0, f] = {}, {}, {}
        for c, lesion in fold.items():
            tp = lesion * 8 // 10
            better[0, f][c] = metrics.confusion(tp, tp + 2, lesion, PIXELS)
            lost = np.where(lesion > 0, tp - shift, tp)
            worse[0, f][c] = metrics.confusion(lost, lost + 2, lesion, PIXELS)
            empty[0, f][c] = metrics.confusion(0, 0, lesion, PIXELS)
    return better, worse, empty


def case_order(row: dict) -> tuple[tuple[str, ...], ...]:
    """Each fold's case ids, sorted (what the resample indices refer to)."""
    folds: dict[int, set[str]] = {}
    for entry in row["per_case"]:
        folds.setdefault(entry["fold"], set()).update(entry["ids"])
    return tuple(tuple(sorted(folds[f])) for f in sorted(folds))


# ---- slow references --------------------------------------------------------------------------

def brute_replicates(rows: list[dict], raw: dict[str, dict], resamples: int, seed: int
                     ) -> dict[str, np.ndarray]:
    """metric -> float64[rows, resamples], one resampled fold at a time: the drawn cases' slices
    repeated explicitly (each copy of a case its own case), scored by
    ``metrics.metrics_from_counts``, averaged over the row's (seed, fold) entries."""
    cases = case_order(rows[0])
    draws = statistics.resample_indices([len(c) for c in cases], resamples, seed)
    out = {m: np.zeros((len(rows), resamples)) for m in METRIC_NAMES}
    for r, row in enumerate(rows):
        for b in range(resamples):
            values = {m: [] for m in METRIC_NAMES}
            for entry in row["per_case"]:
                fold = entry["fold"]
                slices = raw[row["method"]][entry["seed"], fold]
                picked = [cases[fold][i] for i in draws[fold][b]]
                counts = np.concatenate([slices[c] for c in picked])
                ids = np.repeat(np.arange(len(picked)), [len(slices[c]) for c in picked])
                got = metrics.metrics_from_counts(counts, ids)
                for m in METRIC_NAMES:
                    values[m].append(got[m])
            for m in METRIC_NAMES:
                out[m][r, b] = np.mean(values[m])
    return out


def percentile(x: np.ndarray, q: float) -> float:
    """Linear-interpolation percentile (numpy's default), by hand."""
    s = sorted(x)
    h = (len(s) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def lower_quantile(x: np.ndarray, q: float) -> float:
    """The inverted-CDF quantile by hand: the smallest value whose CDF reaches ``q``."""
    s = sorted(x)
    return s[max(math.ceil(len(s) * q) - 1, 0)]


def interval(x: np.ndarray, level: float) -> list[float]:
    a = round((1 - level) / 2, 12)
    return [percentile(x, a), percentile(x, 1 - a)]


def two_sided_p(diffs: np.ndarray) -> float:
    below = sum(1 for d in diffs if d <= 0) / len(diffs)
    above = sum(1 for d in diffs if d >= 0) / len(diffs)
    return min(1.0, 2 * min(below, above))


def holm_by_formula(p: list[float]) -> list[float]:
    """Holm: the i-th smallest p becomes max over k <= i of min(1, (m - k) p_(k))."""
    m = len(p)
    order = sorted(range(m), key=lambda j: p[j])
    out = [0.0] * m
    for i, j in enumerate(order):
        out[j] = max(min(1.0, (m - k) * p[order[k]]) for k in range(i + 1))
    return out


def expected_stats(rows: list[dict], reps: dict[str, np.ndarray],
                   settings: statistics.Bootstrap) -> list[dict]:
    """What ``group_statistics`` must store, from replicates of a brute-force reference."""
    main = np.round(reps[settings.metric], 12)
    point = [row["metrics"][settings.metric]["mean"] for row in rows]
    best = int(np.argmax(point))
    empty = next((r for r, row in enumerate(rows) if row["method"] == "Empty"), None)
    n, b = main.shape
    rank = np.array([[1 + sum(main[o, k] > main[r, k] for o in range(n)) for k in range(b)]
                     for r in range(n)])
    a = round((1 - settings.level) / 2, 12)
    out = []
    for r in range(n):
        st = {"ci": {m: interval(reps[m][r], settings.level) for m in METRIC_NAMES},
              "rank": {"median": float(np.median(rank[r])),
                       "interval": [lower_quantile(rank[r], a), lower_quantile(rank[r], 1 - a)]},
              "vs_best": {"method": rows[best]["method"], "diff": point[r] - point[best],
                          "ci": interval(main[r] - main[best], settings.level),
                          "p": two_sided_p(main[r] - main[best]), "best": r == best}}
        if empty is not None and r != empty:
            d = main[r] - main[empty]
            st["vs_empty"] = {"diff": point[r] - point[empty], "ci": interval(d, settings.level),
                              "p": two_sided_p(d)}
        else:
            st["vs_empty"] = None
        out.append(st)
    others = [r for r in range(n) if r != best]
    for r, q in zip(others, holm_by_formula([out[r]["vs_best"]["p"] for r in others]),
                    strict=True):
        out[r]["vs_best"]["p_holm"] = q
    out[best]["vs_best"]["p_holm"] = 1.0
    tested = [r for r in range(n) if out[r]["vs_empty"] is not None]
    for r, q in zip(tested, holm_by_formula([out[r]["vs_empty"]["p"] for r in tested]),
                    strict=True):
        out[r]["vs_empty"]["p_holm"] = q
        out[r]["vs_empty"]["beats"] = (out[r]["vs_empty"]["diff"] > 0
                                       and q < settings.alpha)
    for r in range(n):
        out[r]["vs_best"]["top_group"] = r == best or out[r]["vs_best"]["p_holm"] >= settings.alpha
    return out


def assert_close_tree(got, want, path: str = "stats") -> None:
    """Equal structures; floats within 1e-12, everything else exactly."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), (path, got, want)
        for k in want:
            assert_close_tree(got[k], want[k], f"{path}.{k}")
    elif isinstance(want, list):
        assert isinstance(got, list) and len(got) == len(want), (path, got, want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_close_tree(g, w, f"{path}[{i}]")
    elif isinstance(want, bool) or want is None or isinstance(want, str):
        assert got == want, (path, got, want)
    else:
        assert abs(got - want) <= 1e-12, (path, got, want)


# ---- 1. exact recomputation from per-case tables ----------------------------------------------

def python_metrics(counts: np.ndarray, ids: np.ndarray) -> dict[str, float]:
    """The five metrics by their definitions, in plain Python (ints, one slice at a time)."""
    tp, fp, fn, tn = (int(v) for v in counts.sum(axis=0))

    def ratio(num: int, den: int) -> float:
        return num / den if den else 1.0

    miou = (ratio(tn, tn + fp + fn) + ratio(tp, tp + fp + fn)) / 2
    slice_dice = [ratio(2 * int(c[0]), 2 * int(c[0]) + int(c[1]) + int(c[2])) for c in counts]
    cases = {}
    for c, i in zip(counts, ids, strict=True):
        cases[i] = cases.get(i, 0) + c.astype(np.int64)
    case_dice = [ratio(2 * int(c[0]), 2 * int(c[0]) + int(c[1]) + int(c[2]))
                 for c in cases.values()]
    return {"paper_miou": miou, "paper_dsc": 2 * miou / (1 + miou),
            "dice_pooled": ratio(2 * tp, 2 * tp + fp + fn),
            "dice_slice": sum(slice_dice) / len(slice_dice),
            "dice_volume": sum(case_dice) / len(case_dice)}


SLICES = {"c07": 5, "gt_empty": 3, "a02": 1, "pred_empty": 4, "b11": 7, "c10": 2}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_case_table_recomputes_every_metric_exactly(seed):
    rng = np.random.default_rng(seed)
    pred, gt, ids = masks(rng, SLICES)
    assert (~gt).all(axis=(1, 2)).sum() > 3 and (~pred).all(axis=(1, 2)).sum() > 3
    counts = metrics.slice_counts(pred, gt)
    table = metrics.case_table(counts, ids)
    assert table["ids"] == sorted(SLICES) and table["slices"] == [SLICES[c] for c in sorted(SLICES)]
    assert metrics.case_problem(table) is None
    got = metrics.metrics_of_cases(table)
    assert got == metrics.score(pred, gt, ids)
    ref = python_metrics(counts, ids)
    index = metrics.case_indices(ids, len(ids))
    for m in METRIC_NAMES:
        vec = float(metrics.metric_values(counts[None], m, index)[0])
        if m in POOLED:
            assert got[m] == vec == ref[m], m
        else:
            assert abs(got[m] - vec) <= 1e-12 and abs(got[m] - ref[m]) <= 1e-12, m
    again = json.loads(json.dumps(table))
    assert again == table and metrics.metrics_of_cases(again) == got  # bit for bit
    # a case alone: its own slices' metrics
    for i, c in enumerate(table["ids"]):
        alone = metrics.metrics_of_cases(table, np.eye(len(table["ids"]), dtype=int)[i])
        own = metrics.score(pred[ids == c], gt[ids == c], ids[ids == c])
        assert all(abs(alone[m] - own[m]) <= 1e-12 for m in METRIC_NAMES), c
        assert all(alone[m] == own[m] for m in POOLED), c


def test_empty_case_and_empty_slices_score_as_perfect_agreement():
    gt = np.zeros((3, 4, 4), bool)
    pred = np.zeros((3, 4, 4), bool)
    gt[2, :2] = pred[2, :2] = True
    table = metrics.case_table(metrics.slice_counts(pred, gt), np.array(["x", "x", "y"]))
    assert table["dice_slice_sum"] == [2.0, 1.0] and table["counts"][0] == [0, 0, 0, 32]
    assert metrics.metrics_of_cases(table) == {m: 1.0 for m in METRIC_NAMES}
    pred[0, 0, 0] = True  # a false positive on an empty slice: its Dice is 0
    got = metrics.metrics_of_cases(metrics.case_table(metrics.slice_counts(pred, gt),
                                                      np.array(["x", "x", "y"])))
    assert got["dice_slice"] == 2 / 3 and got["dice_volume"] == 0.5


@pytest.mark.parametrize("weights", [[2, 0, 1, 3, 1, 1], [0, 0, 0, 1, 0, 0], [1, 1, 1, 1, 1, 4]])
def test_weights_equal_the_explicitly_repeated_slices(weights):
    rng = np.random.default_rng(5)
    pred, gt, ids = masks(rng, SLICES)
    table = metrics.case_table(metrics.slice_counts(pred, gt), ids)
    got = metrics.metrics_of_cases(table, weights)
    keep = [(c, k) for c, w in zip(table["ids"], weights, strict=True) for k in range(w)]
    rep_pred = np.concatenate([pred[ids == c] for c, _ in keep])
    rep_gt = np.concatenate([gt[ids == c] for c, _ in keep])
    rep_ids = np.concatenate([[f"{c}#{k}"] * int((ids == c).sum()) for c, k in keep])
    want = metrics.score(rep_pred, rep_gt, rep_ids)
    for m in METRIC_NAMES:
        if m in POOLED:
            assert got[m] == want[m], m
        else:
            assert abs(got[m] - want[m]) <= 1e-12, m
    assert got != metrics.metrics_of_cases(table)  # the weights matter


SMALL = {"Empty": (0.0, 0, (0,)), "A": (0.75, 3, (0,)), "B": (0.55, 3, (0,)),
         "C": (0.55, 4, (0, 1))}


@pytest.fixture(scope="module")
def small():
    """4 rows (C with 2 seeds), 3 folds of 5, 7 and 9 cases, per-slice counts kept."""
    return synthetic(11, (5, 7, 9), SMALL)


def test_fold_values_of_each_case_alone_and_of_the_whole_fold(small):
    rows, raw = small
    cases = case_order(rows[0])
    assert statistics.design(rows[3]) == cases == statistics.design(rows[0])
    for fold, order in enumerate(cases):
        alone = statistics.fold_values(rows, fold, order, np.eye(len(order)))
        whole = statistics.fold_values(rows, fold, order, np.ones((2, len(order))))
        for r, row in enumerate(rows):
            entries = [s for s, f in raw[row["method"]] if f == fold]
            for c, case in enumerate(order):
                own = [metrics.metrics_from_counts(raw[row["method"]][s, fold][case])
                       for s in entries]
                for m in METRIC_NAMES:
                    assert abs(alone[m][r, c] - np.mean([o[m] for o in own])) <= 1e-12
            folds = [f for e, f in zip(row["per_case"], row["metrics"]["paper_dsc"]["folds"],
                                       strict=True) if e["fold"] == fold]
            for m in METRIC_NAMES:
                want = np.mean([f for e, f in zip(row["per_case"], row["metrics"][m]["folds"],
                                                  strict=True) if e["fold"] == fold])
                assert np.abs(whole[m][r] - want).max() <= 1e-12, (row["method"], m)
            assert len(folds) == len(entries)


def test_weights_of_counts_draws():
    idx = np.array([[0, 0, 2], [1, 2, 2]])
    assert statistics.weights_of(idx, 4).tolist() == [[2, 0, 1, 0], [0, 1, 2, 0]]
    draws = statistics.resample_indices([3, 5], 4, seed=9)
    assert [d.shape for d in draws] == [(4, 3), (4, 5)]
    assert all(d.min() >= 0 and d.max() < n for d, n in zip(draws, [3, 5], strict=True))
    again = statistics.resample_indices([3, 5], 4, seed=9)
    assert all((a == b).all() for a, b in zip(draws, again, strict=True))
    other = statistics.resample_indices([3, 5], 4, seed=10)
    assert any((a != b).any() for a, b in zip(draws, other, strict=True))


# ---- 2. the bootstrap against a brute-force reference -----------------------------------------

RESAMPLES = 150


@pytest.fixture(scope="module")
def brute(small):
    rows, raw = small
    return brute_replicates(rows, raw, RESAMPLES, seed=7)


def test_replicates_equal_the_brute_force_resampled_folds(small, brute):
    rows, _ = small
    settings = statistics.Bootstrap(resamples=RESAMPLES, seed=7)
    got = statistics.replicates(rows, statistics.design(rows[0]), settings)
    for m in METRIC_NAMES:
        assert got[m].shape == (len(rows), RESAMPLES)
        assert np.abs(got[m] - brute[m]).max() <= 1e-12, m
    # the replicates spread around the point estimate (each row's mean over folds and seeds)
    for r, row in enumerate(rows[1:], start=1):
        assert got["paper_dsc"][r].std() > 1e-4
        lo, hi = np.quantile(got["paper_dsc"][r], [0.005, 0.995])
        assert lo < row["metrics"]["paper_dsc"]["mean"] < hi


@pytest.mark.parametrize(("metric", "level"), [("paper_dsc", 0.95), ("dice_volume", 0.9)])
def test_annotate_stores_intervals_tests_and_ranks_of_the_reference(small, brute, metric, level):
    rows, _ = small
    board = {"dataset": "phantom", "rows": copy.deepcopy(rows)}
    settings = statistics.Bootstrap(resamples=RESAMPLES, seed=7, level=level, metric=metric)
    statistics.annotate(board, settings)
    assert board["statistics"] == {"method": "paired case-level bootstrap, stratified by fold",
                                   "resamples": RESAMPLES, "seed": 7, "level": level,
                                   "metric": metric, "p_adjust": "holm"}
    want = expected_stats(rows, brute, settings)
    for row, st in zip(board["rows"], want, strict=True):
        assert_close_tree(row["stats"], st, row["method"])
    # the tests are not all trivial: some p-values lie strictly between 0 and 1
    ps = [st["vs_best"]["p"] for st in want] + [st["vs_empty"]["p"] for st in want
                                                 if st["vs_empty"]]
    assert any(0 < p < 1 for p in ps), ps
    again = statistics.annotate({"dataset": "phantom", "rows": copy.deepcopy(rows)}, settings)
    assert [r["stats"] for r in again["rows"]] == [r["stats"] for r in board["rows"]]
    other = statistics.annotate({"dataset": "phantom", "rows": copy.deepcopy(rows)},
                                statistics.Bootstrap(resamples=RESAMPLES, seed=8, level=level,
                                                     metric=metric))
    for r in range(1, len(rows)):
        assert other["rows"][r]["stats"]["ci"] != board["rows"][r]["stats"]["ci"]


def test_annotate_with_no_resamples_removes_statistics(small):
    rows, _ = small
    board = statistics.annotate({"dataset": "phantom", "rows": copy.deepcopy(rows)},
                                statistics.Bootstrap(resamples=50))
    assert all("stats" in r for r in board["rows"])
    statistics.annotate(board, statistics.Bootstrap(resamples=0))
    assert board["statistics"] is None and not any("stats" in r for r in board["rows"])


# ---- 3. a known shift is found, identical methods are not separated ---------------------------

@pytest.fixture(scope="module")
def shift_board():
    better, worse, empty = shifted(np.random.default_rng(3), (12, 12, 12), shift=3)
    rows = [make_row("Empty", empty), make_row("Worse", worse), make_row("Better", better),
            make_row("Twin", better)]
    return rows, {"Empty": empty, "Worse": worse, "Better": better, "Twin": better}


def lesion_cases(raw: dict) -> int:
    """Cases with a lesion (fn + tp > 0) over all folds of one seed."""
    return sum(int(c[:, [0, 2]].sum() > 0) for (s, _), cases in raw.items() if s == 0
               for c in cases.values())


def test_a_known_shift_is_separated_and_identical_methods_are_not(shift_board):
    rows, _ = shift_board
    board = statistics.annotate({"dataset": "phantom", "rows": copy.deepcopy(rows)},
                                statistics.Bootstrap(resamples=400, seed=1))
    st = {r["method"]: r["stats"] for r in board["rows"]}
    better, worse, twin = st["Better"], st["Worse"], st["Twin"]
    assert better["vs_best"]["best"] and better["vs_best"]["method"] == "Better"
    lo, hi = worse["vs_best"]["ci"]
    assert hi < 0 and lo <= worse["vs_best"]["diff"] <= hi
    assert worse["vs_best"]["p"] == 0 and worse["vs_best"]["p_holm"] < 0.05
    assert not worse["vs_best"]["top_group"]
    assert better["vs_empty"]["beats"] and better["vs_empty"]["ci"][0] > 0
    assert better["vs_empty"]["p_holm"] < 0.05
    assert worse["vs_empty"]["beats"]  # 3 pixels fewer of each lesion still beat nothing
    assert st["Empty"]["vs_empty"] is None and not st["Empty"]["vs_best"]["top_group"]
    # identical rows: p = 1, the same intervals and ranks, both in the top group
    assert twin["vs_best"]["p"] == 1 and twin["vs_best"]["p_holm"] == 1
    assert twin["vs_best"]["diff"] == 0 and twin["vs_best"]["ci"] == [0.0, 0.0]
    assert twin["vs_best"]["top_group"] and better["vs_best"]["top_group"]
    assert twin["ci"] == better["ci"] and twin["rank"] == better["rank"]
    assert better["rank"] == {"median": 1.0, "interval": [1, 1]}
    assert worse["rank"] == {"median": 3.0, "interval": [3, 3]}
    assert st["Empty"]["rank"] == {"median": 4.0, "interval": [4, 4]}
    for m in METRIC_NAMES:
        assert worse["ci"][m][0] < better["ci"][m][0] and worse["ci"][m][1] < better["ci"][m][1]


def test_compare_finds_the_shift_on_every_metric_and_counts_case_wins(shift_board):
    rows, raw = shift_board
    settings = statistics.Bootstrap(resamples=300, seed=2)
    lesions = lesion_cases(raw["Better"])
    n_cases = sum(len(c) for c in case_order(rows[0]))
    assert 0 < lesions < n_cases
    result = statistics.compare(rows[2], rows[1], settings)
    assert [r["metric"] for r in result] == list(METRIC_NAMES)
    for r in result:
        m = r["metric"]
        assert r["a"] == rows[2]["metrics"][m]["mean"] and r["b"] == rows[1]["metrics"][m]["mean"]
        assert r["diff"] == r["a"] - r["b"] > 0 and r["ci"][0] > 0 and r["p"] == 0
        assert (r["wins_a"], r["wins_b"], r["ties"]) == (lesions, 0, n_cases - lesions), m
    same = statistics.compare(rows[2], rows[3], settings)
    for r in same:
        assert r["p"] == 1 and r["diff"] == 0 and r["ci"] == [0.0, 0.0]
        assert (r["wins_a"], r["wins_b"], r["ties"]) == (0, 0, n_cases)
    flipped = statistics.compare(rows[1], rows[2], settings)
    for a, b in zip(result, flipped, strict=True):
        assert b["ci"] == pytest.approx([-a["ci"][1], -a["ci"][0]], abs=1e-12)
        assert (b["wins_a"], b["wins_b"]) == (a["wins_b"], a["wins_a"])


# ---- 4. ranks of a clearly ordered board ------------------------------------------------------

def test_ranks_of_a_clearly_ordered_board_are_exact():
    rng = np.random.default_rng(4)
    gt = truth(rng, (8, 9, 8))
    qualities = {"Q9": 0.9, "Q3": 0.3, "Empty": 0.0, "Q7": 0.7, "Q5": 0.5}
    rows = []
    for name, q in qualities.items():  # found pixels strictly ordered on every lesion slice
        raw = {(0, f): {c: metrics.confusion(np.floor(les * q).astype(np.int64),
                                             np.floor(les * q).astype(np.int64), les, PIXELS)
                        for c, les in fold.items()} for f, fold in enumerate(gt)}
        rows.append(make_row(name, raw))
    board = statistics.annotate({"dataset": "phantom", "rows": rows},
                                statistics.Bootstrap(resamples=300, seed=0))
    want = {"Q9": 1, "Q7": 2, "Q5": 3, "Q3": 4, "Empty": 5}
    for row in board["rows"]:
        k = want[row["method"]]
        assert row["stats"]["rank"] == {"median": float(k), "interval": [k, k]}, row["method"]
        assert row["stats"]["vs_best"]["top_group"] == (k == 1)
    assert statistics.ranks(np.array([[3.0, 1.0], [2.0, 1.0], [3.0, 0.5]])).tolist() == [
        [1, 1], [3, 1], [1, 3]]  # ties share the better rank


# ---- 5. Holm and the p-value ------------------------------------------------------------------

def test_holm_by_hand():
    got = statistics.holm([0.01, 0.04, 0.03, 0.2])
    assert got == pytest.approx([0.04, 0.09, 0.09, 0.2], abs=1e-15)
    assert statistics.holm([0.5, 0.3, 0.4]) == pytest.approx([0.9, 0.9, 0.9])  # monotone
    assert statistics.holm([0.5, 0.4, 0.45]) == [1.0, 1.0, 1.0]  # capped at 1
    assert statistics.holm([0.01, 0.4, 0.6]) == pytest.approx([0.03, 0.8, 0.8])
    assert statistics.holm([0.02]) == [0.02] and statistics.holm([]) == []
    assert statistics.holm([0.01, 0.01, 0.5]) == pytest.approx([0.03, 0.03, 0.5])
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = list(rng.random(int(rng.integers(1, 9))) ** 3)
        q = statistics.holm(p)
        assert q == pytest.approx(holm_by_formula(p), abs=1e-15)
        assert all(qi >= pi and qi <= 1 for pi, qi in zip(p, q, strict=True))
        by_p = [q[j] for j in np.argsort(p, kind="stable")]
        assert by_p == sorted(by_p)  # monotone in p


def test_p_value():
    assert statistics.p_value(np.zeros(100)) == 1.0
    assert statistics.p_value(np.full(100, 0.3)) == 0.0
    assert statistics.p_value(np.full(100, -0.3)) == 0.0
    assert statistics.p_value(np.array([-1.0, 1.0, -2.0, 2.0])) == 1.0
    assert statistics.p_value(np.array([-1.0, 1.0, 2.0, 3.0])) == 0.5
    assert statistics.p_value(np.array([0.0, 1.0, 2.0, 3.0])) == 0.5  # 0 counts in both tails
    assert statistics.p_value(np.r_[np.full(3, -1.0), np.ones(97)]) == pytest.approx(0.06)


# ---- 6. rows without statistics beside rows with them -----------------------------------------

def stat_columns(cells: list[str]) -> list[str]:
    """The 4 statistics cells of a table row [#, method, 5 metrics, 4 stats, source]."""
    assert len(cells) == 2 + len(METRIC_NAMES) + len(leaderboard.STAT_COLUMNS) + 1, cells
    return cells[2 + len(METRIC_NAMES):-1]


def md_rows(md: str) -> dict[str, list[str]]:
    out = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| # "):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            out[cells[1].strip("*")] = cells
    return out


def rich_rows(board: dict) -> dict[str, list[str]]:
    console = Console(file=io.StringIO(), width=500)
    console.print(leaderboard.rich_table(board))
    out = {}
    for line in console.file.getvalue().splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if len(cells) > 2 and cells[0].isdigit():
            out[cells[1]] = cells
    return out


@pytest.fixture
def published(tmp_path, shift_board):
    """A ``brats`` board (so with the paper's reported rows) written by ``leaderboard.update``:
    Better, Worse, Twin, Empty with per-case results, and ``old run`` without (an older board's
    row)."""
    rows, _ = shift_board
    old = {k: v for k, v in copy.deepcopy(rows[2]).items() if k != "per_case"}
    old["method"] = "old run"
    board = leaderboard.update(tmp_path, "brats", [*copy.deepcopy(rows), old],
                               {"command": "wsss-bench run"}, name="stats",
                               bootstrap=statistics.Bootstrap(resamples=200, seed=0))
    return tmp_path, board


def test_rows_without_per_case_results_carry_no_stats_and_render_dashes(published):
    where, board = published
    by = {r["method"]: r for r in board["rows"]}
    reported = [r for r in board["rows"] if r["source"] == "reported"]
    assert reported and all("stats" not in r and "per_case" not in r for r in reported)
    assert "stats" not in by["old run"]
    assert all("stats" in by[m] for m in ("Better", "Worse", "Twin", "Empty"))
    md = (where / "stats.md").read_text()
    assert md == leaderboard.render_markdown(board)
    for cells in (md_rows(md), rich_rows(board)):
        assert stat_columns(cells["old run"]) == ["—"] * 4
        assert all(stat_columns(cells[r["method"]]) == ["—"] * 4 for r in reported)
        lo, hi = by["Better"]["stats"]["ci"]["paper_dsc"]
        assert stat_columns(cells["Better"])[:3] == [f"{lo:.4f}–{hi:.4f}", "1 [1–1]", "best"]
        assert stat_columns(cells["Worse"])[2] == "no (p <0.005)"  # p = 0 of 200 resamples
        assert stat_columns(cells["Twin"])[2] == "yes (p 1.000)"
        assert by["Better"]["stats"]["vs_empty"]["diff"] > 0
        assert stat_columns(cells["Better"])[3] == "yes (p <0.005)"
        assert stat_columns(cells["Empty"])[3] == "—"
    lines = list(csv.DictReader(io.StringIO(leaderboard.render_csv(board))))
    stat_keys = [f"{m}_ci_{s}" for m in METRIC_NAMES for s in ("low", "high")]
    stat_keys += leaderboard.CSV_STATS
    for line in lines:
        if line["method"] == "old run" or line["source"] == "reported":
            assert all(line[k] == "" for k in stat_keys), line["method"]
        else:
            st = by[line["method"]]["stats"]
            assert [float(line[f"{m}_ci_{s}"]) for m in METRIC_NAMES for s in ("low", "high")
                    ] == [v for m in METRIC_NAMES for v in st["ci"][m]]
            assert [float(line["rank_low"]), float(line["rank_high"])] == st["rank"]["interval"]
    assert "Uncertainty (paired case-level bootstrap" in md


def test_update_round_trips_per_case_and_writes_each_table_on_one_line(published, shift_board):
    where, board = published
    path = where / "stats.json"
    text = path.read_text()
    loaded = leaderboard.load(path)
    assert loaded == board == json.loads(text)
    rows, _ = shift_board
    by = {r["method"]: r for r in loaded["rows"]}
    for row in rows:
        assert by[row["method"]]["per_case"] == row["per_case"]
        assert by[row["method"]]["metrics"] == row["metrics"]
    assert text == leaderboard.dumps(board)
    lines = [ln.strip().rstrip(",") for ln in text.splitlines() if '"dice_slice_sum"' in ln]
    entries = [e for r in board["rows"] for e in r.get("per_case", [])]
    assert len(entries) == 4 * 3 and [json.loads(ln) for ln in lines] == entries
    # the per-case tables of a loaded board still give each fold's metrics bit for bit
    for row in rows:
        stored = by[row["method"]]
        for k, e in enumerate(stored["per_case"]):
            got = metrics.metrics_of_cases(e)
            assert all(got[m] == row["metrics"][m]["folds"][k] for m in METRIC_NAMES)


def test_an_old_board_without_per_case_loads_and_renders(tmp_path):
    row = {"method": "resnet18 / gradcam / none", "backbones": ["resnet18"], "cam": "gradcam",
           "ensemble": None, "filter": "none", "options": {}, "dataset_options": {},
           "thresholds": [[0.5]], "source": "measured", "run": {"date": "2025-01-01"},
           "metrics": {m: {"mean": 0.5, "std": 0.1, "folds": [0.4, 0.6]}
                       for m in METRIC_NAMES}}
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"dataset": "phantom", "name": "old", "rows": [row]}))
    board = leaderboard.load(path)
    assert board["rows"] == [row] and "statistics" not in board
    md = leaderboard.render_markdown(board)
    assert stat_columns(md_rows(md)[row["method"]]) == ["—"] * 4
    assert "No statistics" in md
    assert stat_columns(rich_rows(board)[row["method"]]) == ["—"] * 4
    statistics.annotate(board, statistics.Bootstrap(resamples=100))
    assert "stats" not in board["rows"][0] and board["statistics"]["resamples"] == 100


def test_design_rejects_rows_it_cannot_resample():
    rows, _ = synthetic(2, (3, 4), {"A": (0.5, 2, (0, 1))})
    row = rows[0]
    assert statistics.design(row) == case_order(row)
    assert statistics.design({k: v for k, v in row.items() if k != "per_case"}) is None
    for broken in (
        lambda r: r["per_case"][0].pop("fold"),
        lambda r: r["per_case"][0].update(fold=5),  # folds 0, 1 and 5
        lambda r: r["per_case"][1].update(fold="1"),
        lambda r: r["per_case"][3].update(ids=[*r["per_case"][3]["ids"][:-1], "other"]),
        lambda r: r["per_case"][0]["counts"][0].__setitem__(1, -1),
        lambda r: r["per_case"][1].pop("dice_slice_sum"),
        lambda r: r.update(per_case=[]),
    ):
        bad = copy.deepcopy(row)
        broken(bad)
        assert statistics.design(bad) is None and statistics.group_key(bad) is None


def test_design_and_case_problem_name_a_ragged_counts_table():
    """A hand-edited or damaged board: one case's counts have 3 numbers. ``case_problem``
    promises a phrase (or None), and ``design`` None for a row it cannot use."""
    rows, _ = synthetic(2, (3, 4), {"A": (0.5, 2, (0,))})
    bad = copy.deepcopy(rows[0])
    bad["per_case"][0]["counts"][0] = bad["per_case"][0]["counts"][0][:3]
    assert isinstance(metrics.case_problem(bad["per_case"][0]), str)
    assert statistics.design(bad) is None


def test_leaderboard_command_skips_a_damaged_per_case_table(tmp_path, capsys):
    """The board is a JSON file people edit; a row whose per-case counts are damaged gets no
    statistics ("—"), as ``design`` documents, rather than stopping the command."""
    rows, _ = synthetic(2, (3, 4), {"Empty": (0.0, 0, (0,)), "A": (0.5, 2, (0,))})
    rows[1]["per_case"][0]["counts"][0] = rows[1]["per_case"][0]["counts"][0][:3]
    path = tmp_path / "phantom.json"
    path.write_text(json.dumps({"dataset": "phantom", "name": "phantom", "rows": rows}))
    code, out, err = cli(["leaderboard", "--dataset", "phantom", "--leaderboard-dir",
                          str(tmp_path), "--bootstrap", "20", "--format", "md"], capsys)
    assert code == 0, err
    assert stat_columns(md_rows(out)["A"]) == ["—"] * 4


# ---- 7. rows of other cases or other data are other groups ------------------------------------

def test_groups_of_other_cases_or_data_are_ranked_apart():
    base = {"Empty": (0.0, 0, (0,)), "A": (0.8, 2, (0,)), "B": (0.5, 2, (0,))}
    first, _ = synthetic(21, (6, 6, 6), base)
    noisy, _ = synthetic(21, (6, 6, 6), {"Empty": (0.0, 0, (0,)), "A": (0.3, 9, (0,)),
                                          "B": (0.2, 9, (0,))})
    for r in noisy:
        r["dataset_options"] = {"noise": 0.1}
    split2, _ = synthetic(22, (5, 5), {"A2": (0.4, 2, (0,)), "B2": (0.45, 2, (0,))})
    assert statistics.design(first[0]) == statistics.design(noisy[0])  # same cases, other data
    rows = [*first, *noisy, *split2]
    assert max(r["metrics"]["paper_dsc"]["mean"] for r in noisy) < min(
        r["metrics"]["paper_dsc"]["mean"] for r in first[1:])
    settings = statistics.Bootstrap(resamples=200, seed=3)
    board = statistics.annotate({"dataset": "phantom", "rows": copy.deepcopy(rows)}, settings)
    groups = {0: board["rows"][:3], 1: board["rows"][3:6], 2: board["rows"][6:]}
    for g, members in groups.items():
        best = [r for r in members if r["stats"]["vs_best"]["best"]]
        assert len(best) == 1, g
        assert best[0]["stats"]["rank"]["interval"][0] == 1
        names = {r["method"] for r in members}
        assert all(r["stats"]["vs_best"]["method"] in names for r in members)
        point = max(members, key=lambda r: r["metrics"]["paper_dsc"]["mean"])
        assert best[0] is point
        # each group's statistics are those of the group annotated alone
        alone = statistics.annotate({"dataset": "phantom",
                                     "rows": copy.deepcopy(rows[3 * g:3 * g + 3]
                                                           if g < 2 else rows[6:])}, settings)
        assert [r["stats"] for r in alone["rows"]] == [r["stats"] for r in members]
    assert groups[1][1]["stats"]["vs_best"]["method"] == "A"
    assert groups[1][1]["stats"]["rank"] == {"median": 1.0, "interval": [1, 1]}
    empty = groups[1][0]["metrics"]["paper_dsc"]["mean"]
    assert groups[1][1]["stats"]["vs_empty"]["diff"] == (
        groups[1][1]["metrics"]["paper_dsc"]["mean"] - empty)  # its own Empty
    assert all(r["stats"]["vs_empty"] is None for r in groups[2])  # no Empty on that split
    assert len({statistics.group_key(r) for r in rows}) == 3


# ---- 8. stored evaluate units -----------------------------------------------------------------

def good_meta() -> dict:
    pred, gt, ids = masks(np.random.default_rng(8), SLICES)
    result = {"thresholds": [0.4], **evaluate.scored(pred, gt, ids)}
    assert result["metrics"] == metrics.score(pred, gt, ids)
    assert result["cases"] == metrics.case_table(metrics.slice_counts(pred, gt), ids)
    return json.loads(json.dumps({"stage": "evaluate", "key": "k", "result": result}))


def test_a_good_evaluate_unit_is_current():
    assert evaluation_outdated(good_meta()) is None


def _set(path: tuple, value):
    def change(meta: dict) -> None:
        target = meta
        for k in path[:-1]:
            target = target[k]
        target[path[-1]] = value
    return change


OUTDATED = {
    "no cases": lambda m: m["result"].pop("cases"),
    "no result": lambda m: m.pop("result"),
    "cases not a dict": _set(("result", "cases"), [1, 2]),
    "a field missing": lambda m: m["result"]["cases"].pop("slices"),
    "lengths differ": lambda m: m["result"]["cases"]["ids"].append("extra"),
    "no cases in it": _set(("result", "cases"), {f: [] for f in metrics.CASE_FIELDS}),
    "3 counts a case": lambda m: m["result"]["cases"].update(
        counts=[c[:3] for c in m["result"]["cases"]["counts"]]),
    "float counts": lambda m: m["result"]["cases"].update(
        counts=[[x + 0.5 for x in c] for c in m["result"]["cases"]["counts"]]),
    "negative count": lambda m: m["result"]["cases"]["counts"][0].__setitem__(0, -1),
    "case without slices": lambda m: m["result"]["cases"]["slices"].__setitem__(1, 0),
    "metric off by one ulp": lambda m: m["result"]["metrics"].update(
        dice_slice=float(np.nextafter(m["result"]["metrics"]["dice_slice"], 2))),
    "metric missing": lambda m: m["result"]["metrics"].pop("dice_volume"),
    "counts of another prediction": lambda m: m["result"]["cases"]["counts"][0].__setitem__(
        0, m["result"]["cases"]["counts"][0][0] + 1),
    "dice sums of another prediction": lambda m: m["result"]["cases"].update(
        dice_slice_sum=[v * 0.5 for v in m["result"]["cases"]["dice_slice_sum"]]),
    # malformed in ways that make numpy raise rather than compare
    "ragged counts": lambda m: m["result"]["cases"]["counts"].__setitem__(0, [1, 2, 3]),
    "text slice counts": lambda m: m["result"]["cases"].update(
        slices=[str(s) for s in m["result"]["cases"]["slices"]]),
    "text dice sums": lambda m: m["result"]["cases"]["dice_slice_sum"].__setitem__(0, "x"),
}


@pytest.mark.parametrize("change", list(OUTDATED))
def test_evaluate_units_without_usable_per_case_results_are_outdated(change):
    meta = good_meta()
    OUTDATED[change](meta)
    reason = evaluation_outdated(meta)
    assert isinstance(reason, str) and reason, change


# ---- 9. the command line ----------------------------------------------------------------------

def cli(args: list[str], capsys) -> tuple[int, str, str]:
    code = run_main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_compare_command_prints_every_metric_and_the_case_wins(published, shift_board, capsys):
    where, _ = published
    rows, raw = shift_board
    capsys.readouterr()
    code, out, err = cli(["compare", "--dataset", "stats", "--leaderboard-dir", str(where),
                          "Better", "Worse", "--bootstrap", "200"], capsys)
    assert code == 0, err
    lesions = lesion_cases(raw["Better"])
    n_cases = sum(len(c) for c in case_order(rows[0]))
    table = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.split("│")[1:-1]]
        if cells and cells[0] in METRIC_NAMES:
            table[cells[0]] = cells
    assert list(table) == list(METRIC_NAMES)
    for m, cells in table.items():
        a, b = rows[2]["metrics"][m]["mean"], rows[1]["metrics"][m]["mean"]
        assert cells[1:4] == [f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"], m
        assert cells[5] == "<0.005"
        assert cells[6:] == [str(lesions), "0", str(n_cases - lesions)], m
    assert "200 resamples" in out
    code, out, err = cli(["compare", "--dataset", "stats", "--leaderboard-dir", str(where),
                          "Worse", "Empty", "--bootstrap", "100", "--format", "json"], capsys)
    assert code == 0, err
    got = json.loads(out)
    assert got["bootstrap"]["resamples"] == 100
    want = statistics.compare(rows[1], rows[0], statistics.Bootstrap(resamples=100))
    assert got["metrics"] == want
    # by hand: a case's metric alone, Worse against Empty
    for m, r in zip(METRIC_NAMES, got["metrics"], strict=True):
        wins = [0, 0, 0]
        for f in range(3):
            for c in raw["Worse"][0, f]:
                x = metrics.metrics_from_counts(raw["Worse"][0, f][c])[m]
                y = metrics.metrics_from_counts(raw["Empty"][0, f][c])[m]
                wins[0 if x > y else 1 if y > x else 2] += 1
        assert [r["wins_a"], r["wins_b"], r["ties"]] == wins, m


def test_compare_command_refuses_unknown_rows_and_rows_without_cases(published, capsys):
    where, _ = published
    board = str(where / "stats.json")
    base = ["compare", "--dataset", "stats", "--leaderboard-dir", str(where)]
    capsys.readouterr()
    code, out, err = cli([*base, "Better", "nonesuch"], capsys)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and board in err and "'nonesuch'" in err
    for other in ("old run", "paper: ResNet-34x50 'and' + Box"):
        code, out, err = cli([*base, "Better", other], capsys)
        assert code == 2 and out == "", other
        assert len(err.strip().splitlines()) == 1 and "no per-case results" in err, other
    code, _, err = cli([*base, "Better", "Worse", "--bootstrap", "0"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_compare_command_refuses_rows_of_other_data(tmp_path, capsys):
    rows, _ = synthetic(5, (3, 3), {"Empty": (0.0, 0, (0,)), "A": (0.6, 2, (0,))})
    rows[1]["dataset_options"] = {"noise": 0.2}
    leaderboard.update(tmp_path, "phantom", rows, {},
                       bootstrap=statistics.Bootstrap(resamples=20))
    capsys.readouterr()
    code, _, err = cli(["compare", "--dataset", "phantom", "--leaderboard-dir", str(tmp_path),
                        "Empty", "A"], capsys)
    assert code == 2 and "different cases or data" in err


def test_leaderboard_command_csv_and_bootstrap_views(published, capsys):
    where, board = published
    base = ["leaderboard", "--dataset", "stats", "--leaderboard-dir", str(where)]
    stored = (where / "stats.json").read_text()
    capsys.readouterr()
    code, out, err = cli([*base, "--format", "csv"], capsys)
    assert code == 0, err
    lines = list(csv.DictReader(io.StringIO(out)))
    filled = ["paper_dsc_ci_low", "paper_dsc_ci_high", "rank_median", "rank_low", "rank_high",
              "top_group"]
    measured = [ln for ln in lines if ln["method"] in ("Better", "Worse", "Twin", "Empty")]
    assert len(measured) == 4 and all(ln[k] != "" for ln in measured for k in filled)
    reported = [ln for ln in lines if ln["source"] == "reported"]
    assert reported and all(ln[k] == "" for ln in reported for k in filled)
    by = {ln["method"]: ln for ln in lines}
    assert by["Worse"]["top_group"] == "False" and by["Better"]["beats_empty"] == "True"
    assert float(by["Better"]["paper_dsc_ci_low"]) == next(
        r for r in board["rows"] if r["method"] == "Better")["stats"]["ci"]["paper_dsc"][0]
    code, out, err = cli([*base, "--bootstrap", "0", "--format", "md"], capsys)
    assert code == 0, err
    cells = md_rows(out)
    assert cells and all(stat_columns(c) == ["—"] * 4 for c in cells.values())
    assert "No statistics" in out
    code, out, err = cli([*base, "--bootstrap", "40", "--format", "json"], capsys)
    assert code == 0, err
    view = json.loads(out)
    assert view["statistics"]["resamples"] == 40
    assert [r.get("stats") is not None for r in view["rows"]] == [
        r.get("stats") is not None for r in board["rows"]]
    assert (where / "stats.json").read_text() == stored  # a view rewrites nothing


def test_run_and_leaderboard_take_a_bootstrap_count():
    from wsss_bench.cli import build_parser, run_config

    parser = build_parser()
    assert run_config(parser.parse_args(["run", "--bootstrap", "7"])).bootstrap == 7
    assert run_config(parser.parse_args(["run", "--bootstrap", "0"])).bootstrap == 0
    assert run_config(parser.parse_args(["run"])).bootstrap == 1000
    assert parser.parse_args(["leaderboard", "--dataset", "x"]).bootstrap is None
    for args in (["run", "--bootstrap", "-1"], ["leaderboard", "--dataset", "x", "--bootstrap",
                                                 "-3"]):
        with pytest.raises(SystemExit) as exc:
            parser.parse_args(args)
        assert exc.value.code == 2


def test_find_row_names_the_board(published):
    where, board = published
    assert leaderboard.find_row(board, "Twin", where / "stats.json")["method"] == "Twin"
    with pytest.raises(UsageError, match="stats.json: no single row named 'x'"):
        leaderboard.find_row(board, "x", where / "stats.json")


def test_levels_are_exact_at_their_boundaries():
    """1 - 0.95 is 0.050000000000000044 in floating point: an adjusted p of exactly 0.05 is
    not significant, and the 95 % rank interval of 1,000 resamples runs from the 25th to the
    975th smallest rank (not the 26th)."""
    settings = statistics.Bootstrap()
    assert settings.alpha == 0.05
    assert statistics._interval(np.arange(1, 1001), 0.95, method="inverted_cdf") == [25, 975]
    p = [0.01, 0.05 / 4, 0.05 / 4, 0.05 / 4, 0.05 / 4]  # Holm: the last four adjust to 0.05
    adjusted = statistics.holm(p)
    assert max(adjusted) == pytest.approx(0.05) and not max(adjusted) < settings.alpha
