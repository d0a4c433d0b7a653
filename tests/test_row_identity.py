"""A leaderboard row is one configuration: options in row keys, migration of old boards, and
unit keys that see the code of a plugin installed for development."""

from __future__ import annotations

import copy
import importlib
import json
import re
import sys
from pathlib import Path

import pytest

from tests.test_cli import run_main
from wsss_bench.core import leaderboard

TINY = ["-o", "phantom.n_cases=6", "-o", "phantom.n_slices=4", "-o", "phantom.size=32",
        "--folds", "2", "--epochs", "1", "--batch-size", "8", "-q", "--backbones", "resnet18",
        "--ensembles", ""]


def _run(root: Path, *args: str) -> int:
    return run_main(["run", *TINY, *args, "--workdir", str(root / "w"), "--leaderboard-dir",
                     str(root / "lb")])


BASE = {"n_cases": 6, "n_slices": 4, "size": 32}  # TINY's phantom options


def key(method: str, options: dict | None = None, **dataset: object) -> str:
    """The row key of ``method`` (its plugins' ``options``) on TINY's phantom with
    ``dataset`` options added."""
    return leaderboard.row_key({"method": method, "options": options or {},
                                "dataset_options": {**BASE, **dataset}})


def _measured(root: Path) -> dict[str, dict]:
    board = json.loads((root / "lb" / "phantom.json").read_text())
    return {leaderboard.row_key(r): r for r in board["rows"] if r.get("source") == "measured"}


@pytest.fixture(scope="module")
def boards(tmp_path_factory):
    """Three runs into one board: SmoothGrad-CAM++ with 2 then 3 samples, then another
    phantom seed. Returns the folder and the rows after each run."""
    root = tmp_path_factory.mktemp("rows")
    after = []
    for extra in (["--cams", "gradcam,smoothgradcam++", "-o", "smoothgradcam++.samples=2"],
                  ["--cams", "gradcam,smoothgradcam++", "-o", "smoothgradcam++.samples=3"],
                  ["--cams", "gradcam", "-o", "phantom.seed=1"]):
        assert _run(root, *extra) == 0
        after.append(_measured(root))
    return root, after


def test_rows_made_with_other_options_coexist(boards):
    _, (first, second, _) = boards
    sg2, sg3 = (key(f"resnet18 / smoothgradcam++[samples={n}] / none",
                    {"smoothgradcam++": {"samples": n}}) for n in (2, 3))
    grad = key("resnet18 / gradcam / none")
    assert set(first) == {key("Empty"), grad, sg2}
    assert set(second) == set(first) | {sg3}
    assert second[sg2] == first[sg2]  # untouched by the second run
    assert second[grad]["run"]["date"] != first[grad]["run"]["date"]  # same config: replaced
    assert second[sg3]["options"] == {"smoothgradcam++": {"samples": 3}}
    assert second[sg3]["dataset_options"] == BASE
    assert second[sg3]["run"]["plugins"]["smoothgradcam++"]["samples"] == 3


def test_empty_rows_are_per_dataset_configuration(boards):
    root, (_, second, third) = boards
    noisy_empty, noisy_grad = key("Empty", seed=1), key("resnet18 / gradcam / none",
                                                             seed=1)
    assert set(third) == set(second) | {noisy_empty, noisy_grad}
    assert third[key("Empty")] == second[key("Empty")]  # the other configuration's baseline
    # other data, other baseline: the two Empty rows are measured on different slices
    assert third[noisy_empty]["metrics"]["paper_dsc"]["folds"] != (
        third[key("Empty")]["metrics"]["paper_dsc"]["folds"])
    # the table tells them apart: this board holds two dataset configurations
    md = (root / "lb" / "phantom.md").read_text()
    assert "| Empty · phantom[n_cases=6,n_slices=4,size=32,seed=1] |" in md
    assert "| Empty · phantom[n_cases=6,n_slices=4,size=32] |" in md


def test_a_board_written_before_rows_had_options_is_migrated(boards, tmp_path):
    root, _ = boards
    board = json.loads((root / "lb" / "phantom.json").read_text())
    old = copy.deepcopy(board)
    old["rows"] = [r for r in old["rows"] if "samples=2" not in r["method"]]
    for row in old["rows"]:  # as rows were written before they carried options
        if row.get("source") == "measured":
            del row["options"], row["dataset_options"]
            row["method"] = re.sub(r"\[[^]]*\]", "", row["method"])
    path = tmp_path / "phantom.json"
    path.write_text(json.dumps(old))
    migrated = leaderboard.load(path)["rows"]
    expected = [r for r in board["rows"] if "samples=2" not in r["method"]]
    assert sorted(map(leaderboard.row_key, migrated)) == sorted(
        map(leaderboard.row_key, expected))
    for row in migrated:
        if row.get("source") == "measured":
            assert row == next(r for r in expected
                               if leaderboard.row_key(r) == leaderboard.row_key(row))


DEV_CAM = '''
from dataclasses import dataclass
from wsss_bench import hookimpl
from wsss_bench_plugins.cams import GradCAM


@dataclass(frozen=True)
class DevCam:
    name: str = "devcam"
    description: str = "Grad-CAM scaled by FACTOR (a plugin under development)"

    def cam(self, model, target_layer, images, target=None):
        return GradCAM().cam(model, target_layer, images, target) * FACTOR


FACTOR = {factor}


@hookimpl
def register_cams(register):
    register(DevCam())
'''


@pytest.fixture
def dev_plugin(tmp_path, monkeypatch):
    """A CAM plugin "installed for development": its package and a dist-info without RECORD
    on sys.path, as a source checkout on PYTHONPATH would be. Returns a function that rewrites
    its source."""
    site = tmp_path / "site"
    (site / "devcam").mkdir(parents=True)
    info = site / "wsss_bench_devcam-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: wsss-bench-devcam\n"
                                   "Version: 0.1.0\n")
    (info / "entry_points.txt").write_text("[wsss_bench]\ndevcam = devcam\n")
    (info / "top_level.txt").write_text("devcam\n")

    def write(factor: float) -> None:
        (site / "devcam" / "__init__.py").write_text(DEV_CAM.format(factor=factor))
        sys.modules.pop("devcam", None)
        importlib.invalidate_caches()

    write(1.0)
    monkeypatch.syspath_prepend(str(site))
    yield write
    sys.modules.pop("devcam", None)


def test_an_edited_development_plugin_makes_new_units(dev_plugin, tmp_path):
    from wsss_bench.pipeline.plan import plugin_versions
    from wsss_bench.registry import load_registry

    def version() -> str:
        return plugin_versions(load_registry(), {"cams": ("devcam",)})["devcam"]

    first = version()
    assert re.fullmatch(r"wsss-bench-devcam 0\.1\.0 source [0-9a-f]{12}", first), first
    assert version() == first  # the same code: the same key
    assert _run(tmp_path, "--cams", "devcam") == 0
    made = set((tmp_path / "w" / "units" / "cams").iterdir())
    assert _run(tmp_path, "--cams", "devcam") == 0  # unchanged: reused
    assert set((tmp_path / "w" / "units" / "cams").iterdir()) == made
    evaluated = set((tmp_path / "w" / "units" / "evaluate").iterdir())
    dev_plugin(0.5)  # the author edits the plugin, same version
    assert version() != first
    assert _run(tmp_path, "--cams", "devcam") == 0
    remade = set((tmp_path / "w" / "units" / "cams").iterdir()) - made
    assert len(remade) == 2  # one CAM unit per fold, made by the new code
    for unit in remade:
        meta = json.loads((unit / "unit.json").read_text())
        assert meta["description"]["plugin"] == version()
    assert len(set((tmp_path / "w" / "units" / "evaluate").iterdir()) - evaluated) == 2


def test_wsss_bench_itself_and_wheel_installs_have_no_source_hash():
    from wsss_bench.pipeline.plan import plugin_versions
    from wsss_bench.registry import load_registry

    versions = plugin_versions(load_registry(), {"cams": ("gradcam",), "datasets": ("phantom",)})
    assert all(" source " not in v for v in versions.values()), versions
