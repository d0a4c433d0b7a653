"""Stage ``prepare``: the slices of the dataset, through the slice cache for file datasets.

The slice cache is a store unit like the others (``<workdir>/cache/<key>``, keyed by the
dataset, its options, the image size and every file's path, size and modification time); a
generated dataset is made directly and identified by its settings.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from wsss_bench import download
from wsss_bench.core import slice_cache
from wsss_bench.core.progress import Reporter
from wsss_bench.core.slices import SliceSet, collect
from wsss_bench.core.store import digest
from wsss_bench.errors import UsageError
from wsss_bench.pipeline.plan import Plan
from wsss_bench.volumes import MissingData


def data_dir(plan: Plan) -> Path | None:
    """``--data-dir``, else the default data folder for a dataset that reads files."""
    if plan.prepare.data_dir:
        return Path(plan.prepare.data_dir).expanduser()
    return download.default_data_dir() if plan.reads_files else None


def prepare(plan: Plan, dataset: Any, reporter: Reporter) -> SliceSet:
    """The run's slices, the plan's prepare unit (downloading missing data where the dataset
    allows it)."""
    unit = plan.prepare
    t0 = time.perf_counter()
    if not plan.reads_files:
        data = collect(dataset, data_dir(plan), unit.image_size)
        settings = plan.key_settings[unit.dataset]  # without declared-neutral values
        origin = f"generated/{unit.dataset}-{digest([settings, unit.image_size])}"
        data = dataclasses.replace(data, origin=origin)
    else:
        workers = unit.workers or slice_cache.default_workers()
        args = (dataset, data_dir(plan), Path(unit.cache_root), workers, unit.image_size,
                reporter)
        force = unit.force
        try:
            data = _cached(args, force)
        except MissingData:
            archive = dataset.archive
            if archive is None:
                raise
            reporter.summary(f"[bold]download[/] {dataset.name}: no data in {data_dir(plan)}, "
                             f"fetching {archive.url}")
            download.fetch(archive, data_dir(plan), reporter)
            data = _cached(args, force)
    reporter.summary(
        f"[bold]data[/] {unit.dataset}: {len(set(data.case_ids.tolist()))} cases, "
        f"{len(data)} slices of {data.images.shape[1]}×{data.images.shape[2]}×"
        f"{data.images.shape[3]}, {data.labels.mean():.0%} with lesion, lesion pixels "
        f"{data.masks.mean():.2%} ({time.perf_counter() - t0:.1f} s)")
    return data



def _cached(args: tuple[Any, ...], force: bool) -> SliceSet:
    """The slice cache of ``args`` (:func:`slice_cache.prepare`); a failed write (disk full)
    is one line: nothing was cached."""
    try:
        return slice_cache.prepare(*args, force=force)
    except OSError as exc:
        raise UsageError(f"cannot write the slice cache in {args[2]}: {exc}; free space or "
                         f"pass --workdir on another disk; nothing was cached") from None
