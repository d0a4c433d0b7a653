"""The ``brats`` dataset on the real BraTS sample (6 cases, float labels, z-scored FLAIR)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.mri_files import write_nifti
from wsss_bench.errors import UsageError
from wsss_bench.volumes import DataError, MissingData
from wsss_bench_plugins.brats import Brats

CASES = [f"BraTS15_pat000{i}" for i in range(1, 7)]


def raw(root: Path, case: str, kind: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / case / f"{case}_{kind}.nii.gz")).dataobj)


def minmax_reference(volume: np.ndarray) -> np.ndarray:
    """float64[Z,X,Y]: each axial slice (fixed z) of an X×Y×Z volume min–max normalised."""
    v = volume.astype(np.float64)
    low = v.min(axis=(0, 1), keepdims=True)
    span = v.max(axis=(0, 1), keepdims=True) - low
    norm = np.where(span > 0, (v - low) / np.where(span > 0, span, 1), 0.0)
    return norm.transpose(2, 0, 1)


def reference_slices(volume: np.ndarray) -> np.ndarray:
    """Per-slice min–max in float64 on the full 240×240 slice, then the default crop."""
    return minmax_reference(volume)[13:141, 56:184, 56:184]


@pytest.fixture(scope="module")
def cases(brats_sample):
    ds = Brats()
    return {s.case_id: ds.load(s) for s in ds.sources(brats_sample)}


def test_six_cases_of_128_slices_128x128(cases):
    assert sorted(cases) == CASES
    for case in cases.values():
        assert case.images.shape == (128, 1, 128, 128)
        assert case.images.dtype == np.float32
        assert case.masks.shape == (128, 128, 128)


def test_float_labels_give_whole_tumour(brats_sample, cases):
    seg = raw(brats_sample, CASES[0], "seg")
    assert seg.dtype.kind == "f" and set(np.unique(seg)) <= {0, 1, 2, 3, 4}
    for case_id, case in cases.items():
        expected = raw(brats_sample, case_id, "seg")[56:184, 56:184, 13:141].transpose(2, 0, 1) > 0
        np.testing.assert_array_equal(case.masks, expected)
        assert 0.005 < case.masks.mean() < 0.15  # whole tumour: a few % of the crop


def test_flair_is_minmax_per_full_slice_with_background_exactly_zero(brats_sample, cases):
    for case_id, case in cases.items():
        flair = raw(brats_sample, case_id, "flair")
        np.testing.assert_allclose(case.images[:, 0], reference_slices(flair), atol=2e-7)
        # z-scored inside the brain, one constant (the minimum) outside: exactly 0 after min–max
        background = (flair == flair.min())[56:184, 56:184, 13:141].transpose(2, 0, 1)
        assert background.mean() > 0.2
        assert (case.images[:, 0][background] == 0.0).all()
        assert case.images.min() == 0.0 and case.images.max() <= 1.0


def test_two_modalities_stack_as_channels(brats_sample, cases):
    ds = Brats(modalities="flair,t1ce")
    source = ds.sources(brats_sample)[0]
    case = ds.load(source)
    assert case.images.shape == (128, 2, 128, 128)
    np.testing.assert_array_equal(case.images[:, 0], cases[source.case_id].images[:, 0])
    t1ce = raw(brats_sample, source.case_id, "t1ce")
    np.testing.assert_allclose(case.images[:, 1], reference_slices(t1ce), atol=2e-7)


def test_the_training_view_is_never_binarised(brats_sample, cases):
    """The authors binarise only the CAM input (tests/test_cam_view.py); the old option that
    binarised the training input (and so the filters' input) is gone."""
    ds = Brats(cam_binarize=0.8)
    source = ds.sources(brats_sample)[1]
    case = ds.load(source)
    np.testing.assert_array_equal(case.images, cases[source.case_id].images)
    assert len(np.unique(case.images)) > 1000
    assert set(np.unique(case.cam_images)) == {0.0, 255.0}
    with pytest.raises(TypeError, match="binarize"):
        Brats(binarize=0.8)  # type: ignore[call-arg]


def test_crop_option(brats_sample):
    ds = Brats(crop="none")
    case = ds.load(ds.sources(brats_sample)[0])
    assert case.images.shape == (155, 1, 240, 240)
    ds = Brats(crop="0:100,10:60,0:5")
    assert ds.load(ds.sources(brats_sample)[0]).images.shape == (5, 1, 100, 50)
    with pytest.raises(DataError, match="smaller than the crop"):
        ds = Brats(crop="0:300,0:10,0:10")
        ds.load(ds.sources(brats_sample)[0])


@pytest.mark.parametrize("bad", [{"modalities": "flair,dwi"}, {"modalities": ""},
                                 {"crop": "1:2,3"}, {"crop": "5:1,0:1,0:1"}, {"cam_binarize": 1.5}])
def test_bad_options_are_rejected(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(Brats(), **bad)


def test_missing_modality_names_the_case(brats_sample):
    with pytest.raises(DataError, match=r"BraTS15_pat0001 has no t2 file"):
        Brats(modalities="t2").sources(brats_sample)
    # the message names the override that works on this data
    with pytest.raises(DataError, match=r"it has flair, t1ce\): pass -o brats.modalities="
                                        r"flair,t1ce$"):
        Brats(modalities="flair,t1ce,t2").sources(brats_sample)
    with pytest.raises(DataError, match=r"no t2 file .*-o brats.cam_modality=flair"):
        Brats(cam_binarize=0.8, cam_modality="t2").sources(brats_sample)


def link_case(src: Path, dst: Path, seg_name: str | None = None) -> None:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        name = f.name
        if name.endswith("_seg.nii.gz") and seg_name:
            name = seg_name
        (dst / name).symlink_to(f)


@pytest.mark.parametrize("layout", ["cases", "release", "holder"])
def test_accepted_roots(brats_sample, tmp_path, layout):
    release = tmp_path / "MICCAI_BraTS2020_TrainingData"
    for case in CASES[:2]:
        link_case(brats_sample / case, release / case)
    (release / "name_mapping.csv").write_text("not a case\n")
    root = {"cases": release, "release": release, "holder": tmp_path}[layout]
    if layout == "holder":  # another folder beside the release must not confuse the search
        (tmp_path / "notes").mkdir()
        root = tmp_path
    assert [s.case_id for s in Brats().sources(root)] == CASES[:2]
    assert Brats().sources(brats_sample)[0].case_id == CASES[0]  # case folders directly


def test_misnamed_segmentation_of_case_355_is_found(brats_sample, tmp_path, cases):
    case = "BraTS20_Training_355"
    folder = tmp_path / case
    folder.mkdir()
    src = brats_sample / CASES[0]
    (folder / f"{case}_flair.nii.gz").symlink_to(src / f"{CASES[0]}_flair.nii.gz")
    (folder / "W39_1998.09.19_Segm.nii.gz").symlink_to(src / f"{CASES[0]}_seg.nii.gz")
    (source,) = Brats().sources(tmp_path)
    assert source.files["seg"].name == "W39_1998.09.19_Segm.nii.gz"
    np.testing.assert_array_equal(Brats().load(source).masks, cases[CASES[0]].masks)


def test_uint8_brats2020_labels(brats_sample, tmp_path, cases):
    case = "BraTS20_Training_001"
    src = brats_sample / CASES[2]
    seg = np.asarray(nib.load(str(src / f"{CASES[2]}_seg.nii.gz")).dataobj)
    folder = tmp_path / case
    folder.mkdir()
    (folder / f"{case}_flair.nii.gz").symlink_to(src / f"{CASES[2]}_flair.nii.gz")
    uint8 = np.where(seg == 3, 4, seg).astype(np.uint8)  # BraTS 2020 labels {0, 1, 2, 4}
    write_nifti(folder / f"{case}_seg.nii.gz", uint8)
    (source,) = Brats().sources(tmp_path)
    np.testing.assert_array_equal(Brats().load(source).masks, cases[CASES[2]].masks)


def test_missing_root_says_where_to_get_the_data(tmp_path):
    with pytest.raises(MissingData, match="registration") as err:
        Brats().sources(tmp_path / "nowhere")
    assert isinstance(err.value, UsageError)
