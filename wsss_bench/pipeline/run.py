"""The driver: build the plan, prepare and split the data, run each stage's pending units on
the executor, store every result, publish the rows.

::

    Plan.build ─► prepare ─► split ─► plan.with_data ─► train ─► cams ─► evaluate ─► rows
                (slice cache)                         (one stage at a time on the executor;
                                                       finished units come from the store)
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch

from wsss_bench.core import metrics
from wsss_bench.core.progress import Reporter
from wsss_bench.core.store import Store, digest
from wsss_bench.errors import RunIncomplete, UsageError
from wsss_bench.executors import UnitFailed
from wsss_bench.pipeline import cams, evaluate, publish, timings, train
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.folds import split
from wsss_bench.pipeline.plan import CamUnit, EvalUnit, Plan, TrainUnit
from wsss_bench.pipeline.prepare import prepare
from wsss_bench.pipeline.settings import RunConfig
from wsss_bench.registry import Registry


@dataclass
class Outcome:
    """What a run produced: the leaderboard rows of every whole method, the fold split, and
    one line per unit that failed or was skipped because a unit it needs failed."""

    rows: list[dict[str, Any]]
    folds: list[list[str]]
    failures: list[str] = field(default_factory=list)
    # what the figures are drawn from: the plan, its context (slices, stored CAMs) and every
    # whole evaluate unit with its per-fold results
    plan: Plan | None = None
    context: Context | None = None
    evaluations: list[tuple[EvalUnit, list[dict[str, Any]]]] = field(default_factory=list)
    # wall seconds of each stage so far (the caller adds "publish")
    clock: timings.StageClock = field(default_factory=timings.StageClock)


def run(config: RunConfig, registry: Registry, reporter: Reporter | None = None
        ) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Run ``config``: its leaderboard rows and the fold split (:class:`RunIncomplete` when a
    unit failed: use :func:`execute` for the partial outcome)."""
    outcome = execute(config, registry, reporter)
    if outcome.failures:
        raise RunIncomplete(outcome.failures)
    return outcome.rows, outcome.folds


def execute(config: RunConfig, registry: Registry, reporter: Reporter | None = None,
            stored_only: str | None = None) -> Outcome:
    """Run ``config`` unit by unit; a failed unit fails the units that need it, and the
    methods it touches get no row (their previous leaderboard rows stay). The run's claims
    on store units (see ``Store.claim``) are released when it ends, finished or not.
    ``stored_only`` (the command that made the units): compute nothing; a UsageError saying
    to run that command when a unit is not stored."""
    with ExitStack() as cleanup:
        return _execute(config, registry, reporter, cleanup, stored_only)


def _missing(plan: Plan, store: Store) -> list[str]:
    """``stage/key`` of every unit of ``plan`` not stored whole."""
    keys = [("train", u.key) for u in plan.train]
    keys += [("cams", k) for c in plan.cams for k, _ in c.keys.values()]
    keys += [("evaluate", k) for e in plan.evaluate for k, _ in e.keys]
    return [f"{stage}/{key}" for stage, key in keys if not store.ready(stage, key)]


def _execute(config: RunConfig, registry: Registry, reporter: Reporter | None,
             cleanup: ExitStack, stored_only: str | None = None) -> Outcome:
    reporter = reporter or Reporter(quiet=True)
    clock = timings.StageClock()
    plan = Plan.build(config, registry)
    torch.manual_seed(config.seed)
    ctx = Context(plan, None, None, plan.device, registry=registry)  # type: ignore[arg-type]
    with clock.stage("prepare"):
        data = prepare(plan, ctx.plugin("datasets", config.dataset), reporter)
        folds = split(config, data)
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(), folds,
                          outputs=method_outputs(ctx, int(data.images.shape[1])))
    store = Store(config.workdir, plan.force, checks={"evaluate": evaluation_outdated})
    if stored_only is not None and (missing := _missing(plan, store)):
        raise UsageError(f"{len(missing)} unit(s) of this board's run are not stored in "
                         f"{store.root} (e.g. {missing[0]}): run `{stored_only}` there first, "
                         f"or pass --workdir of the run that made them")
    cleanup.callback(store.release_all)
    store.start_manifest(f"{config.dataset}-{digest([data.origin, plan.settings])}", {
        "dataset": config.dataset, "config": plan.settings,
        "cache": data.origin if data.origin.startswith("cache/") else None})
    ctx = dataclasses.replace(ctx, plan=plan, data=data, store_root=store.root)
    executor = ctx.plugin("executors", plan.executor)
    failures: list[str] = []
    bad_train: set[str] = set()  # keys of train units that failed
    bad_cams: set[str] = set()  # keys of CAM units that failed or could not be made

    def stage(function, units, title: str, commit) -> None:
        """Run ``units`` on the executor, committing each result; record the failed ones."""
        done: set[str] = set()
        failed: list[tuple[Any, str]] = []
        with clock.stage(title), reporter.task(title, total=len(units)) as advance:
            try:
                for unit, result in executor.run(function, units, ctx):
                    commit(unit, result)
                    done.add(unit.describe())
                    advance(1)
            except UnitFailed as exc:
                failed = exc.failures
        reasons = {unit.describe(): cause for unit, cause in failed}
        lost = [u for u in units if u.describe() not in done]
        if not failed and lost:  # a broken executor plugin: say so, store nothing wrong
            raise UsageError(f"executor {plan.executor!r} returned {len(done)} of {len(units)} "
                             f"{title} units; fix or replace the executor plugin")
        for unit in lost:
            cause = reasons.get(unit.describe(), "the executor gave no reason")
            failures.append(f"{unit.describe()}: {cause}; nothing was stored for it")
            if isinstance(unit, TrainUnit):
                bad_train.add(unit.key)
                store.release("train", unit.key)  # another run may make it now
            elif isinstance(unit, CamUnit):
                bad_cams.update(unit.keys[name][0] for name in unit.todo)
                for name in unit.todo:
                    store.release("cams", unit.keys[name][0])
            else:
                for key, _ in unit.keys:
                    store.release("evaluate", key)

    made: dict[tuple[str, str], float | None] = {}  # (stage, key) -> seconds, units made here

    def commit_trained(unit: TrainUnit, result: train.Trained) -> None:
        commit_train(plan, store, reporter, unit, result)
        made[("train", unit.key)] = result.info.get("seconds")

    def commit_maps(unit: CamUnit, result: cams.Mapped) -> None:
        commit_cams(store, reporter, unit, result, len(data))
        made.update({("cams", unit.keys[name][0]): result.seconds[name] for name in result.maps})
        for name, cause in result.failed.items():
            bad_cams.add(unit.keys[name][0])
            store.release("cams", unit.keys[name][0])
            failures.append(f"cams {name} {unit.train.label}: {cause}; nothing was stored "
                            f"for it")

    with clock.stage("train"):  # finding the stored units counts to their stage
        todo_train = pending_train(plan, store, reporter)
    stage(train.train, todo_train, "train", commit_trained)
    for unit in plan.cams:  # the CAMs of a classifier that could not be trained
        if unit.train.key in bad_train:
            bad_cams.update(key for key, _ in unit.keys.values())
    with clock.stage("cams"):
        todo_cams = pending_cams(plan, store, reporter, skip=bad_train)
    stage(cams.make_cams, todo_cams, "cams", commit_maps)
    blocked = {u.keys[0][0] for u in plan.evaluate
               if any(k in bad_cams for keys in u.cam_keys for k in keys)}
    with clock.stage("evaluate"):
        found = reused_evaluations(plan, store, reporter, skip=blocked)  # by the unit's first key
    reused = len(found)
    for unit in plan.evaluate:
        if unit.keys[0][0] in blocked:
            failures.append(f"{unit.describe()}: skipped, it needs CAMs that failed above")
    todo = [u for u in plan.evaluate if u.keys[0][0] not in found and u.keys[0][0] not in blocked]

    def commit_eval(unit: EvalUnit, result: list[dict[str, Any]]) -> None:
        found[unit.keys[0][0]] = (unit, commit_evaluate(store, unit, result))
        made.update({("evaluate", key): r.get("seconds")
                     for (key, _), r in zip(unit.keys, result, strict=True)})

    stage(evaluate.evaluate, todo, "evaluate", commit_eval)
    whole = [pair for key, pair in found.items() if key not in blocked]
    incomplete = {publish.results_key(u, ctx) for u in plan.evaluate
                  if u.keys[0][0] not in found or u.keys[0][0] in blocked}
    strides = {u.backbone: store.info("train", u.key)["output_stride"] for u in plan.train
               if u.key not in bad_train and u.kind == "backbones"}
    train_of = timings.train_keys(plan)

    def row_timings(units: list[EvalUnit]) -> dict[str, Any]:
        behind = [pair for unit in units for pair in timings.row_units(unit, train_of)]
        return timings.row_timings(list(dict.fromkeys(behind)), seconds, set(made), clock)

    with clock.stage("publish"):
        # units made here: the seconds their results carried; reused units: their unit.json
        # (verified when the run claimed them, so reading it hashes nothing again)
        seconds = dict(made)
        for pair in {p for u in plan.evaluate for p in timings.row_units(u, train_of)} - set(made):
            seconds[pair] = timings.reused_seconds(store, *pair)
        rows = publish.rows(plan, ctx, whole, strides, reused, reporter, incomplete=incomplete,
                            timing=row_timings)
    complete = [(u, r) for u, r in whole if publish.results_key(u, ctx) not in incomplete]
    return Outcome(rows, folds, failures, plan, ctx, complete, clock)


def method_outputs(ctx: Context, in_chans: int) -> dict[str, tuple[str, ...]]:
    """Each end-to-end method's named outputs for ``in_chans`` input channels (checked by
    the plan: the channels it needs, distinct names)."""
    from wsss_bench import guards

    out = {}
    for name in ctx.plan.config.methods:
        method = ctx.plugin("methods", name)
        if in_chans < ctx.plan.min_channels[name]:
            out[name] = ()  # the plan refuses it with the reason
            continue
        names = guards.call(guards.label("methods", method, ctx.plan.versions),
                            method.outputs, in_chans)
        out[name] = names  # checked by the plan
    return out


def pending_train(plan: Plan, store: Store, reporter: Reporter) -> list[TrainUnit]:
    mine = claim(store, reporter, "train", [unit.key for unit in plan.train])
    todo = []
    for unit in plan.train:
        if unit.key not in mine:
            made = datetime.fromtimestamp(store.info("train", unit.key)["made"])
            reporter.summary(f"[bold]train[/] {unit.label}: reused (unit {unit.key}, made "
                             f"{made.isoformat(timespec='seconds')})")
        else:
            todo.append(unit)
    return todo


def commit_train(plan: Plan, store: Store, reporter: Reporter, unit: TrainUnit,
                 result: train.Trained) -> None:
    store.write("train", unit.key, unit.description, lambda f: train.store_files(result, f))
    for note in result.notes:
        reporter.summary(note)
    info = result.info
    reporter.summary(
        f"[bold]train[/] {unit.label}: {plan.config.epochs} epochs, loss {info['losses'][0]:.3f}"
        f" → {info['losses'][-1]:.3f}, validation accuracy {info['val_accuracy']:.2f} "
        f"({info['seconds']:.1f} s)")


def pending_cams(plan: Plan, store: Store, reporter: Reporter, skip: set[str] = frozenset()
                 ) -> list[CamUnit]:
    """The CAM units to make (with the methods missing from the store); ``skip``: keys of
    train units that failed (their CAMs cannot be made)."""
    mine = claim(store, reporter, "cams", [key for u in plan.cams if u.train.key not in skip
                                           for key, _ in u.keys.values()])
    todo = []
    for unit in plan.cams:
        if unit.train.key in skip:
            continue
        missing = []
        for name, (key, _) in unit.keys.items():
            if key not in mine:
                reporter.summary(f"[bold]cams[/] {name} {unit.train.label}: reused (unit {key})")
            else:
                missing.append(name)
        if missing:
            folder = store.path("train", unit.train.key)
            predicted = np.load(folder / "predicted.npy") if plan.config.gate else None
            todo.append(dataclasses.replace(
                unit, todo=tuple(missing), model_path=str(folder / "model.pt"),
                output_stride=store.info("train", unit.train.key).get("output_stride", 32),
                predicted=predicted))
    return todo


def commit_cams(store: Store, reporter: Reporter, unit: CamUnit, result: cams.Mapped,
                n: int) -> None:
    for name, maps in result.maps.items():
        key, description = unit.keys[name]
        store.write("cams", key, description,
                    lambda f, m=maps, s=result.seconds[name]: cams.store_files(m, f, s))
        reporter.summary(f"[bold]cams[/] {name} {unit.train.label}: {n} maps "
                         f"({result.seconds[name]:.1f} s)")


def reused_evaluations(plan: Plan, store: Store, reporter: Reporter | None = None,
                       skip: set[str] = frozenset()
                       ) -> dict[str, tuple[EvalUnit, list[dict[str, Any]]]]:
    """The stored results of evaluate units, by first key; the others are claimed for this
    run (``skip``: first keys of units that cannot run, neither claimed nor reused)."""
    units = [u for u in plan.evaluate if u.keys[0][0] not in skip]
    mine = claim(store, reporter, "evaluate", [key for u in units for key, _ in u.keys])
    found = {}
    for unit in units:
        if not any(key in mine for key, _ in unit.keys):
            found[unit.keys[0][0]] = (unit, [store.info("evaluate", key)["result"]
                                             for key, _ in unit.keys])
    return found


def evaluation_outdated(meta: dict[str, Any]) -> str | None:
    """Why a stored evaluate unit cannot be reused although whole: made before evaluate units
    kept per-case results (the leaderboard's statistics need them)."""
    result = meta.get("result")
    cases = result.get("cases") if isinstance(result, dict) else None
    problem = metrics.case_problem(cases)
    if problem is not None:
        return f"it has no usable per-case results ({problem})"
    if metrics.metrics_of_cases(cases) != result.get("metrics"):
        return "its metrics do not follow from its per-case results"
    return None


def commit_evaluate(store: Store, unit: EvalUnit, results: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    for (key, description), result in zip(unit.keys, results, strict=True):
        store.write("evaluate", key, description, lambda f, r=result: _evaluation_files(r, f))
    return results


def _evaluation_files(result: dict[str, Any], folder: Any) -> dict[str, Any]:
    """An evaluate result as stored: the threshold grid's scores in ``grid.npy`` (they can be
    large), everything else in unit.json."""
    grid = result.get("grid")
    if grid is None:
        return {"result": result}
    np.save(folder / "grid.npy", np.asarray(grid["scores"], dtype=np.float64))
    stored = {k: v for k, v in grid.items() if k != "scores"}
    return {"result": {**result, "grid": {**stored, "file": "grid.npy"}}}


def claim(store: Store, reporter: Reporter | None, stage: str, keys: list[str]) -> set[str]:
    """The keys of ``stage`` this run makes (``Store.claim``: waits for units another run is
    making, then reuses them); says why a stored unit that cannot be trusted is remade."""
    mine = store.claim(stage, keys, None if reporter is None else reporter.summary)
    for key in mine:
        reason = store.rejected.get(f"{stage}/{key}")
        if reason and reporter is not None:
            reporter.summary(f"unit {stage}/{key}: {reason}; recomputing")
    return set(mine)
