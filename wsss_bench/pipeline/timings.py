"""Stage timings: the wall time of each stage of a run, and the seconds of every unit behind a
leaderboard row.

A run has five stages: ``prepare`` (the dataset's slices and the split), ``train``, ``cams``,
``evaluate`` (calibration and scoring) and ``publish`` (the rows, figures, statistics and the
leaderboard files). :class:`StageClock` measures each stage's wall time in the driver (so it
includes the executor's overhead and, with a parallel executor, overlapping units); each unit
measures its own seconds where it runs and stores them in its ``unit.json``: a train unit its
training, a CAM unit its maps (one method), an evaluate unit its calibration and scoring (a
unit that calibrates across folds stores its time split evenly over its folds' keys). A row's
provenance lists the seconds of every unit behind it (:func:`row_timings`), from the store,
so a reused unit shows the time it took when it was made.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from wsss_bench.pipeline.plan import EvalUnit, Plan

STAGES = ("prepare", "train", "cams", "evaluate", "publish")


@dataclass
class StageClock:
    """Wall seconds per stage of one run, in :data:`STAGES` order, and since it started."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = field(default_factory=lambda: time.perf_counter())

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the block as (part of) stage ``name``."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}; stages: {STAGES}")
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def as_dict(self) -> dict[str, float]:
        return {name: round(self.seconds[name], 3) for name in STAGES if name in self.seconds}

    def breakdown(self) -> str:
        """One line: each stage's seconds and share of the wall time since the clock started;
        ``other``: the time outside every stage (building the plan, opening the store)."""
        wall = time.perf_counter() - self.started
        parts = [(name, self.seconds[name]) for name in STAGES if name in self.seconds]
        parts.append(("other", max(wall - sum(self.seconds.values()), 0.0)))
        shown = [f"{name} {s:.1f} s ({s / wall:.0%})" if wall > 0 else f"{name} {s:.1f} s"
                 for name, s in parts]
        return f"time: {', '.join(shown)}; total {wall:.1f} s"


def evaluate_seconds(seconds: float, results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``results`` (one per fold of an evaluate unit) with the unit's seconds split evenly."""
    share = seconds / max(len(results), 1)
    return [{**r, "seconds": share} for r in results]


def stored_seconds(meta: dict[str, Any]) -> float | None:
    """A stored unit's seconds (an evaluate unit keeps them in its result); ``None`` for units
    stored before units recorded their time."""
    result = meta.get("result")
    value = meta.get("seconds", result.get("seconds") if isinstance(result, dict) else None)
    return float(value) if isinstance(value, (int, float)) else None


def reused_seconds(store: Any, stage: str, key: str) -> float | None:
    """The stored seconds of a unit this run reused, from its unit.json (``None``: not stored,
    e.g. a unit that failed, unreadable, or stored before units recorded their time)."""
    try:
        return stored_seconds(store.info(stage, key))
    except (OSError, ValueError):
        return None


def train_keys(plan: Plan) -> dict[str, str]:
    """CAM unit key -> the key of the train unit whose classifier made it."""
    return {key: cam.train.key for cam in plan.cams for key, _ in cam.keys.values()}


def row_units(unit: EvalUnit, train_of: dict[str, str]) -> list[tuple[str, str]]:
    """(stage, key) of every store unit behind ``unit``: its evaluate keys, the CAM units it
    reads and the train units those come from (``train_of``: :func:`train_keys`)."""
    out = [("evaluate", key) for key, _ in unit.keys]
    for keys in unit.cam_keys:
        out += [("cams", key) for key in keys]
        out += [("train", train_of[key]) for key in keys if key in train_of]
    return list(dict.fromkeys(out))


def row_timings(units: list[tuple[str, str]], seconds: dict[tuple[str, str], float | None],
                made_here: set[tuple[str, str]], clock: StageClock) -> dict[str, Any]:
    """A row's ``run.timings``: its units' stored seconds by stage (``None``: a unit stored
    before units recorded their time), their sum per stage, which units this run made (the
    others were reused), and the wall time of each stage of the run."""
    by_stage: dict[str, dict[str, float | None]] = {}
    for stage, key in units:
        by_stage.setdefault(stage, {})[key] = seconds.get((stage, key))
    return {
        "units": by_stage,
        "unit_seconds": {stage: round(sum(v for v in keys.values() if v is not None), 3)
                         for stage, keys in by_stage.items()},
        "made_by_this_run": sorted(f"{stage}/{key}" for stage, key in units
                                   if (stage, key) in made_here),
        "run_stage_seconds": clock.as_dict(),
    }
