"""Stage ``evaluate``: choose a method's thresholds on training slices, score held-out ones.

Per-fold calibration picks the thresholds on the fold's training slices; across-folds
calibration (the paper's Fig. 6) scores the grid on every fold's training slices and picks the
one tuple with the best mean. Either way the chosen thresholds are applied to each fold's
validation slices and scored there.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from wsss_bench.core import calibration, metrics
from wsss_bench.pipeline import timings
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.plan import EvalUnit


def evaluate(unit: EvalUnit, ctx: Context) -> list[dict[str, Any]]:
    """``{"thresholds", "metrics", "cases", "grid"}`` on each of ``unit.folds`` (the stage
    function): ``cases`` is the per-case table of the validation slices
    (:func:`metrics.case_table`), from which ``metrics`` and every statistic of the leaderboard
    are computed; ``grid`` the selection metric over the threshold grid on the fold's training
    slices (:func:`_landscape`); ``seconds`` the unit's wall time, split evenly over its folds
    (:func:`timings.evaluate_seconds`)."""
    start = time.perf_counter()
    results = _evaluate(unit, ctx)
    return timings.evaluate_seconds(time.perf_counter() - start, results)


def _evaluate(unit: EvalUnit, ctx: Context) -> list[dict[str, Any]]:
    grid = np.asarray(ctx.plan.grid)
    if len(unit.folds) == 1:
        stack, region, (train, _) = _inputs(unit, ctx, 0)
        found = _grid(unit, ctx, stack, region, train, grid)
        return [{**_apply(unit, ctx, stack, region, found.thresholds),
                 "grid": _landscape(ctx, found.scores)}]
    scores = []
    for i in range(len(unit.folds)):  # pass 1: every fold's training grid
        stack, region, (train, _) = _inputs(unit, ctx, i)
        scores.append(_grid(unit, ctx, stack, region, train, grid).scores)
    chosen = calibration.choose_across_folds(scores, grid).thresholds
    return [{**_apply(unit, ctx, *_inputs(unit, ctx, i)[:2], chosen, fold_index=i),
             "grid": _landscape(ctx, scores[i])}
            for i in range(len(unit.folds))]  # pass 2: the chosen tuple on every fold


def _landscape(ctx: Context, scores: np.ndarray) -> dict[str, Any]:
    """The selection metric over the threshold grid on the fold's training slices (one axis
    per threshold; the paper's Fig. 6), as stored with the unit's results."""
    return {"metric": ctx.plan.config.select_by, "thresholds": [float(t) for t in ctx.plan.grid],
            "scores": np.asarray(scores, dtype=np.float64)}  # stored as grid.npy


def empty(ctx: Context, fold: int) -> dict[str, Any]:
    """``{"metrics", "cases"}`` of predicting no lesion anywhere on ``fold``'s validation
    slices."""
    _, val = ctx.split(fold)
    gt = ctx.data.masks[val]
    return scored(np.zeros_like(gt), gt, ctx.data.case_ids[val])


def scored(pred: np.ndarray, gt: np.ndarray, case_ids: np.ndarray) -> dict[str, Any]:
    """``{"metrics", "cases"}``: the per-case table of ``pred`` against ``gt`` and the five
    metrics computed from it."""
    table = metrics.case_table(metrics.slice_counts(pred, gt), case_ids)
    return {"metrics": metrics.metrics_of_cases(table), "cases": table}


def _inputs(unit: EvalUnit, ctx: Context, i: int):
    """The unit's CAMs on fold ``unit.folds[i]`` (M arrays float16[N,H,W] as stored,
    memory-mapped: never stacked or subset whole, calibration reads them in blocks), its
    filter's region and the fold's (training, validation) slice indices."""
    fold = unit.folds[i]
    stack = [ctx.cams(key) for key in unit.cam_keys[i]]
    return stack, ctx.region(unit.filter, fold), ctx.split(fold)


def _ensemble(unit: EvalUnit, ctx: Context) -> Any:
    return ctx.plugin("ensembles", unit.ensemble) if unit.ensemble else None


def _grid(unit: EvalUnit, ctx: Context, stack: list[np.ndarray], region: np.ndarray,
          train: np.ndarray, grid: np.ndarray) -> calibration.GridResult:
    """Every grid point scored on the fold's training slices."""
    data = ctx.data
    return calibration.grid_search(
        stack, data.masks, ensemble=_ensemble(unit, ctx), thresholds=grid,
        metric=ctx.plan.config.select_by, case_ids=data.case_ids, region=region, slices=train)


def _apply(unit: EvalUnit, ctx: Context, stack: list[np.ndarray], region: np.ndarray,
           thresholds: tuple[float, ...], fold_index: int = 0) -> dict[str, Any]:
    """The thresholds applied to the fold's validation slices, scored."""
    _, val = ctx.split(unit.folds[fold_index])
    data = ctx.data
    pred = calibration.binarize(stack, thresholds, _ensemble(unit, ctx), region, slices=val)
    return {"thresholds": [float(t) for t in thresholds],
            **scored(pred, data.masks[val], data.case_ids[val])}
