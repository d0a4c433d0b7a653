"""The built-in executors: local (default), processes and ray (the extra wsss-bench[ray])."""

from __future__ import annotations

from wsss_bench import hookimpl
from wsss_bench.executors.local import LocalExecutor
from wsss_bench.executors.processes import ProcessesExecutor
from wsss_bench.executors.ray import RayExecutor


@hookimpl
def register_executors(register) -> None:
    register(LocalExecutor())
    register(ProcessesExecutor())
    register(RayExecutor())  # imports Ray only when it runs
