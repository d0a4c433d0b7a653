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
from datetime import datetime
from typing import Any

import numpy as np
import torch

from wsss_bench.core.progress import Reporter
from wsss_bench.core.store import Store, digest
from wsss_bench.errors import UsageError
from wsss_bench.pipeline import cams, evaluate, publish, train
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.folds import split
from wsss_bench.pipeline.plan import CamUnit, EvalUnit, Plan, TrainUnit
from wsss_bench.pipeline.prepare import prepare
from wsss_bench.pipeline.settings import RunConfig
from wsss_bench.registry import Registry


def run(config: RunConfig, registry: Registry, reporter: Reporter | None = None
        ) -> tuple[list[dict[str, Any]], list[list[str]]]:
    """Run ``config``: its leaderboard rows and the fold split. The run's claims on store
    units (see ``Store.claim``) are released when it ends, finished or not."""
    with ExitStack() as cleanup:
        return _run(config, registry, reporter, cleanup)


def _run(config: RunConfig, registry: Registry, reporter: Reporter | None, cleanup: ExitStack
         ) -> tuple[list[dict[str, Any]], list[list[str]]]:
    reporter = reporter or Reporter(quiet=True)
    plan = Plan.build(config, registry)
    torch.manual_seed(config.seed)
    ctx = Context(plan, None, None, plan.device, registry=registry)  # type: ignore[arg-type]
    data = prepare(plan, ctx.plugin("datasets", config.dataset), reporter)
    folds = split(config, data)
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(), folds)
    store = Store(config.workdir, plan.force)
    cleanup.callback(store.release_all)
    store.start_manifest(f"{config.dataset}-{digest([data.origin, plan.settings])}", {
        "dataset": config.dataset, "config": plan.settings,
        "cache": data.origin if data.origin.startswith("cache/") else None})
    ctx = dataclasses.replace(ctx, plan=plan, data=data, store_root=store.root)
    executor = ctx.plugin("executors", plan.executor)

    def execute(stage, units, title: str, commit) -> None:
        done = 0
        with reporter.task(title, total=len(units)) as advance:
            for unit, result in executor.run(stage, units, ctx):
                commit(unit, result)
                advance(1)
                done += 1
        if done != len(units):  # a broken executor plugin: say so, store nothing wrong
            raise UsageError(f"executor {plan.executor!r} returned {done} of {len(units)} "
                             f"{title} units; fix or replace the executor plugin")

    execute(train.train, pending_train(plan, store, reporter), "train",
            lambda u, r: commit_train(plan, store, reporter, u, r))
    execute(cams.make_cams, pending_cams(plan, store, reporter), "cams",
            lambda u, r: commit_cams(store, reporter, u, r, len(data)))
    found = reused_evaluations(plan, store, reporter)  # by the unit's first key
    todo = [u for u in plan.evaluate if u.keys[0][0] not in found]
    execute(evaluate.evaluate, todo, "evaluate",
            lambda u, r: found.update({u.keys[0][0]: (u, commit_evaluate(store, u, r))}))
    strides = {u.backbone: store.info("train", u.key)["output_stride"] for u in plan.train}
    return publish.rows(plan, ctx, list(found.values()), strides, len(plan.evaluate) - len(todo),
                        reporter), folds


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


def pending_cams(plan: Plan, store: Store, reporter: Reporter) -> list[CamUnit]:
    mine = claim(store, reporter, "cams", [key for u in plan.cams for key, _ in u.keys.values()])
    todo = []
    for unit in plan.cams:
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
                output_stride=store.info("train", unit.train.key)["output_stride"],
                predicted=predicted))
    return todo


def commit_cams(store: Store, reporter: Reporter, unit: CamUnit, result: cams.Mapped,
                n: int) -> None:
    for name, maps in result.maps.items():
        key, description = unit.keys[name]
        store.write("cams", key, description, lambda f, m=maps: cams.store_files(m, f))
        reporter.summary(f"[bold]cams[/] {name} {unit.train.label}: {n} maps "
                         f"({result.seconds[name]:.1f} s)")


def reused_evaluations(plan: Plan, store: Store, reporter: Reporter | None = None
                       ) -> dict[str, tuple[EvalUnit, list[dict[str, Any]]]]:
    mine = claim(store, reporter, "evaluate", [key for u in plan.evaluate for key, _ in u.keys])
    found = {}
    for unit in plan.evaluate:
        if not any(key in mine for key, _ in unit.keys):
            found[unit.keys[0][0]] = (unit, [store.info("evaluate", key)["result"]
                                             for key, _ in unit.keys])
    return found


def commit_evaluate(store: Store, unit: EvalUnit, results: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    for (key, description), result in zip(unit.keys, results, strict=True):
        store.write("evaluate", key, description, lambda _f, r=result: {"result": r})
    return results


def claim(store: Store, reporter: Reporter | None, stage: str, keys: list[str]) -> set[str]:
    """The keys of ``stage`` this run makes (``Store.claim``: waits for units another run is
    making, then reuses them); says why a stored unit that cannot be trusted is remade."""
    mine = store.claim(stage, keys, None if reporter is None else reporter.summary)
    for key in mine:
        reason = store.rejected.get(f"{stage}/{key}")
        if reason and reporter is not None:
            reporter.summary(f"unit {stage}/{key}: {reason}; recomputing")
    return set(mine)
