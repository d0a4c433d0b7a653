"""Nothing wrong gets into the store or the leaderboard: the plugin-author test matrix.

Third-party plugins from ``tests/plugin_dists/faulty`` behave until ``WSSS_FAULT`` makes them
break their contract, as a plugin's bug would after a good run. Each row of the matrix runs
``wsss-bench run`` in this process and asserts the one line naming the plugin and its
distribution, the exit status, that no bad unit is in the store and that the leaderboard kept
its previous rows for the failed method while the whole methods were updated.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from tests.test_cli import run_main
from wsss_bench.contracts import Case, CaseFiles
from wsss_bench.errors import PluginOutputError, UsageError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs: one CPU thread is faster

DIST = "wsss-bench-faulty-plugins 0.1.0"
TINY = ["-o", "phantom.n_cases=6", "-o", "phantom.n_slices=4", "-o", "phantom.size=32",
        "--folds", "2", "--epochs", "1", "--batch-size", "8", "-q"]
FAULTY_SET = [a.replace("phantom.", "faultyset.") for a in TINY]


def _run(workdir: Path, *args: str) -> int:
    return run_main(["run", *args, "--workdir", str(workdir / "w"), "--leaderboard-dir",
                     str(workdir / "lb")])


def _board(workdir: Path, name: str = "phantom") -> dict:
    return json.loads((workdir / "lb" / f"{name}.json").read_text())


def _rows(board: dict) -> dict[str, dict]:
    return {r["method"]: r for r in board["rows"] if r.get("source") == "measured"}


def _unit_files(workdir: Path, stage: str) -> dict[str, dict]:
    """unit.json of every stored unit of ``stage``, by key."""
    return {p.parent.name: json.loads(p.read_text())
            for p in (workdir / "w" / "units" / stage).glob("*/unit.json")}


def _good_cams(workdir: Path) -> None:
    """Every stored CAM unit holds finite maps within [0, 1]."""
    for key in _unit_files(workdir, "cams"):
        maps = np.load(workdir / "w" / "units" / "cams" / key / "cams.npy").astype(np.float32)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1, key


@pytest.fixture(scope="module")
def faulty_env(plugin_dist):
    """The faulty distribution on sys.path for this module (entry points found in it)."""
    import importlib
    import sys

    path = str(plugin_dist("faulty"))
    sys.path.insert(0, path)
    importlib.invalidate_caches()
    yield
    sys.path.remove(path)
    importlib.invalidate_caches()


@pytest.fixture(scope="module")
def good_run(faulty_env, one_thread, tmp_path_factory):
    """A run where every faulty plugin behaves: stored units and a leaderboard to protect."""
    root = tmp_path_factory.mktemp("good")
    code = _run(root, *TINY, "--backbones", "resnet18,faultynet", "--cams",
                "gradcam,faultycam", "--ensembles", "and,faultyens", "--filters",
                "none,faultyfilter")
    assert code == 0
    return root


@pytest.fixture
def copy_of(good_run, tmp_path):
    shutil.copytree(good_run, tmp_path, dirs_exist_ok=True)
    return tmp_path


def _next_second(date: str) -> None:
    """Wait until the clock has left the second of ``date`` (rows record dates in seconds)."""
    from datetime import datetime, timezone

    while datetime.now(timezone.utc).isoformat(timespec="seconds") <= date:
        time.sleep(0.05)


def _expect_failure(root: Path, capsys, monkeypatch, fault: str, run: list[str], who: str,
                    problem: str, remade: set[str], code: int = 1) -> str:
    """A run with ``fault`` fails the units of ``who`` only: the exit status, a line naming the
    plugin, its distribution and the problem, no traceback, no bad unit stored; the rows in
    ``remade`` are new, every other row is exactly as before. Returns stderr."""
    before = _rows(_board(root))
    _next_second(max(r["run"]["date"] for r in before.values()))  # dates tell runs apart
    capsys.readouterr()
    monkeypatch.setenv("WSSS_FAULT", fault)
    status = _run(root, *TINY, *run)
    err = capsys.readouterr().err
    assert status == code, err
    assert any(f"{who} ({DIST}) " in line and problem in line for line in err.splitlines()), err
    assert "Traceback" not in err
    _good_cams(root)
    after = _rows(_board(root))
    assert set(after) == set(before)
    for method in before:
        if method in remade | {"Empty"}:
            assert after[method]["run"]["date"] != before[method]["run"]["date"], method
        else:
            assert after[method] == before[method], f"{method} changed after a failed run"
    return err


CAM_RUN = ["--backbones", "resnet18", "--cams", "gradcam,faultycam", "--ensembles", "",
           "--filters", "none", "--force", "cams"]


@pytest.mark.parametrize(("fault", "problem"), [
    ("nan", "returned NaN in "),
    ("range", "a map must lie in [0, 1]"),
    ("shape", "returned shape ("),
    ("raise", "raised RuntimeError: faultycam exploded"),
])
def test_a_broken_cam_fails_its_units_only(copy_of, capsys, monkeypatch, fault, problem):
    err = _expect_failure(copy_of, capsys, monkeypatch, f"cam:{fault}", CAM_RUN,
                          "CAM method 'faultycam'", problem, {"resnet18 / gradcam / none"})
    failed = [x for x in err.splitlines() if x.startswith("wsss-bench run: failed:")]
    assert len(failed) == 2 + 2, err  # the CAM units of 2 folds and the evaluations needing them
    assert all("nothing was stored" in x for x in failed[:2]), err
    assert err.splitlines()[-1].startswith("wsss-bench run: error: 4 unit(s) failed"), err


@pytest.mark.parametrize(("fault", "problem"), [
    ("shape", "combine returned shape ("),
    ("int", "combine returned dtype uint8; expected bool"),
    ("raise", "raised ValueError: faultyens cannot combine"),
])
def test_a_broken_ensemble_fails_its_units_only(copy_of, capsys, monkeypatch, fault, problem):
    run = ["--backbones", "resnet18,faultynet", "--cams", "gradcam", "--ensembles",
           "and,faultyens", "--filters", "none", "--force", "evaluate"]
    _expect_failure(copy_of, capsys, monkeypatch, f"ensemble:{fault}", run,
                    "ensemble 'faultyens'", problem,
                    {"resnet18 / gradcam / none", "faultynet / gradcam / none",
                     "and(resnet18,faultynet) / gradcam / none"})


@pytest.mark.parametrize(("fault", "problem"), [
    ("shape", "region returned shape ("),
    ("float", "region returned dtype float32; expected bool"),
    ("raise", "raised KeyError: 'faultyfilter region'"),
])
def test_a_broken_filter_fails_its_units_only(copy_of, capsys, monkeypatch, fault, problem):
    run = ["--backbones", "resnet18", "--cams", "gradcam", "--ensembles", "", "--filters",
           "none,faultyfilter", "--force", "evaluate"]
    _expect_failure(copy_of, capsys, monkeypatch, f"filter:{fault}", run,
                    "filter 'faultyfilter'", problem, {"resnet18 / gradcam / none"})


@pytest.mark.parametrize(("fault", "problem"), [
    ("shape", "model returned shape (2, 1) for a batch of 2; expected logits (2, 2)"),
    ("nan", "model returned NaN in 4 of 4 values logits"),
])
def test_a_broken_backbone_fails_its_units_only(copy_of, capsys, monkeypatch, fault, problem):
    run = ["--backbones", "resnet18,faultynet", "--cams", "gradcam", "--ensembles", "",
           "--filters", "none", "--force", "train"]
    err = _expect_failure(copy_of, capsys, monkeypatch, f"backbone:{fault}", run,
                          "backbone 'faultynet'", problem, {"resnet18 / gradcam / none"})
    assert sum("skipped, it needs CAMs that failed" in x for x in err.splitlines()) == 2, err


@pytest.mark.parametrize(("fault", "problem"), [
    ("nan", "images contain NaN in 1 of"),
    ("float64", "images have dtype float64; expected float32"),
    ("uint8", "masks have dtype uint8; expected bool"),
    ("raise", "raised OSError: faultyset cannot read its files"),
])
def test_a_broken_dataset_stops_the_run_before_anything_is_stored(
        faulty_env, tmp_path, capsys, monkeypatch, fault, problem):
    monkeypatch.setenv("WSSS_FAULT", f"dataset:{fault}")
    code = _run(tmp_path, "--dataset", "faultyset", *FAULTY_SET, "--backbones", "resnet18",
                "--ensembles", "")
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"dataset 'faultyset' ({DIST}) " in err and problem in err, err
    assert not (tmp_path / "w" / "units").exists()
    assert not (tmp_path / "lb").exists()


@dataclass(frozen=True)
class NpyCases:
    """A file dataset (one .npy volume per case) that decodes badly as ``fault`` says."""

    name: str = "npycases"
    description: str = "test file dataset"
    needs_data_dir: ClassVar[bool] = True
    reads_files: ClassVar[bool] = True
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = "made by the test"
    cache_version: ClassVar[int] = 0
    cam_view: ClassVar[bool] = False
    fault: str = "nan"

    def sources(self, data_dir: Path) -> list[CaseFiles]:
        return [CaseFiles(p.stem, {"image": p}) for p in sorted(Path(data_dir).glob("*.npy"))]

    def load(self, source: CaseFiles) -> Case:
        images = np.load(source.files["image"])
        if source.case_id == "c2" and self.fault == "nan":
            images[1, 0, 3, 3] = np.nan
        if source.case_id == "c2" and self.fault == "huge":
            images *= 1e6  # finite float32, beyond float16
        return Case(source.case_id, images, images[:, 0] > 0.5)


@pytest.mark.parametrize(("fault", "problem"), [
    ("nan", "case 'c2': images contain NaN in 1 of"),
    ("huge", "case 'c2': images exceed float16's range (±65504) and cannot be cached"),
])
def test_a_file_dataset_decoded_in_worker_processes_is_checked_too(tmp_path, fault, problem):
    from wsss_bench.core import slice_cache

    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(tmp_path / f"c{i}.npy", rng.random((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(PluginOutputError) as failed:
        slice_cache.prepare(NpyCases(fault=fault), tmp_path, tmp_path / "cache", workers=2)
    message = str(failed.value)
    assert message.startswith("dataset 'npycases' (module tests.test_reliability, no "
                              "installed distribution) broke its contract: "), message
    assert problem in message and "\n" not in message
    assert not any((tmp_path / "cache").glob("npycases-*"))  # nothing cached


def test_a_cam_raising_a_usage_error_or_returning_an_array_is_named():
    import torch

    from wsss_bench.guards import guard

    class Loud:
        name, description = "loud", "raises a UsageError"

        def cam(self, model, layer, images, target=None):
            raise UsageError("bad things")

    class Numpy:
        name, description = "numpycam", "returns a NumPy array"

        def cam(self, model, layer, images, target=None):
            return np.zeros((len(images), *images.shape[2:]), dtype=np.float32)

    x = torch.zeros(2, 1, 8, 8)
    with pytest.raises(PluginOutputError, match=r"^CAM method 'loud' \(module "
                       r"tests\.test_reliability, no installed distribution\) raised "
                       r"UsageError: bad things$"):
        guard("cams", Loud()).cam(None, None, x)
    with pytest.raises(PluginOutputError, match=r"CAM method 'numpycam' .* broke its contract: "
                       r"returned a ndarray, not a torch\.Tensor \[B,H,W\]"):
        guard("cams", Numpy()).cam(None, None, x)
