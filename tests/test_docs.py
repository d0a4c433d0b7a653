"""The README's set-up commands, CI and the hook documentation stay in step."""

from __future__ import annotations

import inspect
import re

import pluggy
import pytest

from wsss_bench import hookspecs
from wsss_bench.contracts import KINDS

from .conftest import ROOT


def readme_commands() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must start with a sh block of the set-up commands"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_readme_starts_with_install_and_run_then_test_command():
    install, test = readme_commands()
    assert "pip install -e . &&" in install and install.endswith("wsss-bench run")
    assert test.endswith("python -m pytest -n 2") and ".[test,peers,ray]" in test


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


@pytest.mark.parametrize("name", ["phantom", "brats-sample", "phantom-methods"])
def test_committed_leaderboards_are_real_runs_with_their_command(name):
    """Each committed board: JSON is the source of truth, the markdown is rendered from it, the
    header states the command, and every measured row was made by that command."""
    import json

    from wsss_bench.core import leaderboard

    board = json.loads((ROOT / "leaderboards" / f"{name}.json").read_text())
    assert board["name"] == name and board["command"].startswith("wsss-bench run")
    measured = [r for r in board["rows"] if r["source"] == "measured"]
    assert measured and all(r["run"]["command"] == board["command"] for r in measured)
    assert all(r["run"]["device"].startswith("cpu") for r in measured)
    assert (ROOT / "leaderboards" / f"{name}.md").read_text() == leaderboard.render_markdown(board)
    assert f"- Reproduce: `{board['command']}`" in leaderboard.render_markdown(board)


@pytest.mark.parametrize("name", ["phantom", "brats-sample", "phantom-methods"])
def test_committed_leaderboards_carry_their_figures_and_web_page(name):
    """Each committed board lists its figures (all there, PNG), the markdown links them, and
    the web page is rendered from the JSON."""
    import json

    from wsss_bench.core import leaderboard, webpage

    board = json.loads((ROOT / "leaderboards" / f"{name}.json").read_text())
    figures = board["figures"]
    kinds = {link.rsplit("/", 1)[-1].split("-", 1)[0].removesuffix(".png") for link in figures}
    assert kinds == {"overlays", "landscape", "curves", "ranking"}
    for link in figures:
        assert link.startswith(f"figures/{name}/")
        assert (ROOT / "leaderboards" / link).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (ROOT / "leaderboards" / f"{name}.html").read_text(encoding="utf-8")
    assert html == webpage.render_html(board, figures)
    assert set(figures) <= set(leaderboard.render_markdown(board).replace("(", " ").replace(
        ")", " ").split())


@pytest.mark.parametrize("name", ["phantom", "brats-sample", "phantom-methods"])
def test_committed_leaderboards_carry_reproducible_statistics(name):
    """Every measured row of a committed board has its per-case results and statistics, and
    recomputing them from the per-case results with the recorded settings gives the same."""
    import copy
    import json

    from wsss_bench.core import statistics

    board = json.loads((ROOT / "leaderboards" / f"{name}.json").read_text())
    measured = [r for r in board["rows"] if r["source"] == "measured"]
    assert all(r.get("per_case") and r.get("stats") for r in measured)
    st = board["statistics"]
    assert st["resamples"] >= 1000 and st["level"] == 0.95
    again = statistics.annotate(copy.deepcopy(board), statistics.Bootstrap(
        resamples=st["resamples"], seed=st["seed"], level=st["level"], metric=st["metric"]))
    # exact on the machine that made them; elsewhere a BLAS may sum Dice values in another
    # order (1e-16), so numbers compare to 1e-9 and everything else exactly
    assert _close([r.get("stats") for r in again["rows"]], [r.get("stats") for r in board["rows"]])


def _close(a, b) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= 1e-9
    return a == b


def test_plugin_options_are_documented_and_every_builtin_option_has_help():
    """The README names every flag of `wsss-bench plugins`; CONTRIBUTING shows how an option
    declares its help and where it is listed; every built-in option states its help."""
    import wsss_bench
    from wsss_bench import options
    from wsss_bench.cli import build_parser

    plugins = build_parser()._subparsers._group_actions[0].choices["plugins"]
    flags = {s for a in plugins._actions for s in a.option_strings} - {"-h", "--help"}
    readme, contributing = ((ROOT / n).read_text() for n in ("README.md", "CONTRIBUTING.md"))
    assert flags == {"--json", "--options"}
    for flag in flags:
        assert f"plugins {flag}" in readme or f"plugins [{flag}]" in readme, flag
    assert "wsss_bench.options import option" in contributing
    assert "wsss-bench plugins --options" in contributing
    for entry in wsss_bench.load_registry().entries():
        for o in options.describe(entry.obj, entry.kind):
            assert o["help"] != options.NO_HELP, f"{entry.name}.{o['name']} has no help"
