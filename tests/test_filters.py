"""Filters: exact regions of the built-ins, real BraTS slices, no leak from validation folds,
and the contract over every registered filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

import wsss_bench
from wsss_bench import options
from wsss_bench.contracts import Filter
from wsss_bench.core.slices import SliceSet
from wsss_bench.errors import UsageError
from wsss_bench.pipeline.context import regions
from wsss_bench_plugins.filters import (
    Brain,
    BrainBand,
    CenterBox,
    LearnedBox,
    NoFilter,
    centred_span,
)

pytestmark = pytest.mark.usefixtures("one_thread")

REGISTRY = wsss_bench.load_registry()
FILTERS = sorted(REGISTRY.filters)
LEARNED = [n for n in FILTERS if REGISTRY.filters[n].learned]


def ones(b: int, h: int, w: int, c: int = 1) -> np.ndarray:
    return np.ones((b, c, h, w), dtype=np.float32)


def kept_span(axis_any: np.ndarray) -> tuple[int, int]:
    """First and last True index of a 1-D bool array."""
    idx = np.flatnonzero(axis_any)
    return int(idx[0]), int(idx[-1])


def box_plane(h: int, w: int, rows: tuple[int, int], cols: tuple[int, int]) -> np.ndarray:
    """bool[h,w], True on rows r0..r1 × cols c0..c1 (inclusive)."""
    plane = np.zeros((h, w), dtype=bool)
    plane[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return plane


# ---------------------------------------------------------------- none


def test_none_filter_keeps_every_pixel():
    images = np.random.default_rng(0).random((3, 2, 6, 9)).astype(np.float32)
    region = NoFilter().region(images)
    assert region.dtype == bool and region.shape == (3, 6, 9)
    assert region.all()
    assert NoFilter().name == "none"


# ---------------------------------------------------------------- center-box


@pytest.mark.parametrize(("h", "w", "side", "rows", "cols"), [
    (64, 64, 0.5, (16, 47), (16, 47)),      # the brief's example: 32 of 64
    (65, 65, 0.5, (16, 48), (16, 48)),      # odd: 33 pixels (>= 32.5, odd), centre 32
    (64, 64, 0.25, (24, 39), (24, 39)),
    (65, 65, 0.2, (26, 38), (26, 38)),      # 13 pixels
    (64, 96, 0.5, (16, 47), (24, 71)),      # non-square: a fraction of each dimension
    (63, 64, 0.5, (15, 47), (16, 47)),      # odd rows, even columns
    (320, 320, 0.5, (80, 239), (80, 239)),  # the paper's Decathlon size
    (20, 20, 0.9, (1, 18), (1, 18)),        # 20·(1-0.9)/2 is 0.99999… in floats: still 1
    (64, 64, 0.01, (31, 32), (31, 32)),     # tiny side: the two centre pixels
    (65, 65, 0.01, (32, 32), (32, 32)),     # tiny side, odd: the centre pixel
    (64, 64, 1.0, (0, 63), (0, 63)),
    (7, 5, 1.0, (0, 6), (0, 4)),
])
def test_center_box_exact_pixels(h, w, side, rows, cols):
    images = np.random.default_rng(1).random((3, 2, h, w)).astype(np.float32)
    region = CenterBox(side=side).region(images)
    assert region.dtype == bool and region.shape == (3, h, w)
    expected = box_plane(h, w, rows, cols)
    for plane in region:  # the same box on every slice, whatever the intensities
        np.testing.assert_array_equal(plane, expected)
    assert region[0].sum() == (rows[1] - rows[0] + 1) * (cols[1] - cols[0] + 1)


def test_center_box_side_one_keeps_everything():
    assert CenterBox(side=1.0).region(ones(2, 33, 48)).all()


@pytest.mark.parametrize("n", [1, 2, 3, 16, 17, 64, 65, 127, 240])
@pytest.mark.parametrize("fraction", [1e-6, 0.1, 0.25, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0])
def test_centred_span_is_symmetric_and_shortest(n, fraction):
    start, stop = centred_span(n, fraction)
    length = stop - start
    assert start == n - stop >= 0  # exactly centred
    assert length >= 1 and length % 2 == n % 2
    assert length >= fraction * n - 1e-6  # covers the fraction …
    assert length - 2 < fraction * n or length <= 2  # … and is the shortest that does


def test_centred_span_zero_is_empty():
    for n in (1, 2, 64, 65):
        start, stop = centred_span(n, 0.0)
        assert start == stop


@pytest.mark.parametrize("side", [0, 0.0, -0.1, 1.0001, 2, math.nan, math.inf, True, "0.5", None])
def test_center_box_rejects_bad_side(side):
    with pytest.raises(ValueError, match="side"):
        CenterBox(side=side)


def test_center_box_option_from_the_command_line():
    box = REGISTRY.filters["center-box"]
    assert box.side == 0.5
    configured = options.configure(box, {"side": "0.25"})
    assert configured.side == 0.25 and box.side == 0.5
    with pytest.raises(UsageError, match="side"):
        options.configure(box, {"side": "0"})
    with pytest.raises(UsageError, match="side"):
        options.configure(box, {"side": "1.5"})


# ---------------------------------------------------------------- brain (synthetic)


def test_brain_is_any_channel_above_background():
    images = np.zeros((2, 2, 5, 6), dtype=np.float32)
    images[0, 0, 1, 2] = 0.3   # channel 0 only
    images[0, 1, 3, 4] = 1.0   # channel 1 only
    images[1, :, 2, 2] = 0.7   # both channels
    images[1, 0, 4, 5] = 1e-7  # barely above 0 is brain
    region = Brain().region(images)
    expected = np.zeros((2, 5, 6), dtype=bool)
    expected[0, 1, 2] = expected[0, 3, 4] = expected[1, 2, 2] = expected[1, 4, 5] = True
    np.testing.assert_array_equal(region, expected)
    # a higher background threshold drops the faint pixels (strictly greater)
    expected_half = np.zeros_like(expected)
    expected_half[0, 3, 4] = expected_half[1, 2, 2] = True
    np.testing.assert_array_equal(Brain(background=0.5).region(images), expected_half)
    images[1, 1, 0, 0] = 0.5  # equal to the background is background
    np.testing.assert_array_equal(Brain(background=0.5).region(images), expected_half)


@pytest.mark.parametrize("background", [math.nan, math.inf, "0", None, True])
def test_brain_rejects_bad_background(background):
    with pytest.raises(ValueError, match="background"):
        Brain(background=background)
    with pytest.raises(ValueError, match="background"):
        BrainBand(background=background)


# ---------------------------------------------------------------- brain on real BraTS slices

SLICES = [40, 60, 77, 90, 120]  # axial (last axis) slices of BraTS15_pat0001, 60-90 with tumour


def minmax_per_slice(volume: np.ndarray) -> np.ndarray:
    """float32[S,1,H,W]: each axial slice of an H×W×S volume min–max normalised to [0,1]."""
    slices = np.moveaxis(volume, -1, 0).astype(np.float32)
    low = slices.min(axis=(1, 2), keepdims=True)
    span = slices.max(axis=(1, 2), keepdims=True) - low
    out = np.divide(slices - low, span, out=np.zeros_like(slices), where=span > 0)
    return out[:, None]


@pytest.fixture(scope="module")
def pat0001(brats_sample):
    nib = pytest.importorskip("nibabel")
    case = brats_sample / "BraTS15_pat0001"
    flair = np.asarray(nib.load(case / "BraTS15_pat0001_flair.nii.gz").dataobj, dtype=np.float32)
    seg = np.asarray(nib.load(case / "BraTS15_pat0001_seg.nii.gz").dataobj)
    assert flair.shape == seg.shape == (240, 240, 155)
    return flair, seg


def test_brain_on_real_brats_slices(pat0001):
    flair, seg = pat0001
    volume_min = flair.min()
    images = minmax_per_slice(flair[:, :, SLICES])
    assert images[:, :, 0, 0].max() == 0.0  # the corner is air: exactly 0 after min–max
    region = Brain().region(images)
    assert region.dtype == bool and region.shape == (len(SLICES), 240, 240)
    brain = np.moveaxis(flair[:, :, SLICES] != volume_min, -1, 0)
    np.testing.assert_array_equal(region, brain)
    tumour = np.moveaxis(seg[:, :, SLICES] > 0, -1, 0)
    assert tumour.sum() > 5000  # the slices do hold tumour …
    assert not (tumour & ~region).any()  # … and every tumour voxel is inside the brain
    assert 0.1 < region.mean() < 0.5  # a brain, not the whole slice nor nothing


def test_brain_band_spares_real_tumours(pat0001):
    """The paper's premise, and the orientation: rows (axis 0 of the NIfTI array, left–right)
    cross the midline; the central band of 24 rows holds about 0.5 % of this case's tumour,
    whereas the central 24 columns hold about 40 %."""
    flair, seg = pat0001
    images = minmax_per_slice(flair)
    tumour = np.moveaxis(seg > 0, -1, 0)
    brain = Brain().region(images)
    assert not (tumour & ~brain).any()
    band = BrainBand().region(images)
    lost = (tumour & ~band).sum() / tumour.sum()
    assert 0 < lost < 0.02
    np.testing.assert_array_equal(band[:, :108], brain[:, :108])
    np.testing.assert_array_equal(band[:, 132:], brain[:, 132:])
    assert not band[:, 108:132].any()


# ---------------------------------------------------------------- brain-band


@pytest.mark.parametrize(("h", "width", "rows"), [
    (240, 0.1, (108, 131)),  # BraTS 240: 24 rows around the centre (119.5)
    (128, 0.1, (57, 70)),    # the paper's 128 crop: 12.8 → 14 rows (shortest even >= 12.8)
    (65, 0.1, (29, 35)),     # odd: 6.5 → 7 rows around row 32
    (64, 0.5, (16, 47)),
    (10, 0.05, (4, 5)),      # any width > 0 removes at least the centre row(s)
    (9, 0.05, (4, 4)),
    (12, 1.0, (0, 11)),      # width 1 removes every row
])
def test_brain_band_removes_exactly_the_documented_rows(h, width, rows):
    w = 17
    rng = np.random.default_rng(h)
    images = rng.random((3, 2, h, w)).astype(np.float32)
    images[rng.random((3, 2, h, w)) < 0.6] = 0.0  # background in both channels here and there
    flt = BrainBand(width=width)
    assert flt.band(h) == (rows[0], rows[1] + 1)
    brain = Brain().region(images)
    assert brain.any(axis=(0, 2)).all()  # every row holds brain somewhere, so removals show
    region = flt.region(images)
    removed = np.zeros(h, dtype=bool)
    removed[rows[0]:rows[1] + 1] = True
    np.testing.assert_array_equal(region, brain & ~removed[None, :, None])
    assert not region[:, removed].any()
    np.testing.assert_array_equal(region[:, ~removed], brain[:, ~removed])  # nothing else


@pytest.mark.parametrize("h", [9, 10, 64, 65])
def test_brain_band_width_zero_equals_brain(h):
    rng = np.random.default_rng(h)
    images = rng.random((2, 1, h, 11)).astype(np.float32) * (rng.random((2, 1, h, 11)) < 0.7)
    np.testing.assert_array_equal(BrainBand(width=0.0).region(images), Brain().region(images))
    np.testing.assert_array_equal(BrainBand(width=0.0, background=0.4).region(images),
                                  Brain(background=0.4).region(images))


@pytest.mark.parametrize("width", [-0.01, 1.01, math.nan, "0.1", None])
def test_brain_band_rejects_bad_width(width):
    with pytest.raises(ValueError, match="width"):
        BrainBand(width=width)


# ---------------------------------------------------------------- learned-box


def test_learned_box_is_the_grown_bounding_box_of_training_lesions():
    h, w = 40, 40  # margin 0.05 → round(2.0) = 2 pixels each way
    masks = np.zeros((3, h, w), dtype=bool)
    masks[0, 10, 12] = True
    masks[1, 20:23, 5:8] = True  # rows 20..22, cols 5..7; slice 2 has no lesion
    images = np.random.default_rng(0).random((3, 1, h, w)).astype(np.float32)
    unfitted = LearnedBox()
    fitted = unfitted.fit(images, masks)
    assert fitted is not unfitted and isinstance(fitted, LearnedBox)
    assert unfitted.box is None and not unfitted.fitted  # the registered object is untouched
    assert fitted.box == (8, 25, 3, 15) and fitted.shape == (h, w)
    test_images = np.random.default_rng(1).random((4, 1, h, w)).astype(np.float32)
    region = fitted.region(test_images)
    assert region.dtype == bool and region.shape == (4, h, w)
    expected = box_plane(h, w, (8, 24), (3, 14))  # lesion rows 10..22 ± 2, cols 5..12 ± 2
    for plane in region:
        np.testing.assert_array_equal(plane, expected)


def test_learned_box_margin_per_dimension_and_zero_margin():
    h, w = 40, 100
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 15, 30] = masks[1, 25, 60] = True
    images = np.zeros((2, 3, h, w), dtype=np.float32)
    # margin 0.05: 2 rows (0.05·40) and 5 columns (0.05·100)
    assert LearnedBox().fit(images, masks).box == (13, 28, 25, 66)
    # margin 0.07: round(2.8) = 3 rows, round(7.0) = 7 columns
    assert LearnedBox(margin=0.07).fit(images, masks).box == (12, 29, 23, 68)
    # margin 0.0625 on 40: 2.5 rounds half up to 3; on 100: 6.25 → 6
    assert LearnedBox(margin=0.0625).fit(images, masks).box == (12, 29, 24, 67)
    exact = LearnedBox(margin=0.0).fit(images, masks)
    assert exact.box == (15, 26, 30, 61)
    np.testing.assert_array_equal(exact.region(images[:1])[0], box_plane(h, w, (15, 25), (30, 60)))


def test_learned_box_is_clipped_at_the_borders():
    h, w = 32, 48
    masks = np.zeros((2, h, w), dtype=bool)
    masks[0, 1, 46] = True   # near the top and right border
    masks[1, 5, 20] = True
    images = np.zeros((2, 1, h, w), dtype=np.float32)
    fitted = LearnedBox(margin=0.1).fit(images, masks)  # 3 rows, 5 columns
    assert fitted.box == (0, 9, 15, 48)
    np.testing.assert_array_equal(fitted.region(images)[0], box_plane(h, w, (0, 8), (15, 47)))
    corners = np.zeros((1, h, w), dtype=bool)
    corners[0, 0, 0] = corners[0, h - 1, w - 1] = True
    assert LearnedBox().fit(images[:1], corners).box == (0, h, 0, w)
    assert LearnedBox(margin=1.0).fit(images, masks).region(images).all()


def test_learned_box_without_training_lesions_keeps_everything():
    images = np.zeros((3, 1, 16, 20), dtype=np.float32)
    fitted = LearnedBox().fit(images, np.zeros((3, 16, 20), dtype=bool))
    assert fitted.box == (0, 16, 0, 20)
    assert fitted.region(images).all()
    empty = LearnedBox().fit(images[:0], np.zeros((0, 16, 20), dtype=bool))  # no slice at all
    assert empty.region(images).all()


def test_learned_box_refuses_region_before_fit_and_mismatched_sizes():
    images = np.zeros((2, 1, 16, 20), dtype=np.float32)
    with pytest.raises(RuntimeError, match="before fit"):
        LearnedBox().region(images)
    with pytest.raises(RuntimeError, match="before fit"):
        REGISTRY.filters["learned-box"].region(images)
    masks = np.zeros((2, 16, 20), dtype=bool)
    masks[0, 5, 5] = True
    fitted = LearnedBox().fit(images, masks)
    with pytest.raises(ValueError, match="16×20"):
        fitted.region(np.zeros((1, 1, 20, 16), dtype=np.float32))
    with pytest.raises(ValueError, match="masks"):
        LearnedBox().fit(images, masks[:1])
    with pytest.raises(ValueError, match="images"):
        LearnedBox().fit(images[0], masks)


def test_learned_box_refit_forgets_the_previous_fold():
    images = np.zeros((1, 1, 30, 30), dtype=np.float32)
    a, b = np.zeros((1, 30, 30), bool), np.zeros((1, 30, 30), bool)
    a[0, 3, 3] = True
    b[0, 25, 20] = True
    base = LearnedBox(margin=0.0)
    fold_a = base.fit(images, a)
    fold_b = fold_a.fit(images, b)  # a refit starts from scratch, not from fold a's box
    assert fold_a.box == (3, 4, 3, 4) and fold_b.box == (25, 26, 20, 21)
    assert base.fit(images, b) == fold_b and base.box is None


@pytest.mark.parametrize("margin", [-0.05, 1.5, math.nan, "0.05", None])
def test_learned_box_rejects_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        LearnedBox(margin=margin)


def test_learned_box_state_is_not_an_option():
    flt = REGISTRY.filters["learned-box"]
    assert set(options.option_fields(flt)) == {"margin"}
    assert options.configure(flt, {"margin": "0.1"}).margin == 0.1
    for key in ("box", "shape"):
        with pytest.raises(UsageError, match="no option"):
            options.configure(flt, {key: "0"})
    with pytest.raises(ValueError, match="together"):
        LearnedBox(box=(0, 1, 0, 1))
    with pytest.raises(ValueError, match="does not fit"):
        LearnedBox(box=(0, 5, 0, 1), shape=(4, 4))


# ---------------------------------------------------------------- no leak from validation


SENTINEL = 7.0  # a value only validation images hold
TRAIN = np.arange(5)  # slices 0-4 (cases a, b) train; slices 5-7 (case c) validate


def fold_data(val_masks: bool) -> SliceSet:
    rng = np.random.default_rng(3)
    n, h, w = 8, 32, 40
    images = rng.random((n, 2, h, w)).astype(np.float32)
    images[:, :, :3] = 0.0  # air on top: brain filters have something to drop
    images[5:, 0, 10, 10] = SENTINEL
    masks = np.zeros((n, h, w), dtype=bool)
    masks[1, 10:13, 8:11] = True
    masks[2, 18, 25] = True
    masks[5:] = val_masks  # validation masks: all lesion or none at all
    case_ids = np.array(["a", "a", "b", "b", "b", "c", "c", "c"])
    return SliceSet(images, masks, case_ids, np.array([0, 1, 0, 1, 2, 0, 1, 2]))


@pytest.mark.parametrize("name", FILTERS)
def test_validation_masks_do_not_change_regions(name):
    flt = REGISTRY.filters[name]
    with_lesions = regions(flt, fold_data(True), TRAIN)
    without = regions(flt, fold_data(False), TRAIN)
    assert with_lesions.dtype == bool and with_lesions.shape == (8, 32, 40)
    np.testing.assert_array_equal(with_lesions, without)


def test_learned_box_region_comes_from_training_lesions_only():
    # training lesions: rows 10..18, cols 8..25; margin round(0.05·32) = 2, round(0.05·40) = 2
    expected = box_plane(32, 40, (8, 20), (6, 27))
    for val_masks in (True, False):
        region = regions(REGISTRY.filters["learned-box"], fold_data(val_masks), TRAIN)
        for plane in region:
            np.testing.assert_array_equal(plane, expected)
    assert REGISTRY.filters["learned-box"].box is None  # the shared object never changes


class FitSpy:
    """Wraps a learned filter; records what ``fit`` sees. Only the fitted copy it returns may
    compute regions."""

    learned = True

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.name, self.description = inner.name, inner.description

    def fit(self, images, masks):
        self.calls.append((np.array(images), np.array(masks)))
        return self.inner.fit(images, masks)

    def region(self, images):
        raise AssertionError("region() of the unfitted filter; use the object fit returns")


@pytest.mark.parametrize("name", LEARNED)
def test_fit_sees_training_slices_only(name):
    data = fold_data(True)
    spy = FitSpy(REGISTRY.filters[name])
    region = regions(spy, data, TRAIN)
    assert len(spy.calls) == 1
    images, masks = spy.calls[0]
    np.testing.assert_array_equal(images, data.images[TRAIN])
    np.testing.assert_array_equal(masks, data.masks[TRAIN])
    assert not (images == SENTINEL).any()  # no validation image …
    assert masks.sum() == 10  # … and no validation mask (they are all lesion)
    assert region.shape == (8, 32, 40)


def test_folds_do_not_leak_into_each_other():
    """Fold 2's regions are those of a fresh fit on fold 2, whatever fold 1 fitted before."""
    flt = REGISTRY.filters["learned-box"]
    data = fold_data(False)
    other = np.array([0, 2, 5, 6, 7])
    first = regions(flt, data, TRAIN)
    second = regions(flt, data, other)
    np.testing.assert_array_equal(second, regions(LearnedBox(), data, other))
    assert not np.array_equal(first, second)  # different training lesions, different boxes
    np.testing.assert_array_equal(regions(flt, data, TRAIN), first)


# ---------------------------------------------------------------- contract over the registry


def _state(obj) -> dict[str, str]:
    return {k: repr(v) for k, v in vars(obj).items()} if hasattr(obj, "__dict__") else {}


@pytest.mark.parametrize("name", FILTERS)
@pytest.mark.parametrize(("b", "c", "h", "w"), [(4, 1, 16, 24), (3, 2, 17, 9)])
def test_filter_contract(name, b, c, h, w):
    flt = REGISTRY.filters[name]
    assert isinstance(flt, Filter)
    assert isinstance(flt.name, str) and flt.name == name and flt.description
    before = _state(flt)
    rng = np.random.default_rng(b * h)
    images = rng.random((b, c, h, w)).astype(np.float32)
    images[rng.random(images.shape) < 0.3] = 0.0
    original = images.copy()
    if flt.learned:
        masks = rng.random((b, h, w)) > 0.8
        masks_original = masks.copy()
        fitted = flt.fit(images, masks)  # returns the fitted filter; flt itself is unchanged
        assert isinstance(fitted, Filter)
        np.testing.assert_array_equal(images, original)
        np.testing.assert_array_equal(masks, masks_original)
        assert _state(flt) == before
    else:
        fitted = flt
    region = fitted.region(images)
    assert isinstance(region, np.ndarray)
    assert region.dtype == bool and region.shape == (b, h, w)
    np.testing.assert_array_equal(images, original)  # the input is not modified
    assert _state(flt) == before
    # per slice: a slice's region does not depend on the other slices of the batch
    np.testing.assert_array_equal(fitted.region(images[1:2])[0], region[1])
    region[:] = ~region  # the result is the caller's own array
    np.testing.assert_array_equal(fitted.region(images), ~region)


def test_builtin_filters_are_registered():
    assert {"none", "center-box", "brain", "brain-band", "learned-box"} <= set(FILTERS)
    assert isinstance(REGISTRY.filters["center-box"], CenterBox)
    assert isinstance(REGISTRY.filters["brain"], Brain)
    assert isinstance(REGISTRY.filters["brain-band"], BrainBand)
    assert isinstance(REGISTRY.filters["learned-box"], LearnedBox)
