"""Rows from the evaluate results, and the run published into its leaderboard."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench.core import leaderboard, statistics
from wsss_bench.core.leaderboard import tagged
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.core.progress import Reporter
from wsss_bench.core.provenance import run_info
from wsss_bench.errors import RunIncomplete
from wsss_bench.pipeline import evaluate
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.plan import EvalUnit, Plan
from wsss_bench.pipeline.prepare import data_dir
from wsss_bench.pipeline.settings import EMPTY, RunConfig
from wsss_bench.registry import Registry


@dataclass
class MethodResult:
    """One leaderboard row in the making: per-fold thresholds and metrics."""

    backbones: tuple[str, ...]
    cam: str | None
    ensemble: str | None
    filter: str | None
    symbol: str | None = None  # how the ensemble is shown, e.g. the paper's '<' for smaller
    thresholds: list[list[float] | None] = field(default_factory=list)
    folds: list[dict[str, float]] = field(default_factory=list)
    cases: list[dict[str, Any]] = field(default_factory=list)  # per fold: seed, fold, table
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # non-default, by plugin
    dataset: str = ""  # the dataset's name, shown with its options when it has some

    @property
    def method(self) -> str:
        """The method's name: ``ensemble(backbones) / cam / filter`` (the paper's symbol when
        set), each plugin with its non-default options (``eigencam[center=false]``). With the
        dataset's options (:attr:`dataset_options`) it is the row's identity: rows made with
        other options are other rows."""
        if not self.backbones:
            return EMPTY
        nets = [tagged(b, self.options) for b in self.backbones]
        core = (f"{tagged(self.ensemble, self.options, self.symbol)}({','.join(nets)})"
                if self.ensemble else nets[0])
        return f"{core} / {tagged(self.cam, self.options)} / {tagged(self.filter, self.options)}"

    @property
    def dataset_options(self) -> dict[str, Any]:
        return dict(self.options.get(self.dataset, {}))

    @property
    def key(self) -> str:
        """The row's identity: the method and the dataset's non-default options."""
        return leaderboard.row_key({"method": self.method,
                                    "dataset_options": self.dataset_options})

    def parts(self) -> list[str]:
        """The plugins this row depends on (whose options it shows)."""
        return [p for p in (self.dataset, *self.backbones, self.cam, self.ensemble, self.filter)
                if p]


def _result(plan: Plan, ctx: Context, unit: EvalUnit | None) -> MethodResult:
    """An empty row of ``unit``'s method (None: the Empty baseline), options attached."""
    if unit is None:
        res = MethodResult((), None, None, None, dataset=plan.config.dataset)
    else:
        ensemble = ctx.plugin("ensembles", unit.ensemble) if unit.ensemble else None
        res = MethodResult(unit.group, unit.cam, unit.ensemble, unit.filter,
                           ensemble.symbol if ensemble else None, dataset=plan.config.dataset)
    res.options = {p: dict(plan.row_options[p]) for p in res.parts() if p in plan.row_options}
    return res


def rows(plan: Plan, ctx: Context, found: list[tuple[EvalUnit, list[dict[str, Any]]]],
         strides: dict[str, int], reused: int, reporter: Reporter,
         incomplete: set[str] = frozenset(),
         timing: Callable[[list[EvalUnit]], dict[str, Any]] | None = None
         ) -> list[dict[str, Any]]:
    """Leaderboard rows: seed-major, fold by fold, the Empty baseline first. A method in
    ``incomplete`` (a unit of it failed) gets no row: a leaderboard keeps its previous one.
    ``timing``: a row's ``run.timings`` from its evaluate units (:mod:`timings`)."""
    results: dict[str, MethodResult] = {}
    units_of: dict[str, list[EvalUnit]] = {}
    by_fold: dict[tuple[int, int], list[tuple[EvalUnit, dict[str, Any]]]] = {}
    found = [(u, r) for u, r in found if results_key(u, ctx) not in incomplete]
    for unit, per_fold in found:
        for fold, result in zip(unit.folds, per_fold, strict=True):
            by_fold.setdefault((unit.seed, fold), []).append((unit, result))
    order = {u.method: i for i, u in enumerate(plan.evaluate)}
    for seed in plan.seeds:
        for fold in range(len(plan.folds)):
            empty = _result(plan, ctx, None)
            empty = results.setdefault(empty.key, empty)
            empty.thresholds.append(None)
            _add(empty, seed, fold, evaluate.empty(ctx, fold))
            done = sorted(by_fold.get((seed, fold), []), key=lambda p: order[p[0].method])
            for unit, result in done:
                res = _result(plan, ctx, unit)
                res = results.setdefault(res.key, res)
                units_of.setdefault(res.key, []).append(unit)
                res.thresholds.append(result["thresholds"])
                _add(res, seed, fold, result)
            if not done:
                continue
            best = max(done, key=lambda p: p[1]["metrics"]["paper_dsc"])
            reporter.summary(
                f"[bold]evaluate[/] {plan.label(seed, fold)}: {len(done)} (cam, filter, "
                f"ensemble) units; best on validation: "
                f"{results_key(best[0], ctx)} paper_dsc {best[1]['metrics']['paper_dsc']:.4f} "
                f"(Empty {empty.folds[-1]['paper_dsc']:.4f})")
    reporter.summary(f"[bold]evaluate[/] {len(plan.evaluate)} units ({reused} reused)")
    info = run_info(torch.device(plan.device), plan.config.seed, plan.settings)
    info["plugins"] = plan.plugin_settings
    info["plugin_versions"] = dict(plan.versions)
    where = data_dir(plan)
    info["effective"] = {"image_size": list(ctx.data.images.shape[2:]),
                         "data_dir": str(where) if where else None,
                         "folds": len(plan.folds), "seeds": list(plan.seeds),
                         "in_chans": plan.in_chans, "output_stride": strides,
                         "weights": dict(plan.weights), "amp": plan.amp,
                         "channels_last": plan.channels_last}
    return [_row(plan, r, info if timing is None
                 else {**info, "timings": timing(units_of.get(r.key, []))})
            for r in results.values()]


def _add(res: MethodResult, seed: int, fold: int, result: dict[str, Any]) -> None:
    """One fold's metrics and per-case table (:func:`evaluate.scored`) added to a row."""
    res.folds.append(result["metrics"])
    res.cases.append({"seed": seed, "fold": fold, **result["cases"]})


def results_key(unit: EvalUnit, ctx: Context) -> str:
    """The row key of ``unit``'s method."""
    return _result(ctx.plan, ctx, unit).method


def _row(plan: Plan, res: MethodResult, info: dict[str, Any]) -> dict[str, Any]:
    metrics = {}
    for name in METRIC_NAMES:
        values = [f[name] for f in res.folds]
        metrics[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                         "folds": values}
    return {"method": res.method, "seeds": list(plan.seeds), "backbones": list(res.backbones),
            "cam": res.cam, "ensemble": res.ensemble, "filter": res.filter,
            "options": {k: v for k, v in res.options.items() if k != res.dataset},
            "dataset_options": res.dataset_options,
            "thresholds": res.thresholds, "metrics": metrics, "per_case": res.cases,
            "source": "measured", "run": info}


def run_and_publish(config: RunConfig, registry: Registry, reporter: Reporter,
                    command: str | None = None) -> dict[str, Any]:
    """Run ``config`` and merge its rows into ``<leaderboard_dir>/<dataset>.json`` and ``.md``;
    :class:`RunIncomplete` (carrying the board) after publishing when some unit failed."""
    from wsss_bench.pipeline.run import execute

    outcome = execute(config, registry, reporter)
    found_rows, folds = outcome.rows, outcome.folds
    for row in found_rows:
        row["run"]["command"] = command
    header = {"split": folds, "split_seed": None if config.folds_file else config.seed,
              "split_file": config.folds_file, "command": command}
    if config.preset:  # what still differs from the paper, and what this run changed
        from wsss_bench.core import deviations, presets

        header["deviations"] = [dataclasses.asdict(d)
                                for d in deviations.for_run(config.dataset, config.methods)]
        header["preset_overrides"] = presets.overrides(config, registry)
    with outcome.clock.stage("publish"):
        board = publish(config, outcome, found_rows, header, reporter)
    reporter.summary(outcome.clock.breakdown())
    if outcome.failures:  # published what is whole; the caller reports the rest
        raise RunIncomplete(outcome.failures, board)
    return board


def publish(config: RunConfig, outcome: Any, rows: list[dict[str, Any]],
            header: dict[str, Any], reporter: Reporter | None = None) -> dict[str, Any]:
    """Merge ``rows`` into the run's leaderboard; with ``config.figures``, draw the run's
    figures first (the board lists them) and the board's ranking after. The ranking of a
    board that lists one is redrawn by every update, so it never shows older numbers. A
    figure that cannot be drawn is a warning line, never an error."""
    from wsss_bench.figures import from_run

    name = config.leaderboard_name or config.dataset
    draw = config.figures and outcome.plan is not None
    problems: list[str] = []
    start = time.perf_counter()
    drawn: list[Path] = []
    if draw:
        out = from_run.figure_dir(config.leaderboard_dir, name)
        drawn = from_run.write_run_figures(outcome.plan, outcome.context, outcome.evaluations,
                                           out, problems)
    seconds = time.perf_counter() - start
    if draw:
        header = {**header, "figures": sorted({*from_run.listed(config.leaderboard_dir, name),
                                               from_run.ranking_link(name)})}
    board = leaderboard.update(Path(config.leaderboard_dir), config.dataset, rows, header,
                               name=config.leaderboard_name,
                               bootstrap=statistics.Bootstrap(resamples=config.bootstrap))
    if from_run.ranking_link(name) in (board.get("figures") or []):
        start = time.perf_counter()
        try:
            drawn.append(from_run.write_ranking(board, Path(config.leaderboard_dir)))
        except Exception as exc:  # noqa: BLE001 - a figure is reported, never fatal
            problems.append(f"ranking.png: not drawn ({type(exc).__name__}: {exc})")
        seconds += time.perf_counter() - start
    if reporter is not None and drawn:
        reporter.summary(f"[bold]figures[/] {len(drawn)} PNGs in "
                         f"{from_run.figure_dir(config.leaderboard_dir, name)} "
                         f"({seconds:.1f} s)")
    for line in problems:
        warnings.warn(f"figure {line}", stacklevel=2)
    return board
