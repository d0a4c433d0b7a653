"""``decathlon`` and ``msd-brain`` on MSD-layout volumes built from the 32 real Task05 labels."""

from __future__ import annotations

import dataclasses

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.mri_files import build_decathlon, write_nifti
from wsss_bench.volumes import DataError, MissingData
from wsss_bench_plugins.msd import Decathlon, MsdBrain

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def label_files(prostate_labels):
    files = sorted(prostate_labels.glob("prostate_*.nii.gz"))
    if len(files) != 32:
        pytest.fail(f"real data incomplete: expected 32 label files in {prostate_labels}")
    return files


@pytest.fixture(scope="module")
def task(tmp_path_factory, label_files):
    return build_decathlon(tmp_path_factory.mktemp("msd"), label_files)


@pytest.fixture(scope="module")
def loaded(task):
    ds = Decathlon()
    return {s.case_id: (s, ds.load(s)) for s in ds.sources(task.parent)}


def labels_of(source) -> np.ndarray:
    return np.asarray(nib.load(str(source.files["label"])).dataobj)


def test_real_geometries_are_all_there(label_files):
    shapes = {nib.load(str(f)).shape for f in label_files}
    assert {s[:2] for s in shapes} == {(256, 256), (320, 320), (384, 384)}
    assert {s[2] for s in shapes} <= set(range(11, 25))


def test_32_cases_found_without_dataset_json_or_hidden_files(task, loaded):
    assert len(loaded) == 32
    assert all(not c.startswith(".") for c in loaded)
    assert sorted(loaded) == sorted(p.name[: -len(".nii.gz")]
                                    for p in (task / "labelsTr").iterdir())
    # --data-dir may be the task folder itself
    assert len(Decathlon().sources(task)) == 32


def test_slices_are_320x320_adc_in_unit_range(loaded):
    for source, case in loaded.values():
        depth = labels_of(source).shape[2]
        assert case.images.shape == (depth, 1, 320, 320)
        assert case.masks.shape == (depth, 320, 320)
        assert case.images.min() >= 0.0 and case.images.max() <= 1.0 + 1e-6


def test_labels_0_1_2_become_prostate_nearest_resized(loaded):
    sizes = set()
    for source, case in loaded.values():
        label = labels_of(source)
        assert set(np.unique(label)) <= {0, 1, 2}
        gt = torch.from_numpy((label > 0).transpose(2, 0, 1).astype(np.float32))[:, None]
        expected = F.interpolate(gt, size=(320, 320), mode="nearest")[:, 0] > 0.5
        np.testing.assert_array_equal(case.masks, expected.numpy())
        sizes.add(label.shape[0])
        if label.shape[0] == 320:  # no resize: the mask is the label itself
            np.testing.assert_array_equal(case.masks, label.transpose(2, 0, 1) > 0)
    assert sizes == {256, 320, 384}


def test_adc_channel_is_minmax_per_slice(loaded):
    for source, case in loaded.values():
        image = np.asarray(nib.load(str(source.files["image"])).dataobj)
        if image.shape[0] != 320:
            continue
        adc = image[..., 1].astype(np.float64).transpose(2, 0, 1)
        low = adc.min(axis=(1, 2), keepdims=True)
        expected = (adc - low) / (adc.max(axis=(1, 2), keepdims=True) - low)
        np.testing.assert_allclose(case.images[:, 0], expected, atol=1e-6)


def test_resizing_shrinks_by_area_and_grows_bilinearly(loaded):
    for source, case in loaded.values():
        image = np.asarray(nib.load(str(source.files["image"])).dataobj)[..., 1]
        if image.shape[0] == 320:
            continue
        x = image.astype(np.float32).transpose(2, 0, 1)
        low = x.min(axis=(1, 2), keepdims=True)
        x = torch.from_numpy((x - low) / (x.max(axis=(1, 2), keepdims=True) - low))[:, None]
        mode = "area" if image.shape[0] > 320 else "bilinear"
        kwargs = {} if mode == "area" else {"align_corners": False}
        expected = F.interpolate(x, size=(320, 320), mode=mode, **kwargs)[:, 0].numpy()
        np.testing.assert_allclose(case.images[:, 0], expected, atol=1e-5)


def test_modality_option_picks_channels(task, loaded):
    source = next(iter(loaded.values()))[0]
    t2 = Decathlon(modality="t2").load(source)
    both = Decathlon(modality="both").load(source)
    assert both.images.shape[1] == 2
    np.testing.assert_array_equal(both.images[:, 0], t2.images[:, 0])
    np.testing.assert_array_equal(both.images[:, 1], loaded[source.case_id][1].images[:, 0])
    smaller = Decathlon(size=64).load(source)
    assert smaller.images.shape[-2:] == (64, 64)


@pytest.mark.parametrize("bad", [{"modality": "dwi"}, {"size": 8}])
def test_bad_options(bad):
    with pytest.raises(ValueError):
        dataclasses.replace(Decathlon(), **bad)


def test_missing_task_folder_is_missing_data(tmp_path):
    with pytest.raises(MissingData):
        Decathlon().sources(tmp_path)


def test_msd_brain_channels_and_crop(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(size=(40, 40, 12, 4)).astype(np.float32)
    label = np.zeros((40, 40, 12), dtype=np.uint8)
    label[10:20, 15:25, 4:8] = 3
    root = tmp_path / "Task01_BrainTumour"
    write_nifti(root / "imagesTr" / "BRATS_001.nii.gz", image)
    write_nifti(root / "labelsTr" / "BRATS_001.nii.gz", label)
    (source,) = MsdBrain().sources(tmp_path)
    case = MsdBrain(modalities="flair,t2", crop="4:36,8:40,2:10").load(source)
    assert case.images.shape == (8, 2, 32, 32)
    for channel, index in ((0, 0), (1, 3)):  # FLAIR is channel 0, T2 channel 3
        v = image[..., index]
        low = v.min(axis=(0, 1))
        expected = ((v - low) / (v.max(axis=(0, 1)) - low))[4:36, 8:40, 2:10]
        np.testing.assert_allclose(case.images[:, channel], expected.transpose(2, 0, 1),
                                   atol=1e-6)
    np.testing.assert_array_equal(case.masks, label[4:36, 8:40, 2:10].transpose(2, 0, 1) > 0)
    with pytest.raises(DataError, match="smaller than the crop"):  # the default 240x240 crop
        MsdBrain().load(source)
    write_nifti(root / "labelsTr" / "BRATS_001.nii.gz", label + 1)  # 4 is not a Task01 label
    with pytest.raises(DataError, match="outside the expected"):
        MsdBrain(crop="none").load(source)
