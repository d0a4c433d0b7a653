"""One contract test per installed plugin object, parametrized by ``<kind>:<name>``.

Collected by ``pytest --wsss-bench-contracts`` (:mod:`wsss_bench.pytest_plugin`), or import it
into a test module of your own repository::

    from wsss_bench.contract_tests import test_plugin_contract  # noqa: F401
"""

from __future__ import annotations

from pathlib import Path

import pytest

from wsss_bench import testing
from wsss_bench.registry import load_registry

REGISTRY = load_registry()
CASES = testing.contract_cases(REGISTRY)


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}:{n}" for k, n in CASES])
def test_plugin_contract(kind: str, name: str, tmp_path: Path) -> None:
    """The :mod:`wsss_bench.testing` check of one registered object."""
    obj = REGISTRY.kind(kind).get_entry(name).obj
    options = {"scratch_dir": tmp_path} if kind == "datasets" else {}
    testing.check_plugin(kind, obj, **options)
