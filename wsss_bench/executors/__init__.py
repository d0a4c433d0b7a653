"""Executors: where a stage's units run (this process, worker processes, a Ray cluster).

An executor is a plugin object (hook ``register_executors``, contract
:class:`wsss_bench.contracts.Executor`): ``run(stage, units, context)`` calls
``stage(unit, context)`` for every unit, wherever it likes, and yields ``(unit, result)`` pairs
as they finish, in any order. It writes nothing: the driver stores every result. A unit that
fails for good ends the run with :class:`UnitFailed`, after the finished units were yielded.
"""

from __future__ import annotations

from typing import Any

from wsss_bench.errors import UsageError


class UnitFailed(UsageError):
    """A unit failed for good; the message names it and keeps the cause to one line."""

    def __init__(self, unit: Any, cause: BaseException | str) -> None:
        if not isinstance(cause, str):
            lines = str(cause).strip().splitlines()
            cause = f"{type(cause).__name__}: {lines[0][:300]}" if lines else type(cause).__name__
        super().__init__(f"unit {unit.describe()} failed: {cause}; finished units are kept: "
                         f"fix the cause and run the same command again to resume")
