"""End-to-end runs on real data, and published splits (``--folds-file``)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import FIRST, SECOND
from tests.test_cli import TINY, run_main
from wsss_bench.core.folds import read_folds_file
from wsss_bench.core.reported import TABLES
from wsss_bench.errors import UsageError

pytestmark = pytest.mark.usefixtures("one_thread")

CROP = (slice(56, 184), slice(56, 184), slice(60, 68))  # 8 slices per case: a fast run


def lesion_fraction(root: Path, cases: list[str]) -> float:
    """g of the cases, computed straight from the seg files (not through the loader)."""
    fg = total = 0
    for case in cases:
        seg = np.asarray(nib.load(str(root / case / f"{case}_seg.nii.gz")).dataobj)[CROP]
        fg += int((seg > 0).sum())
        total += seg.size
    return fg / total


CAMS = ("gradcam", "eigencam", "fullgrad", "scorecam")


@pytest.mark.slow
def test_brats_run_on_the_real_sample(brats_sample, tmp_path):
    """The default backbones on the real sample, with a gradient, a gradient-free, a
    full-gradient and a perturbation CAM method (each on both backbones and their `and`;
    Score-CAM on the 8 most varying channels, so that it takes seconds)."""
    work, boards = tmp_path / "work", tmp_path / "boards"
    code = run_main(["run", "--dataset", "brats", "--data-dir", str(brats_sample),
                     "--cams", ",".join(CAMS), "-o", "scorecam.top_k=8", "--ensembles", "and",
                     "--epochs", "1",
                     "--folds", "2", "-o", "brats.crop=56:184,56:184,60:68", "--workdir",
                     str(work), "--leaderboard-dir", str(boards), "-q"])
    assert code == 0
    board = json.loads((boards / "brats.json").read_text())
    split = json.loads((work / "brats" / "folds.json").read_text())["folds"]
    assert board["split"] == split and sorted(sum(split, [])) == [
        f"BraTS15_pat000{i}" for i in range(1, 7)]
    rows = {r["method"]: r for r in board["rows"] if r["source"] == "measured"}
    assert {r["method"] for r in board["rows"] if r["source"] == "reported"} == {
        f"paper: {name}" for name, _, _ in TABLES["brats"][1]}
    shown = [c.replace("scorecam", "scorecam[top_k=8]") for c in CAMS]
    assert set(rows) == {"Empty"} | {f"{core} / {cam} / none" for cam in shown
                                      for core in (FIRST, SECOND, f"and({FIRST},{SECOND})")}
    empty = rows["Empty"]["metrics"]["paper_dsc"]["folds"]
    for fold, cases in enumerate(split):
        g = lesion_fraction(brats_sample, cases)
        assert empty[fold] == pytest.approx(2 * (1 - g) / (3 - g), abs=1e-12)
    effective = rows["Empty"]["run"]["effective"]
    assert effective["image_size"] == [128, 128] and effective["data_dir"] == str(brats_sample)
    assert rows["Empty"]["run"]["plugins"]["brats"]["crop"] == "56:184,56:184,60:68"
    md = (boards / "brats.md").read_text()
    assert "BraTS15_pat0001" in md  # the split is in the header


def ids_and_labels(cases: dict[str, list[int]]) -> tuple[np.ndarray, np.ndarray]:
    ids = np.asarray([c for c, ls in cases.items() for _ in ls])
    return ids, np.asarray([v for ls in cases.values() for v in ls])


CASES = {"a": [0, 1], "b": [1], "c": [0, 0], "d": [1, 0]}


def write(tmp_path: Path, content) -> Path:
    path = tmp_path / "split.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize("content", [{"folds": [["a", "c"], ["b", "d"]]},
                                     [["c", "a"], ["d", "b"]],
                                     {"seed": 3, "folds": [["a"], ["b"], ["c", "d"]]}])
def test_folds_file_accepted(tmp_path, content):
    folds = read_folds_file(write(tmp_path, content), *ids_and_labels(CASES))
    raw = content["folds"] if isinstance(content, dict) else content
    assert folds == [sorted(f) for f in raw]


@pytest.mark.parametrize(("content", "needle"), [
    ("{not json", "not readable JSON"),
    ({"folds": [["a", "b", "c", "d"]]}, "at least 2 folds"),
    ({"folds": [["a", 1], ["b"]]}, "case-id strings"),
    ({"folds": [["a", "c"], ["b", "d", "a"]]}, "case a is in fold 0 and fold 1"),
    ({"folds": [["a", "c"], ["b", "d", "zz"]]}, "case zz (fold 1) is not in the dataset"),
    ({"folds": [["a"], ["b", "d"]]}, "1 case(s) of the dataset are in no fold (e.g. c)"),
    ({"folds": [["c"], ["a", "b", "d"]]}, "fold 0 has no slice with a lesion"),
])
def test_bad_folds_file_is_named(tmp_path, content, needle):
    path = write(tmp_path, content)
    with pytest.raises(UsageError) as err:
        read_folds_file(path, *ids_and_labels(CASES))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_missing_folds_file(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        read_folds_file(tmp_path / "nope.json", *ids_and_labels(CASES))


@pytest.mark.slow
def test_run_with_a_published_split(tmp_path, capsys):
    common = [*TINY, "--ensembles", "and",
              "--leaderboard-dir", str(tmp_path / "boards")]
    assert run_main(["run", *common, "--workdir", str(tmp_path / "w1")]) == 0
    seeded = json.loads((tmp_path / "boards" / "phantom.json").read_text())
    # the folds.json of that run, given back as a published split, reproduces it exactly
    published = tmp_path / "w1" / "phantom" / "folds.json"
    assert run_main(["run", *common, "--workdir", str(tmp_path / "w2"), "--folds-file",
                     str(published)]) == 0
    again = json.loads((tmp_path / "boards" / "phantom.json").read_text())
    assert again["split"] == seeded["split"] and again["split_file"] == str(published)
    for old, new in zip(seeded["rows"], again["rows"], strict=True):
        assert old["method"] == new["method"] and old["metrics"] == new["metrics"]
    assert f"from `{published}`" in (tmp_path / "boards" / "phantom.md").read_text()
    # a split that does not fit the data is refused in one line
    split = seeded["split"]
    capsys.readouterr()
    bad = write(tmp_path, {"folds": [split[0], split[1] + ["ghost"]]})
    code = run_main(["run", *common, "--workdir", str(tmp_path / "w3"), "--folds-file",
                     str(bad)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(bad) in err and "case ghost" in err
