"""The ``processes`` executor: worker processes on this machine, one per device or CPU slot.

Units are handed out as workers become free (not dealt in advance). Workers are spawned (CUDA
cannot be forked), get the context once and compute with the same number of CPU threads as
this process, so that results are bit-identical to the local executor's.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any

import torch

from wsss_bench.errors import UsageError
from wsss_bench.executors import UnitFailed

_CONTEXT: Any = None  # the worker's context (set once per worker process)


@dataclass(frozen=True)
class ProcessesExecutor:
    name: str = "processes"
    description: str = ("worker processes on this machine, one per --devices/--gpus device, "
                        "else `workers` on the run's device")
    workers: int = 2  # workers when the run names no devices (each on the run's device)

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]:
        if not units:
            return
        if self.workers < 1:
            raise UsageError(f"-o processes.workers={self.workers}: must be at least 1")
        devices = list(context.plan.devices) or [context.device] * self.workers
        devices = devices[: len(units)]
        spawn = multiprocessing.get_context("spawn")
        queue = spawn.Queue()
        for device in devices:
            queue.put(device)
        pool = ProcessPoolExecutor(len(devices), mp_context=spawn, initializer=_start,
                                   initargs=(context, queue, torch.get_num_threads()))
        failed: UnitFailed | None = None  # the first unit that failed for good
        try:
            futures = {pool.submit(_call, stage, unit): unit for unit in units}
            pending = set(futures)
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    unit = futures[future]
                    try:
                        result = future.result()
                    except BrokenProcessPool:
                        raise UnitFailed(unit, "a worker process died (out of memory?); use "
                                         "fewer devices or a smaller --batch-size") from None
                    except Exception as exc:  # noqa: BLE001 (named with its unit, one line)
                        failed = failed or (exc if isinstance(exc, UnitFailed)
                                            else UnitFailed(unit, exc))
                        continue  # the other units go on: what finishes is kept
                    yield unit, result
            if failed is not None:
                raise failed
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _start(context: Any, queue: Any, threads: int) -> None:
    """A worker's start: take a device, pin the CPU thread count."""
    global _CONTEXT
    device = queue.get()
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # pinned memory etc. on this GPU
    _CONTEXT = context.on(device)


def _call(stage: Callable[[Any, Any], Any], unit: Any) -> Any:
    return stage(unit, _CONTEXT)
