"""A third-party executor: every unit in this process, last unit first."""

from __future__ import annotations

from dataclasses import dataclass

from wsss_bench import hookimpl
from wsss_bench.executors import UnitFailed


@dataclass(frozen=True)
class ReverseExecutor:
    name: str = "reverse"
    description: str = "every unit in this process, last first (a test plugin)"
    log: str = ""  # a file that gets one line per unit run, in order

    def run(self, stage, units, context):
        for unit in reversed(list(units)):
            if self.log:
                with open(self.log, "a") as fh:
                    fh.write(unit.describe() + "\n")
            try:
                result = stage(unit, context)
            except Exception as exc:  # noqa: BLE001
                raise UnitFailed(unit, exc) from exc
            yield unit, result


@hookimpl
def register_executors(register):
    register(ReverseExecutor())
