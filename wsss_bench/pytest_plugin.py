"""pytest plugin (entry point ``pytest11``): ``pytest --wsss-bench-contracts`` adds one contract
test per installed plugin object (:mod:`wsss_bench.contract_tests`) to the run.

Without the option it does nothing. ``--wsss-bench-contracts`` alone runs the contract tests
with the rest of the suite; ``pytest --wsss-bench-contracts -k my-cam`` only those whose id
(``<kind>:<name>``) matches.
"""

from __future__ import annotations

from pathlib import Path

import pytest

OPTION = "--wsss-bench-contracts"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("wsss-bench")
    group.addoption(OPTION, action="store_true", default=False,
                    help="check every installed wsss-bench plugin object against its contract "
                         "(wsss_bench.testing)")


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("wsss_bench_contracts"):
        tests = str(Path(__file__).with_name("contract_tests.py"))
        if tests not in config.args:
            config.args.append(tests)
