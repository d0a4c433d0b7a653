"""The artifact store: reuse, adding plugins trains nothing, --force, clean, seeds,
reproducibility."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import wsss_bench
from tests.test_cli import SMALL, run_captured, run_main
from wsss_bench.core.store import Store, clean
from wsss_bench.pipeline.plan import Plan
from wsss_bench.pipeline.settings import RunConfig

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.slow]


def units(workdir: Path, stage: str) -> dict[str, float]:
    """``{key: made}`` of the stage's units."""
    root = workdir / "units" / stage
    return {p.name: json.loads((p / "unit.json").read_text())["made"]
            for p in sorted(root.glob("[!.]*"))} if root.exists() else {}


def measured(board_dir: Path, name: str = "phantom") -> dict[str, dict]:
    board = json.loads((board_dir / f"{name}.json").read_text())
    return {r["method"]: r["metrics"] for r in board["rows"] if r["source"] == "measured"}


def test_reuse_add_plugins_force_and_clean(tmp_path, capsys):
    work, boards = tmp_path / "w", tmp_path / "b"
    base = ["run", *SMALL[:-1], "--workdir", str(work), "--leaderboard-dir", str(boards)]
    assert run_main([*base, "--ensembles", "and", "-q"]) == 0
    trained, mapped = units(work, "train"), units(work, "cams")
    assert len(trained) == 4 and len(mapped) == 4  # 2 backbones × 2 folds
    first = measured(boards)

    # a new ensemble, filter and CAM method: no training, only the new CAM units
    code, err = run_captured([*base, "--ensembles", "and,or,vote", "--filters",
                              "none,center-box", "--cams", "gradcam,gradcam++"], capsys)
    assert code == 0, err
    assert units(work, "train") == trained
    assert err.count(": reused (unit") == 4 + 4  # 4 train + 4 gradcam units
    assert "epochs, loss" not in err
    assert len(units(work, "cams")) == 8
    second = measured(boards)
    for method, metrics in first.items():  # the old rows are unchanged
        assert second[method] == metrics
    assert len(second) == 1 + 2 * 2 * (2 + 3)  # Empty + cams × filters × (2 single + 3 ens.)

    # --force cams recomputes the maps (same numbers), not the classifiers
    code, err = run_captured([*base, "--ensembles", "and", "--force", "cams"], capsys)
    assert code == 0
    assert units(work, "train") == trained
    remade = units(work, "cams")
    assert all(remade[k] > mapped[k] for k in mapped)
    assert measured(boards) == second

    # --force train retrains and gives the same numbers again
    assert run_main([*base, "--ensembles", "and", "--force", "train", "-q"]) == 0
    retrained = units(work, "train")
    assert set(retrained) == set(trained) and all(retrained[k] > trained[k] for k in trained)
    assert measured(boards) == second

    # clean: every manifest's units stay, an orphan and a killed run's leftovers go
    orphan = work / "units" / "train" / "0123456789abcdef0123"
    orphan.mkdir()
    (orphan / "unit.json").write_text("{}")
    leftover = work / "units" / "cams" / ".abc.old-1"
    leftover.mkdir()
    removed, _ = clean(work, dry_run=True)
    assert set(removed) == {orphan, leftover} and orphan.exists()
    code, err = run_captured(["clean", "--workdir", str(work)], capsys)
    assert code == 0 and not orphan.exists() and not leftover.exists()
    assert units(work, "train") == retrained
    # an unreadable manifest stops clean before it removes anything
    bad = work / "manifests" / "broken.json"
    bad.write_text("{not json")
    code, err = run_captured(["clean", "--workdir", str(work)], capsys)
    assert code == 2 and "broken.json: unreadable run manifest" in err
    assert units(work, "train") == retrained
    bad.unlink()
    # without its manifests nothing is referenced any more
    for manifest in (work / "manifests").glob("*.json"):
        manifest.unlink()
    clean(work)
    assert units(work, "train") == {} and units(work, "cams") == {}


def test_two_identical_runs_give_identical_numbers(tmp_path):
    for name in ("a", "b"):
        assert run_main(["run", *SMALL, "--ensembles", "and,or", "--workdir",
                         str(tmp_path / name), "--leaderboard-dir", str(tmp_path / name)]) == 0
    assert measured(tmp_path / "a") == measured(tmp_path / "b")


def test_seeds_average_over_seeds_and_folds(tmp_path):
    work, boards = tmp_path / "w", tmp_path / "b"
    base = ["run", *SMALL, "--ensembles", "and", "--workdir", str(work)]
    assert run_main([*base, "--leaderboard-dir", str(boards / "one")]) == 0
    assert run_main([*base, "--seeds", "0,1", "--leaderboard-dir", str(boards / "two")]) == 0
    one, two = measured(boards / "one"), measured(boards / "two")
    assert len(units(work, "train")) == 8  # seed 0's 4 units reused, seed 1's 4 new
    for method, metrics in two.items():
        folds = metrics["paper_dsc"]["folds"]
        assert len(folds) == 4  # 2 seeds × 2 folds, seed-major
        assert folds[:2] == one[method]["paper_dsc"]["folds"]
        assert metrics["paper_dsc"]["mean"] == pytest.approx(sum(folds) / 4)
    board = json.loads((boards / "two" / "phantom.json").read_text())
    assert all(r["seeds"] == [0, 1] for r in board["rows"] if r["source"] == "measured")


def test_store_write_is_atomic(tmp_path):
    store = Store(tmp_path)

    def failing(folder: Path) -> None:
        (folder / "half.npy").write_bytes(b"x")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        store.write("train", "k1", {}, failing)
    assert not store.ready("train", "k1")
    assert list((tmp_path / "units" / "train").iterdir()) == []
    store.write("train", "k1", {"a": 1}, lambda folder: {"extra": 2})
    assert store.ready("train", "k1") and store.info("train", "k1")["extra"] == 2


def test_unit_keys_change_with_options_and_plugin_release(tmp_path):
    registry = wsss_bench.load_registry()
    plan = Plan.build(RunConfig(workdir=str(tmp_path)), registry)
    key, description = plan.cam_key("t" * 20, "gradcam")
    assert description["plugin"].startswith("wsss-bench ")
    newer = dataclasses.replace(plan, versions={**plan.versions, "gradcam": "wsss-bench 99.0"})
    assert newer.cam_key("t" * 20, "gradcam")[0] != key
    other = Plan.build(RunConfig(workdir=str(tmp_path), cam_target="predicted"), registry)
    assert other.cam_key("t" * 20, "gradcam")[0] != key
    assert other.evaluate_key(["a"], "and", "none", ["c1"])[0] != other.evaluate_key(
        ["a"], "or", "none", ["c1"])[0]
