"""Every broken-data case is one line on stderr naming the file and the problem, exit status 2,
and nothing written (no slice cache, no leaderboard)."""

from __future__ import annotations

import gzip
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.mri_files import prostate_image, tiny_decathlon, write_nifti
from tests.test_cli import run_captured

pytestmark = pytest.mark.usefixtures("one_thread")


def check_refused(tmp_path: Path, capsys, dataset: str, data_dir: Path, *needles: str,
                  workers: int = 1) -> None:
    work, boards = tmp_path / "work", tmp_path / "boards"
    code, err = run_captured(["run", "--dataset", dataset, "--data-dir", str(data_dir), "--workdir",
                         str(work), "--leaderboard-dir", str(boards), "--workers", str(workers),
                         "-q"], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not (work / "cache").exists()
    assert not boards.exists()


@pytest.fixture
def msd(tmp_path) -> Path:
    """A small valid Task05 tree under ``tmp_path/data``; tests break one file of it."""
    return tiny_decathlon(tmp_path / "data", n_cases=4)


IMAGE = "imagesTr/prostate_01.nii.gz"
LABEL = "labelsTr/prostate_01.nii.gz"


def test_missing_root(tmp_path, capsys):
    check_refused(tmp_path, capsys, "brats", tmp_path / "no-such-dir", "no-such-dir",
                  "no such folder", "registration")


def test_no_cases_brats(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    check_refused(tmp_path, capsys, "brats", tmp_path / "empty", "empty", "no BraTS cases")


def test_no_cases_decathlon(tmp_path, capsys):
    (tmp_path / "data" / "Task05_Prostate" / "imagesTr").mkdir(parents=True)
    check_refused(tmp_path, capsys, "decathlon", tmp_path / "data", "imagesTr", "no cases")


def corrupt(path: Path) -> None:
    path.write_bytes(gzip.compress(b"this is not a NIfTI header" * 20))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def break_shape(path: Path) -> None:
    write_nifti(path, np.zeros((24, 20, 4), dtype=np.uint8))


def bad_labels(path: Path) -> None:
    label = np.zeros((24, 24, 4), dtype=np.uint8)
    label[5:9, 5:9, 1] = 3
    write_nifti(path, label)


def one_channel(path: Path) -> None:
    write_nifti(path, np.ones((24, 24, 4, 1), dtype=np.float32))


def three_d(path: Path) -> None:
    write_nifti(path, np.ones((24, 24, 4), dtype=np.float32))


def nan_image(path: Path) -> None:
    image = prostate_image(np.zeros((24, 24, 4), dtype=np.uint8))
    image[3, 4, 2, 1] = np.nan
    write_nifti(path, image)


def inf_image(path: Path) -> None:
    image = prostate_image(np.zeros((24, 24, 4), dtype=np.uint8))
    image[0, 0, 0, 0] = np.inf
    write_nifti(path, image)


def no_label(path: Path) -> None:
    path.unlink()


@pytest.mark.parametrize(("relative", "damage", "needles"), [
    (IMAGE, corrupt, ["not a readable NIfTI", "corrupt or truncated"]),
    (IMAGE, truncate, ["not a readable NIfTI", "corrupt or truncated"]),
    (LABEL, truncate, ["not a readable NIfTI"]),
    (LABEL, break_shape, ["label shape (24, 20, 4) does not match its image (24, 24, 4)"]),
    (LABEL, bad_labels, ["label values {0, 3} outside the expected {0, 1, 2}"]),
    (IMAGE, one_channel, ["has 1 channel(s)", "needs channel 1"]),
    (IMAGE, three_d, ["expected a 4-D image"]),
    (IMAGE, nan_image, ["1 voxels are NaN or Inf"]),
    (IMAGE, inf_image, ["1 voxels are NaN or Inf"]),
    (LABEL, no_label, ["case prostate_01 has no label file"]),
], ids=["corrupt", "truncated", "truncated-label", "shape-mismatch", "label-values",
        "too-few-channels", "not-4d", "nan", "inf", "no-label"])
def test_broken_file_is_named(tmp_path, capsys, msd, relative: str,
                              damage: Callable[[Path], None], needles: list[str]):
    target = msd / relative
    damage(target)
    shown = target.parent if damage is no_label else target
    check_refused(tmp_path, capsys, "decathlon", msd.parent, str(shown), *needles)


def test_error_from_a_worker_process_is_one_line_too(tmp_path, capsys, msd):
    truncate(msd / IMAGE)
    check_refused(tmp_path, capsys, "decathlon", msd.parent, str(msd / IMAGE),
                  "not a readable NIfTI", workers=2)


def test_image_without_label_and_label_without_image(tmp_path, capsys, msd):
    shutil.move(msd / IMAGE, tmp_path / "moved.nii.gz")
    check_refused(tmp_path, capsys, "decathlon", msd.parent, str(msd / LABEL), "has no image")


def test_brats_case_without_seg(tmp_path, capsys, brats_fixture):
    case = tmp_path / "data" / "BraTS15_pat0001"
    case.mkdir(parents=True)
    (case / "BraTS15_pat0001_flair.nii.gz").symlink_to(  # the committed real case: every clone
        brats_fixture / "BraTS15_pat0001" / "BraTS15_pat0001_flair.nii.gz")
    check_refused(tmp_path, capsys, "brats", tmp_path / "data", str(case), "has no label file")
