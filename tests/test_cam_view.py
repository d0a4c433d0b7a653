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

from wsss_bench import slice_cache
from wsss_bench.registry import load_registry
from wsss_bench.slices import SliceSet
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
    negated): every CAM call gets the CAM view, training and filters get the images."""
    from wsss_bench import runner as runner_module
    from wsss_bench.runner import RunConfig, Runner

    seen: dict[str, list[np.ndarray]] = {"cams": [], "train": [], "filter": []}
    real_load = Runner.load_data

    def load_data(self):
        data = real_load(self)
        images = np.asarray(data.images)
        return SliceSet(images, data.masks, data.case_ids, data.slice_index, data.origin,
                        cam_images=-images)

    real_cams, real_train = runner_module.compute_cams, runner_module.train_classifier
    real_regions = runner_module._regions

    def compute_cams(cam, model, layer, images, *args, **kwargs):
        seen["cams"].append(np.asarray(images))
        return real_cams(cam, model, layer, images, *args, **kwargs)

    def train_classifier(model, images, *args, **kwargs):
        seen["train"].append(np.asarray(images))
        return real_train(model, images, *args, **kwargs)

    def regions(filt, data, train):
        seen["filter"].append(np.asarray(data.images))
        return real_regions(filt, data, train)

    monkeypatch.setattr(Runner, "load_data", load_data)
    monkeypatch.setattr(runner_module, "compute_cams", compute_cams)
    monkeypatch.setattr(runner_module, "train_classifier", train_classifier)
    monkeypatch.setattr(runner_module, "_regions", regions)
    config = RunConfig(backbones=("resnet18",), ensembles=(), epochs=1, folds=2,
                       filters=("center-box",), workdir=str(tmp_path / "w"), device="cpu",
                       options={"phantom": {"n_cases": "4", "n_slices": "4", "size": "32"}})
    Runner(config, load_registry()).run()
    assert len(seen["cams"]) == 2 and len(seen["train"]) == 2 and len(seen["filter"]) == 2
    for images in seen["cams"]:
        assert images.max() <= 0 < -images.min()  # the negated view
    for images in seen["train"] + seen["filter"]:
        assert images.min() >= 0 and images.max() > 0  # the training view
