"""The ``processes`` executor: worker processes on this machine, one per device or CPU slot.

Units are handed out as workers become free (not dealt in advance). Workers are spawned (CUDA
cannot be forked), get the context once and compute with the same number of CPU threads as
this process, so that results are bit-identical to the local executor's.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

from wsss_bench.executors import UnitFailed
from wsss_bench.options import option

_CONTEXT: Any = None  # the worker's context (set once per worker process)


@dataclass(frozen=True)
class ProcessesExecutor:
    name: str = "processes"
    description: str = ("worker processes on this machine, one per --devices/--gpus device, "
                        "else `workers` on the run's device")
    workers: int = option(2, "worker processes when the run names no --devices/--gpus, each "
                             "on the run's device")

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1 (got {self.workers})")

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]:
        if not units:
            return
        devices = list(context.plan.devices) or [context.device] * self.workers
        devices = devices[: len(units)]
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.Queue()
        for device in devices:
            queue.put(device)
        pool = ProcessPoolExecutor(len(devices), mp_context=spawn, initializer=_start,
                                   initargs=(context, queue, torch.get_num_threads()))
        failed: UnitFailed | None = None  # every unit that failed for good
        finished = False
        try:
            futures = {pool.submit(_call, stage, unit): unit for unit in units}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                broken = None
                for future in done:
                    unit = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        broken = broken or unit
                        continue
                    except Exception as exc:  # noqa: BLE001 (named with its unit, one line)
                        failed = UnitFailed.add(failed, unit, exc)
                        continue  # the other units go on: what finishes is kept
                    yield unit, result
                if broken is not None:
                    raise UnitFailed(broken, "a worker process died while this or another "
                                     "unit ran (out of memory?); use fewer devices or a "
                                     "smaller --batch-size")
            if failed is not None:
                raise failed
            finished = True
        finally:
            if not finished:  # interrupted or failed: stop the workers now, not unit by unit
                for process in list(getattr(pool, "_processes", {}).values()):
                    process.terminate()
            pool.shutdown(wait=finished, cancel_futures=True)


def _start(context: Any, queue: Any, threads: int) -> None:
    """A worker's start: take a device, pin the CPU thread count; Ctrl-C is the driver's."""
    global _CONTEXT
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    device = queue.get()
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if device.startswith("cuda") and ":" in device:
        torch.cuda.set_device(torch.device(device))  # pinned memory etc. on this GPU
    _CONTEXT = context.on(device)


def _call(stage: Callable[[Any, Any], Any], unit: Any) -> Any:
    return stage(unit, _CONTEXT)
