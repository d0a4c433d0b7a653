"""The README's set-up commands, CI and the hook documentation stay in step."""

from __future__ import annotations

import inspect
import re

import pluggy

from wsss_bench import hookspecs
from wsss_bench.contracts import KINDS

from .conftest import ROOT


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must start with a sh block of the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_install_and_run_then_test_command():
    install, test = readme_commands()
    assert 'pip install -e ".[test]"' in install and install.endswith("wsss-bench run")
    assert test.endswith("python -m pytest") and ".[test,peers]" in test


def test_ci_runs_exactly_the_readme_commands():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    for command in readme_commands():
        assert command in ci, f".ci/run lacks the README command: {command}"


def test_every_kind_has_one_documented_register_hook():
    specs = {name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(fn, pluggy.HookspecMarker(hookspecs.PROJECT).project_name + "_spec")}
    assert specs == {f"register_{kind}" for kind in KINDS}
    for name in specs:
        fn = getattr(hookspecs, name)
        assert list(inspect.signature(fn).parameters) == ["register"]
        assert len(inspect.getdoc(fn) or "") > 40
        assert f"`{name}`" in (ROOT / "CONTRIBUTING.md").read_text()
