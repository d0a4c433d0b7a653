"""The real-data readers on the small real fixture committed in ``tests/data`` (every clone).

``tests/data/brats``: case BraTS15_pat0001 of the BRATS 2015 sample, cut to x 48:144,
y 72:184, z 24:36 (96×112×12; slices 0–4 without tumour, 5–11 with), original values and
float32 labels. ``tests/data/msd-prostate``: the real MSD Task05 label ``prostate_37``
(256×256×15). See tests/data/README.md. The larger sample (six cases, 32 labels) is tested in
test_brats.py / test_decathlon.py when ``WSSS_BENCH_TEST_DATA`` points to it.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.mri_files import build_decathlon
from tests.test_brats import minmax_reference
from wsss_bench.volumes import DataError
from wsss_bench_plugins.brats import Brats
from wsss_bench_plugins.msd import Decathlon

pytestmark = pytest.mark.usefixtures("one_thread")

CASE = "BraTS15_pat0001"
SHAPE = (96, 112, 12)  # x, y, z of the fixture volumes
# whole-tumour pixels per axial slice of the fixture (z 24..35 of the original case)
TUMOUR_PIXELS = [0, 0, 0, 0, 0, 3, 5, 18, 143, 244, 300, 413]


def raw(root: Path, kind: str) -> np.ndarray:
    return np.asarray(nib.load(str(root / CASE / f"{CASE}_{kind}.nii.gz")).dataobj)


@pytest.fixture(scope="module")
def volumes(brats_fixture):
    return {kind: raw(brats_fixture, kind) for kind in ("flair", "t1ce", "seg")}


@pytest.fixture(scope="module")
def two_channels(brats_fixture):
    ds = Brats(modalities="flair,t1ce", crop="none")
    (source,) = ds.sources(brats_fixture)
    assert source.case_id == CASE
    return ds.load(source)


def test_fixture_files_are_the_documented_cut(brats_fixture, volumes):
    for kind, v in volumes.items():
        assert v.shape == SHAPE and v.dtype == np.float32, kind
    seg = volumes["seg"]
    assert set(np.unique(seg)) == {0, 1, 2, 3, 4}  # BRATS 2015: float labels, all five
    assert (seg > 0).sum(axis=(0, 1)).tolist() == TUMOUR_PIXELS
    # the original affine (1 mm, x and y flipped), translated to voxel (48, 72, 24)
    affine = nib.load(str(brats_fixture / CASE / f"{CASE}_flair.nii.gz")).affine
    np.testing.assert_array_equal(affine[:3, :3], np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_array_equal(affine[:3, 3], [-48.0, 167.0, 24.0])
    for kind in ("flair", "t1ce"):  # every slice holds background: the volume's minimum
        v = volumes[kind]
        assert ((v == v.min()).mean(axis=(0, 1)) > 0.3).all(), kind
    assert (brats_fixture / "LICENSE.txt").is_file()


def test_shapes_dtypes_and_channel_order(brats_fixture, two_channels, volumes):
    case = two_channels
    assert case.images.shape == (12, 2, 96, 112) and case.images.dtype == np.float32
    assert case.masks.shape == (12, 96, 112) and case.masks.dtype == bool
    flair_only = Brats(crop="none").load(Brats(crop="none").sources(brats_fixture)[0])
    assert flair_only.images.shape == (12, 1, 96, 112)
    np.testing.assert_array_equal(flair_only.images[:, 0], case.images[:, 0])
    swapped = Brats(modalities="t1ce,flair", crop="none")
    reversed_case = swapped.load(swapped.sources(brats_fixture)[0])
    np.testing.assert_array_equal(reversed_case.images, case.images[:, ::-1])


def test_slices_are_per_slice_minmax_of_each_modality(two_channels, volumes):
    case = two_channels
    flair, t1ce = (minmax_reference(volumes[k]) for k in ("flair", "t1ce"))
    np.testing.assert_allclose(case.images[:, 0], flair, atol=2e-7)
    np.testing.assert_allclose(case.images[:, 1], t1ce, atol=2e-7)
    # the reference tells the wrong readers apart: other channel, other normalisation axis
    assert np.abs(flair - t1ce).max() > 0.5
    v = volumes["flair"].astype(np.float64)
    per_volume = ((v - v.min()) / (v.max() - v.min())).transpose(2, 0, 1)
    assert np.abs(flair - per_volume).max() > 0.05
    per_x = (v - v.min(axis=(1, 2), keepdims=True)) / np.maximum(
        v.max(axis=(1, 2), keepdims=True) - v.min(axis=(1, 2), keepdims=True), 1e-12)
    assert np.abs(flair - per_x.transpose(2, 0, 1)).max() > 0.05


def test_background_is_exactly_zero_and_each_slice_spans_0_to_1(two_channels, volumes):
    case = two_channels
    for channel, kind in enumerate(("flair", "t1ce")):
        v = volumes[kind].transpose(2, 0, 1)  # [Z,X,Y]
        background = v == v.min(axis=(1, 2), keepdims=True)
        assert background.sum(axis=(1, 2)).min() > 1000
        assert (case.images[:, channel][background] == 0.0).all()
        assert (case.images[:, channel][~background] > 0.0).all()
        assert (case.images[:, channel].max(axis=(1, 2)) == 1.0).all()


def test_masks_are_whole_tumour_slice_by_slice(two_channels, volumes):
    seg = volumes["seg"]
    for z in range(SHAPE[2]):
        np.testing.assert_array_equal(two_channels.masks[z], seg[:, :, z] > 0)
    assert two_channels.masks.sum(axis=(1, 2)).tolist() == TUMOUR_PIXELS


def test_crop_inside_the_fixture_normalises_the_full_slice_first(brats_fixture, two_channels,
                                                                 volumes):
    ds = Brats(modalities="flair,t1ce", crop="32:80,24:80,3:11")
    case = ds.load(ds.sources(brats_fixture)[0])
    assert case.images.shape == (8, 2, 48, 56)
    np.testing.assert_array_equal(case.images, two_channels.images[3:11, :, 32:80, 24:80])
    np.testing.assert_array_equal(case.masks, volumes["seg"][32:80, 24:80, 3:11].transpose(
        2, 0, 1) > 0)
    assert case.masks.any() and not case.masks.all()
    # normalising after the crop would differ: the box leaves out part of each slice's range
    cropped_first = minmax_reference(volumes["flair"][32:80, 24:80, 3:11])
    assert np.abs(cropped_first - case.images[:, 0]).max() > 0.05


def test_default_crop_does_not_fit_the_fixture(brats_fixture):
    with pytest.raises(DataError, match="smaller than the crop"):
        Brats().load(Brats().sources(brats_fixture)[0])


@pytest.fixture(scope="module")
def prostate_task(tmp_path_factory, prostate_label_fixture):
    return build_decathlon(tmp_path_factory.mktemp("msd"), [prostate_label_fixture])


def test_real_prostate_label_file(prostate_label_fixture):
    img = nib.load(str(prostate_label_fixture))
    label = np.asarray(img.dataobj)
    assert prostate_label_fixture.name == "prostate_37.nii.gz"
    assert label.shape == (256, 256, 15) and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1, 2}  # background, PZ, TZ


def test_decathlon_masks_are_the_nearest_resized_real_label(prostate_task,
                                                            prostate_label_fixture):
    ds = Decathlon()
    (source,) = ds.sources(prostate_task.parent)
    assert source.case_id == "prostate_37"
    case = ds.load(source)
    label = np.asarray(nib.load(str(prostate_label_fixture)).dataobj)
    assert case.images.shape == (15, 1, 320, 320) and case.masks.shape == (15, 320, 320)
    assert case.images.min() >= 0.0 and case.images.max() <= 1.0 + 1e-6

    def nearest(binary: np.ndarray) -> np.ndarray:
        gt = torch.from_numpy(binary.transpose(2, 0, 1).astype(np.float32))[:, None]
        return (F.interpolate(gt, size=(320, 320), mode="nearest")[:, 0] > 0.5).numpy()

    expected = nearest(label > 0)
    np.testing.assert_array_equal(case.masks, expected)
    assert case.masks.sum(axis=(1, 2)).min() > 0  # prostate in every slice of this case
    # a reader that took one zone only, or swapped x and y, would not match
    for wrong in (label == 1, label == 2, (label > 0).transpose(1, 0, 2)):
        assert (nearest(wrong) != expected).sum() > 100
    # at its own size the mask is the label itself
    same = Decathlon(size=256).load(source)
    np.testing.assert_array_equal(same.masks, label.transpose(2, 0, 1) > 0)
