"""How sure a leaderboard is: bootstrap intervals, paired comparisons and rank stability.

Every measured row keeps, per (seed, fold), the per-case table of its validation cases
(:func:`wsss_bench.core.metrics.case_table`), so every metric of any multiset of cases is
exact. The bootstrap resamples *cases* (never slices: the slices of a case are not
independent) with replacement within each fold, recomputes each fold's metric from the
resampled cases' counts, and averages over folds and seeds as the leaderboard does. Every row
of a board is scored on the same resampled cases (a paired bootstrap), so differences between
rows, their p-values and the rows' ranks come from one set of resamples:

- ``ci``: the percentile interval of each metric (level 95 %);
- ``vs_best`` / ``vs_empty``: the difference to the best row and to ``Empty`` (point
  estimate, percentile interval, two-sided bootstrap p-value, Holm-adjusted across rows);
  ``top_group``: not significantly worse than the best; ``beats``: significantly better than
  ``Empty``;
- ``rank``: the median rank and the 95 % rank interval over the resamples (rank 1 = best, tied
  rows share the better rank), as challengeR reports (Wiesenfarth et al., Sci. Rep. 2021).

Rows are compared only with rows scored on the same cases of the same dataset configuration (a
"group"); a row without per-case results (an old board, a reported row) gets no statistics.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from wsss_bench.core import metrics
from wsss_bench.core.metrics import METRIC_NAMES

EMPTY = "Empty"  # the baseline row: no lesion predicted anywhere
DECIMALS = 12  # replicates are rounded so that rows with equal cases tie exactly


@dataclass(frozen=True)
class Bootstrap:
    """The bootstrap's settings: resamples (0 = no statistics), seed, level, and the metric
    that ranks rows and is tested (the leaderboard's sort metric)."""

    resamples: int = 1000
    seed: int = 0
    level: float = 0.95
    metric: str = "paper_dsc"

    @property
    def alpha(self) -> float:
        """The significance level ``1 - level`` (0.05, not 0.050000000000000044)."""
        return round(1.0 - self.level, 12)

    def header(self) -> dict[str, Any]:
        """What a board records about how its statistics were made."""
        return {"method": "paired case-level bootstrap, stratified by fold",
                "resamples": self.resamples, "seed": self.seed, "level": self.level,
                "metric": self.metric, "p_adjust": "holm"}


# ---- per-case results of rows ---------------------------------------------------------------

def design(row: dict[str, Any]) -> tuple[tuple[str, ...], ...] | None:
    """The validation cases of each fold the row was scored on (sorted, fold order), or None
    when the row has no (well-formed) per-case results."""
    entries = row.get("per_case")
    if not isinstance(entries, list) or not entries:
        return None
    folds: dict[int, tuple[str, ...]] = {}
    for entry in entries:
        fold = entry.get("fold") if isinstance(entry, dict) else None
        if not isinstance(fold, int) or metrics.case_problem(entry) is not None:
            return None
        ids = tuple(sorted(map(str, entry["ids"])))
        if len(set(ids)) != len(ids) or folds.setdefault(fold, ids) != ids:
            return None
    if sorted(folds) != list(range(len(folds))):
        return None
    return tuple(folds[f] for f in range(len(folds)))


def group_key(row: dict[str, Any]) -> str | None:
    """Rows with the same key are scored on the same cases of the same data (case ids, each
    case's slice count and pixel count, dataset options): comparable."""
    cases = design(row)
    if cases is None:
        return None
    sizes = {}
    for entry in row["per_case"]:
        for case, counts, n in zip(entry["ids"], entry["counts"], entry["slices"], strict=True):
            sizes[f"{entry['fold']}/{case}"] = [int(n), int(sum(counts))]
    return json.dumps([cases, sizes, row.get("dataset_options") or {}], sort_keys=True)


def _columns(entry: dict[str, Any], order: tuple[str, ...]) -> np.ndarray:
    """float64[cases, 7]: tp, fp, fn, tn, slices, sum of slice Dice, case Dice, in ``order``."""
    pos = {str(c): i for i, c in enumerate(entry["ids"])}
    idx = [pos[c] for c in order]
    counts = np.asarray(entry["counts"], dtype=np.int64)[idx]
    return np.column_stack([counts.astype(np.float64),
                            np.asarray(entry["slices"], dtype=np.float64)[idx],
                            np.asarray(entry["dice_slice_sum"], dtype=np.float64)[idx],
                            metrics.foreground_dice(counts)])


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.ones(np.broadcast_shapes(num.shape, den.shape)),
                     where=den != 0)


def _values(agg: np.ndarray, cases: np.ndarray) -> dict[str, np.ndarray]:
    """The five metrics of aggregated columns ``[..., 7]`` (see :func:`_columns`) of
    multisets holding ``cases`` cases; the same arithmetic as :func:`metrics.metrics_of_cases`."""
    tp, fp, fn, tn, slices, dice_sum, case_dice = np.moveaxis(agg, -1, 0)
    miou = (_ratio(tn, tn + fp + fn) + _ratio(tp, tp + fp + fn)) / 2.0
    return {"paper_miou": miou, "paper_dsc": 2.0 * miou / (1.0 + miou),
            "dice_pooled": _ratio(2 * tp, 2 * tp + fp + fn),
            "dice_slice": dice_sum / slices, "dice_volume": case_dice / cases}


def fold_values(rows: list[dict[str, Any]], fold: int, order: tuple[str, ...],
                weights: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's metrics on multisets of fold ``fold``'s cases: ``weights[b, c]`` copies of
    case ``order[c]`` in multiset ``b``. Returns metric -> float64[rows, B], averaged over
    each row's seeds."""
    cols, owners = [], []
    for r, row in enumerate(rows):
        for entry in row["per_case"]:
            if entry["fold"] == fold:
                cols.append(_columns(entry, order))
                owners.append(r)
    agg = (weights @ np.concatenate(cols, axis=1)).reshape(len(weights), len(cols), 7)
    values = _values(agg, weights.sum(axis=1)[:, None])
    per_row = np.bincount(owners, minlength=len(rows))[:, None]
    out = {}
    for name, v in values.items():
        summed = np.zeros((len(rows), len(weights)))
        np.add.at(summed, np.asarray(owners), v.T)
        out[name] = summed / per_row
    return out


def resample_indices(sizes: list[int], resamples: int, seed: int) -> list[np.ndarray]:
    """For each fold of ``sizes`` cases, int[resamples, size]: the cases drawn (with
    replacement) into each resample. One seeded generator, folds in order."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, n, size=(resamples, n)) for n in sizes]


def weights_of(indices: np.ndarray, n: int) -> np.ndarray:
    """float64[B, n]: how often each of ``n`` cases was drawn into each resample."""
    b = len(indices)
    flat = (indices + n * np.arange(b)[:, None]).ravel()
    return np.bincount(flat, minlength=b * n).reshape(b, n).astype(np.float64)


def replicates(rows: list[dict[str, Any]], cases: tuple[tuple[str, ...], ...],
               settings: Bootstrap) -> dict[str, np.ndarray]:
    """metric -> float64[rows, resamples]: each row's leaderboard value (mean over folds and
    seeds) on each resample of the cases ``cases`` (the rows' shared :func:`design`)."""
    draws = resample_indices([len(c) for c in cases], settings.resamples, settings.seed)
    total = {m: np.zeros((len(rows), settings.resamples)) for m in METRIC_NAMES}
    for fold, order in enumerate(cases):
        values = fold_values(rows, fold, order, weights_of(draws[fold], len(order)))
        for m in METRIC_NAMES:
            total[m] += values[m] * _fold_share(rows, fold)[:, None]
    return total


def _fold_share(rows: list[dict[str, Any]], fold: int) -> np.ndarray:
    """Each row's weight of ``fold`` in its mean over (seed, fold) entries."""
    return np.array([sum(e["fold"] == fold for e in row["per_case"]) / len(row["per_case"])
                     for row in rows])


# ---- tests and ranks ------------------------------------------------------------------------

def p_value(diffs: np.ndarray) -> float:
    """Two-sided bootstrap p-value of ``diffs`` (replicates of a difference) against 0: twice
    the share of the smaller tail, 0 counting in both tails (identical rows give 1). It is 0
    when no resample reaches 0: below ``1/len(diffs)``, the resolution of the bootstrap."""
    low = np.count_nonzero(diffs <= 0) / diffs.size
    high = np.count_nonzero(diffs >= 0) / diffs.size
    return float(min(1.0, 2.0 * min(low, high)))


def holm(p: list[float]) -> list[float]:
    """Holm's step-down adjustment of ``p`` (family-wise error across the list)."""
    m = len(p)
    out = [0.0] * m
    running = 0.0
    for i, j in enumerate(sorted(range(m), key=lambda k: p[k])):
        running = max(running, min(1.0, (m - i) * p[j]))
        out[j] = running
    return out


def ranks(values: np.ndarray) -> np.ndarray:
    """int[rows, B]: rank of each row in each resample (1 = highest; ties share the better)."""
    r, b = values.shape
    step = max(1, 10_000_000 // max(1, r * r))  # resamples per block: bounded memory
    return np.concatenate([1 + (v[None, :, :] > v[:, None, :]).sum(axis=1)
                           for v in (values[:, i:i + step] for i in range(0, max(b, 1), step))],
                          axis=1)


def _interval(x: np.ndarray, level: float, **kw: Any) -> list[float]:
    a = round((1.0 - level) / 2.0, 12)  # 0.025 exactly: the 25th of 1000 ranks, not the 26th
    return [float(v) for v in np.quantile(x, [a, 1.0 - a], **kw)]


def _comparison(diffs: np.ndarray, point: float, level: float) -> dict[str, Any]:
    return {"diff": point, "ci": _interval(diffs, level), "p": p_value(diffs)}


def group_statistics(rows: list[dict[str, Any]], settings: Bootstrap) -> list[dict[str, Any]]:
    """The statistics of rows of one group (same :func:`group_key`), in the given order."""
    cases = design(rows[0])
    reps = replicates(rows, cases, settings)
    main = np.round(reps[settings.metric], DECIMALS)
    point = [row["metrics"][settings.metric]["mean"] for row in rows]
    best = max(range(len(rows)), key=lambda r: (point[r], -r))
    empty = next((r for r, row in enumerate(rows) if row["method"] == EMPTY), None)
    rank = ranks(main)
    out = []
    for r in range(len(rows)):
        out.append({
            "ci": {m: _interval(reps[m][r], settings.level) for m in METRIC_NAMES},
            "rank": {"median": float(np.median(rank[r])),
                     "interval": [int(v) for v in _interval(rank[r], settings.level,
                                                            method="inverted_cdf")]},
            "vs_best": {"method": rows[best]["method"],
                        **_comparison(main[r] - main[best], point[r] - point[best],
                                      settings.level)},
            "vs_empty": None if empty is None or r == empty else
            _comparison(main[r] - main[empty], point[r] - point[empty], settings.level)})
    for field, who in (("vs_best", [r for r in range(len(rows)) if r != best]),
                       ("vs_empty", [r for r in range(len(rows)) if out[r]["vs_empty"]])):
        for r, q in zip(who, holm([out[r][field]["p"] for r in who]), strict=True):
            out[r][field]["p_holm"] = q
    out[best]["vs_best"]["p_holm"] = 1.0
    for r, st in enumerate(out):
        st["vs_best"]["best"] = r == best
        st["vs_best"]["top_group"] = r == best or st["vs_best"]["p_holm"] >= settings.alpha
        if st["vs_empty"] is not None:
            st["vs_empty"]["beats"] = (st["vs_empty"]["diff"] > 0
                                       and st["vs_empty"]["p_holm"] < settings.alpha)
    return out


def annotate(board: dict[str, Any], settings: Bootstrap) -> dict[str, Any]:
    """Set ``stats`` on every measured row with per-case results (removed from the others, and
    from all rows when ``settings.resamples`` is 0) and ``statistics`` in the header."""
    measured = [r for r in board["rows"] if r.get("source", "measured") == "measured"]
    for row in board["rows"]:
        row.pop("stats", None)
    if settings.resamples <= 0:
        board["statistics"] = None
        return board
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in measured:
        key = group_key(row)
        if key is not None:
            groups.setdefault(key, []).append(row)
    for rows in groups.values():
        for row, stats in zip(rows, group_statistics(rows, settings), strict=True):
            row["stats"] = stats
    board["statistics"] = settings.header()
    return board


# ---- two rows, every metric -----------------------------------------------------------------

def per_case_values(row: dict[str, Any], cases: tuple[tuple[str, ...], ...]
                    ) -> dict[str, np.ndarray]:
    """metric -> float64[all cases]: the row's metrics of each case alone (mean over seeds),
    folds in order, cases in ``cases`` order."""
    out: dict[str, list[np.ndarray]] = {m: [] for m in METRIC_NAMES}
    for fold, order in enumerate(cases):
        values = fold_values([row], fold, order, np.eye(len(order)))
        for m in METRIC_NAMES:
            out[m].append(values[m][0])
    return {m: np.concatenate(v) for m, v in out.items()}


def compare(a: dict[str, Any], b: dict[str, Any], settings: Bootstrap) -> list[dict[str, Any]]:
    """Paired comparison of rows ``a`` and ``b`` (same group) for every metric: values,
    ``a - b`` with interval and p-value, and how many cases each wins (per-case metric)."""
    cases = design(a)
    reps = replicates([a, b], cases, settings)
    alone = [per_case_values(row, cases) for row in (a, b)]
    out = []
    for m in METRIC_NAMES:
        va, vb = (np.round(v, DECIMALS) for v in (alone[0][m], alone[1][m]))
        diffs = np.round(reps[m][0], DECIMALS) - np.round(reps[m][1], DECIMALS)
        point = a["metrics"][m]["mean"] - b["metrics"][m]["mean"]
        out.append({"metric": m, "a": a["metrics"][m]["mean"], "b": b["metrics"][m]["mean"],
                    **_comparison(diffs, point, settings.level),
                    "wins_a": int((va > vb).sum()), "wins_b": int((vb > va).sum()),
                    "ties": int((va == vb).sum())})
    return out
