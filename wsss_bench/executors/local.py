"""The ``local`` executor: every unit in this process, one after another."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from wsss_bench.executors import UnitFailed


@dataclass(frozen=True)
class LocalExecutor:
    name: str = "local"
    description: str = "every unit in this process, one after another (the default)"

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]:
        failed: UnitFailed | None = None  # every unit that failed for good
        for unit in units:
            try:
                result = stage(unit, context)
            except Exception as exc:  # noqa: BLE001 (named with its unit, one line)
                failed = UnitFailed.add(failed, unit, exc)
                continue  # the other units go on: what finishes is kept
            yield unit, result
        if failed is not None:
            raise failed
