"""The CAM view: a CAM-time input distinct from the training input (the authors' BraTS pipeline
trains on [FLAIR, T1ce, T2] and takes the Grad-CAM of FLAIR binarised at 0.8 to 0/255).

Checked on the committed real fixture (every clone) and on the six real BraTS cases (where the
sample is present): exact values and channels against a float64 reference read straight from
the NIfTI files, training view and filters untouched by the binarisation, the slice cache
storing both views, and the runner handing the CAM view to the CAM methods only.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from wsss_bench.core import slice_cache
from wsss_bench.core.slices import SliceSet
from wsss_bench.registry import load_registry
from wsss_bench_plugins.brats import Brats
from wsss_bench_plugins.msd import MsdBrain

FIXTURE_CROP = "8:88,8:104,0:12"  # the committed fixture is 96×112×12
SAMPLE_CROP = "56:184,56:184,13:141"  # the authors' crop, on the real 240×240×155 sample


def reference_cam_view(flair: Path, box: tuple[slice, slice, slice], threshold: float,
                       value: float, channels: int) -> np.ndarray:
    """float32[S,channels,H,W]: per-slice min–max of FLAIR in float64 on the full slice, the
    crop, ``>= threshold`` → value, else 0 — written independently of the plugin's code."""
    volume = np.asarray(nib.load(str(flair)).dataobj, dtype=np.float64)
    out = np.zeros(volume.shape, dtype=np.float32)
    for z in range(volume.shape[2]):
        s = volume[:, :, z]
        lo, hi = s.min(), s.max()
        norm = (s - lo) / (hi - lo) if hi > lo else np.zeros_like(s)
        out[:, :, z] = np.where(norm >= threshold, value, 0.0)
    out = out[box]
    return np.repeat(out.transpose(2, 0, 1)[:, None], channels, axis=1)


def _box(text: str) -> tuple[slice, slice, slice]:
    return tuple(slice(*map(int, p.split(":"))) for p in text.split(","))  # type: ignore


def _cases(root: Path, crop: str, n: int | None = None):
    plain = Brats(modalities="flair,t1ce", crop=crop)
    viewed = Brats(modalities="flair,t1ce", crop=crop, cam_binarize=0.8, cam_value=255.0)
    sources = viewed.sources(root)[:n]
    return [(s, plain.load(s), viewed.load(s)) for s in sources]


@pytest.mark.parametrize("where", ["fixture", "sample"])
def test_cam_view_is_binarised_flair_repeated_over_the_training_channels(where, request):
    root = (request.getfixturevalue("brats_fixture") if where == "fixture"
            else request.getfixturevalue("brats_sample"))
    crop = FIXTURE_CROP if where == "fixture" else SAMPLE_CROP
    for source, plain, viewed in _cases(root, crop, n=2):
        assert plain.cam_images is None  # no CAM view unless asked for
        # the training view is untouched: [FLAIR, T1ce], min–max, not binarised
        np.testing.assert_array_equal(viewed.images, plain.images)
        assert viewed.images.shape[1] == 2 and len(np.unique(viewed.images)) > 100
        want = reference_cam_view(source.files["flair"], _box(crop), 0.8, 255.0, 2)
        assert viewed.cam_images.shape == viewed.images.shape
        assert viewed.cam_images.dtype == np.float32
        np.testing.assert_array_equal(viewed.cam_images, want)
        assert set(np.unique(viewed.cam_images)) == {0.0, 255.0}
        # the binarised channel is FLAIR (channel 0 of the training view), not T1ce
        # (the float32 training view rounds differently only within 1e-5 of the threshold)
        clear = np.abs(plain.images[:, 0] - 0.8) > 1e-5
        np.testing.assert_array_equal((viewed.cam_images[:, 0] == 255.0)[clear],
                                      (plain.images[:, 0] >= 0.8)[clear])
        assert not np.array_equal(viewed.cam_images[:, 0] == 255.0, plain.images[:, 1] >= 0.8)


def test_threshold_is_inclusive_and_value_and_modality_are_options(brats_fixture):
    case = Brats(modalities="flair,t1ce", crop=FIXTURE_CROP).sources(brats_fixture)[0]
    flair = np.asarray(nib.load(str(case.files["flair"])).dataobj, dtype=np.float64)
    # a slice maximum normalises to exactly 1.0: `>= 1.0` keeps it, `> 1.0` would not
    top = Brats(crop=FIXTURE_CROP, cam_binarize=1.0, cam_value=1.0).load(case)
    per_slice_max = (flair == flair.max(axis=(0, 1), keepdims=True))[_box(FIXTURE_CROP)]
    np.testing.assert_array_equal(top.cam_images[:, 0] == 1.0,
                                  per_slice_max.transpose(2, 0, 1))
    assert top.cam_images.max() == 1.0  # cam_value=1: the training input's range
    # the CAM modality is read even when the training input does not use it
    t1ce_only = Brats(modalities="t1ce", crop=FIXTURE_CROP, cam_binarize=0.8).load(case)
    assert t1ce_only.images.shape[1] == 1
    want = reference_cam_view(case.files["flair"], _box(FIXTURE_CROP), 0.8, 255.0, 1)
    np.testing.assert_array_equal(t1ce_only.cam_images, want)
    by_t1ce = Brats(modalities="flair", crop=FIXTURE_CROP, cam_binarize=0.8,
                    cam_modality="t1ce").load(case)
    np.testing.assert_array_equal(
        by_t1ce.cam_images, reference_cam_view(case.files["t1ce"], _box(FIXTURE_CROP), 0.8,
                                               255.0, 1))


@pytest.mark.parametrize("bad", [{"cam_binarize": 1.5}, {"cam_binarize": -0.1},
                                 {"cam_value": 0.0}, {"cam_value": float("nan")},
                                 {"cam_modality": "pd"}, {"cam_modality": "flair,t1ce"}])
def test_bad_cam_view_options_are_errors(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        Brats(**bad)
    with pytest.raises(ValueError, match=next(iter(bad))):
        MsdBrain(**bad)


@pytest.mark.parametrize("where", ["fixture", "sample"])
def test_filters_see_the_training_view_identically_with_and_without_binarisation(where,
                                                                                  request):
    root = (request.getfixturevalue("brats_fixture") if where == "fixture"
            else request.getfixturevalue("brats_sample"))
    crop = FIXTURE_CROP if where == "fixture" else SAMPLE_CROP
    filters = load_registry().filters
    for _, plain, viewed in _cases(root, crop, n=2):
        for name in ("brain", "brain-band", "center-box", "none"):
            np.testing.assert_array_equal(filters[name].region(viewed.images),
                                          filters[name].region(plain.images))
        # what the test guards against: a brain filter computed from the binarised input
        # would keep (roughly) the tumour only
        assert not np.array_equal(filters["brain"].region(viewed.cam_images),
                                  filters["brain"].region(plain.images))


def test_slice_cache_stores_both_views(brats_fixture, tmp_path):
    viewed = Brats(modalities="flair,t1ce", crop=FIXTURE_CROP, cam_binarize=0.8)
    plain = Brats(modalities="flair,t1ce", crop=FIXTURE_CROP)
    with_view = slice_cache.prepare(viewed, brats_fixture, tmp_path, workers=1)
    without = slice_cache.prepare(plain, brats_fixture, tmp_path, workers=1)
    assert with_view.origin != without.origin  # the CAM view is part of the cache key
    assert without.cam_images is None
    np.testing.assert_array_equal(with_view.images, without.images)
    case = viewed.load(viewed.sources(brats_fixture)[0])
    np.testing.assert_array_equal(np.asarray(with_view.cam_images, dtype=np.float32),
                                  case.cam_images)  # 0 and 255 are exact in float16
    np.testing.assert_array_equal(with_view.cam_input, with_view.cam_images)
    np.testing.assert_array_equal(without.cam_input, without.images)
    sub = with_view.subset(np.array([3, 5]))
    np.testing.assert_array_equal(sub.cam_images, with_view.cam_images[[3, 5]])


def test_the_runner_gives_cams_the_cam_view_and_filters_and_training_the_training_view(
        monkeypatch, tmp_path):
    """A phantom run whose slices carry a recognisable CAM view (the training images
    negated): every CAM call gets the CAM view; training, the prediction (the gate) and the
    filter itself get the training images."""
    from wsss_bench.pipeline import cams as cams_module
    from wsss_bench.pipeline import prepare as prepare_module
    from wsss_bench.pipeline import run as run_module
    from wsss_bench.pipeline import train as train_module
    from wsss_bench.pipeline.run import run
    from wsss_bench.pipeline.settings import RunConfig

    seen: dict[str, list[np.ndarray]] = {"cams": [], "train": [], "filter": [], "predict": []}
    real_prepare = prepare_module.prepare

    def prepare(plan, dataset, reporter):
        data = real_prepare(plan, dataset, reporter)
        images = np.asarray(data.images)
        return SliceSet(images, data.masks, data.case_ids, data.slice_index, data.origin,
                        cam_images=-images)

    real_cams, real_train = cams_module.compute_cams, train_module.train_classifier
    real_predict = train_module.predict
    center_box = type(load_registry().filters["center-box"])
    real_region = center_box.region

    def compute_cams(cam, model, layer, images, *args, **kwargs):
        seen["cams"].append(np.asarray(images))
        return real_cams(cam, model, layer, images, *args, **kwargs)

    def train_classifier(model, images, *args, **kwargs):
        seen["train"].append(np.asarray(images))
        return real_train(model, images, *args, **kwargs)

    def region(self, images):
        seen["filter"].append(np.asarray(images))
        return real_region(self, images)

    def predict(model, images, *args, **kwargs):
        seen["predict"].append(np.asarray(images))
        return real_predict(model, images, *args, **kwargs)

    # where the pipeline looks them up (the local executor runs every unit in this process)
    monkeypatch.setattr(prepare_module, "prepare", prepare)
    monkeypatch.setattr(run_module, "prepare", prepare)  # run.py imports the name
    monkeypatch.setattr(cams_module, "compute_cams", compute_cams)
    monkeypatch.setattr(train_module, "train_classifier", train_classifier)
    monkeypatch.setattr(center_box, "region", region)
    monkeypatch.setattr(train_module, "predict", predict)
    config = RunConfig(backbones=("resnet18",), ensembles=(), epochs=1, folds=2,
                       filters=("center-box",), workdir=str(tmp_path / "w"), device="cpu",
                       options={"phantom": {"n_cases": "4", "n_slices": "4", "size": "32"}})
    run(config, load_registry())
    assert len(seen["cams"]) == 2 and len(seen["train"]) == 2 and len(seen["predict"]) == 2
    assert seen["filter"]  # the filter's own region() calls, one per chunk and fold
    for images in seen["cams"]:
        assert images.max() <= 0 < -images.min()  # the negated view
    for images in seen["train"] + seen["filter"] + seen["predict"]:
        assert images.min() >= 0 and images.max() > 0  # the training view


def test_predicted_class_is_decided_on_the_cam_view():
    """`--cam-target predicted` explains the class predicted for the CAM input (the authors'
    GradCam(index=None) runs on the binarised image): a model that predicts class 1 only for
    negative inputs gets the class-1 map from the negated view and the class-0 map from the
    images."""
    import torch
    from torch import nn

    from wsss_bench.pipeline.cams import compute_cams

    torch.manual_seed(0)
    conv = nn.Conv2d(1, 2, 3, padding=1)

    class SignNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv
            self.act = nn.ReLU()

        def forward(self, x):
            a = self.act(self.conv(x))
            sign = (x.mean(dim=(1, 2, 3)) < 0).float()  # 1 for negative inputs
            return torch.stack([a.mean(dim=(1, 2, 3)) * (1 - sign),
                                a.mean(dim=(1, 2, 3)) * sign], dim=1) + torch.stack(
                                    [1 - sign, sign], dim=1)

    model = SignNet().eval()
    cam = load_registry().cams["gradcam"]
    images = np.random.default_rng(0).uniform(0.1, 1, size=(3, 1, 8, 8)).astype(np.float32)
    cpu = torch.device("cpu")
    on_view = compute_cams(cam, model, model.act, -images, 4, cpu, lambda n: None, "predicted")
    want_1 = cam.cam(model, model.act, torch.from_numpy(-images), torch.ones(3, dtype=torch.long))
    np.testing.assert_allclose(on_view, want_1.numpy(), atol=1e-6)
    on_images = compute_cams(cam, model, model.act, images, 4, cpu, lambda n: None, "predicted")
    want_0 = cam.cam(model, model.act, torch.from_numpy(images), torch.zeros(3, dtype=torch.long))
    np.testing.assert_allclose(on_images, want_0.numpy(), atol=1e-6)


def test_msd_brain_cam_view_takes_the_flair_channel(tmp_path):
    """msd-brain: FLAIR is channel 0 of the 4-D image; the CAM view binarises it even when the
    training input does not use it."""
    from tests.mri_files import write_nifti

    rng = np.random.default_rng(1)
    image = rng.normal(size=(12, 10, 3, 4)).astype(np.float32)
    image[..., 0] *= 5  # FLAIR differs from the other channels
    label = np.zeros((12, 10, 3), dtype=np.uint8)
    label[3:6, 3:6, 1] = 2
    task = tmp_path / "Task01_BrainTumour"
    write_nifti(task / "imagesTr" / "BRATS_001.nii.gz", image)
    write_nifti(task / "labelsTr" / "BRATS_001.nii.gz", label)
    ds = MsdBrain(modalities="t1ce", crop="none", cam_binarize=0.8, cam_value=255.0)
    case = ds.load(ds.sources(tmp_path)[0])
    assert case.images.shape == (3, 1, 12, 10)
    flair = image[..., 0].astype(np.float64)
    lo = flair.min(axis=(0, 1), keepdims=True)
    norm = (flair - lo) / (flair.max(axis=(0, 1), keepdims=True) - lo)
    want = np.where(norm >= 0.8, 255.0, 0.0).astype(np.float32).transpose(2, 0, 1)[:, None]
    np.testing.assert_array_equal(case.cam_images, want)
    t1ce = image[..., 2]
    t1ce_norm = (t1ce - t1ce.min(axis=(0, 1))) / np.ptp(t1ce, axis=(0, 1))
    np.testing.assert_allclose(case.images[:, 0], t1ce_norm.transpose(2, 0, 1), atol=1e-6)


def test_resized_binary_view_stays_binary(brats_fixture):
    from wsss_bench.core.slices import resize_case

    ds = Brats(modalities="flair,t1ce", crop=FIXTURE_CROP, cam_binarize=0.8)
    case = resize_case(ds.load(ds.sources(brats_fixture)[0]), 40)
    assert case.cam_images.shape == (12, 2, 40, 40)
    assert set(np.unique(case.cam_images)) == {0.0, 255.0}
    assert len(np.unique(case.images)) > 100  # the training view is interpolated as before
