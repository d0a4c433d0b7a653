"""Benchmarks run only when pytest-benchmark is enabled (``--benchmark-enable``).

pyproject's ``addopts`` carry ``--benchmark-disable``, under which pytest-benchmark would still
run every benchmark body once as a smoke test; for these benchmarks that costs tens of seconds
(resnet34, batch 32, several CAM libraries), so the normal suite skips them at collection.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def benchmarks_enabled(config: pytest.Config) -> bool:
    """pytest-benchmark's own rule (its session also turns itself off under xdist)."""
    session = getattr(config, "_benchmarksession", None)
    if session is not None:
        return not session.disabled
    return bool(config.getoption("benchmark_enable", False)
                and not config.getoption("benchmark_disable", False))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if benchmarks_enabled(config):
        return
    skip = pytest.mark.skip(reason="benchmarks are disabled: run with --benchmark-enable")
    for item in items:
        if HERE in item.path.resolve().parents:
            item.add_marker(skip)
