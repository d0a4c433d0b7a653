"""Executors: where a stage's units run (this process, worker processes, a Ray cluster).

An executor is a plugin object (hook ``register_executors``, contract
:class:`wsss_bench.contracts.Executor`): ``run(stage, units, context)`` calls
``stage(unit, context)`` for every unit, wherever it likes, and yields ``(unit, result)`` pairs
as they finish, in any order. It writes nothing: the driver stores every result. A unit that
fails for good ends the run with :class:`UnitFailed`, after the finished units were yielded;
:meth:`UnitFailed.add` gathers every failed unit into it, so the driver can go on with the
units that do not depend on them.
"""

from __future__ import annotations

from typing import Any

from wsss_bench.errors import UsageError


class UnitFailed(UsageError):
    """A unit failed for good; the message names it and keeps the cause to one line.

    ``failures`` lists ``(unit, cause)`` of every unit that failed in the stage (the message
    names the first)."""

    def __init__(self, unit: Any, cause: BaseException | str) -> None:
        if not isinstance(cause, str):
            lines = str(cause).strip().splitlines()
            cause = f"{type(cause).__name__}: {lines[0][:300]}" if lines else type(cause).__name__
        self.failures: list[tuple[Any, str]] = [(unit, cause)]
        super().__init__(f"unit {unit.describe()} failed: {cause}; finished units are kept: "
                         f"fix the cause and run the same command again to resume")

    @staticmethod
    def add(failed: UnitFailed | None, unit: Any, cause: BaseException | str) -> UnitFailed:
        """``failed`` (None: a new one) with ``unit`` added; a UsageError's cause is its text."""
        if isinstance(cause, UsageError):
            cause = str(cause)
        if failed is None:
            return UnitFailed(unit, cause)
        failed.failures.extend(UnitFailed(unit, cause).failures)
        return failed
