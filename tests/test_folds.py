"""Patient-level folds, and the slice collection (resize_case, collect)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wsss_bench.contracts import Case
from wsss_bench.core.folds import patient_folds
from wsss_bench.core.slices import SliceSet, collect, resize_case
from wsss_bench.errors import UsageError
from wsss_bench_plugins.phantom import Phantom


def slices_of(cases: dict[str, list[int]], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice case ids and labels for ``{case_id: [slice labels]}``, slices interleaved."""
    ids = [c for c, labels in cases.items() for _ in labels]
    labels = [v for vs in cases.values() for v in vs]
    order = np.random.default_rng(seed).permutation(len(ids))
    return np.asarray(ids)[order], np.asarray(labels, dtype=np.int64)[order]


def many_cases(n: int, n_pos: int, slices: int = 3) -> dict[str, list[int]]:
    return {f"case{i:02d}": ([0] * (slices - 1) + [1]) if i < n_pos else [0] * slices
            for i in range(n)}


# ---------------------------------------------------------------- properties (hypothesis)


@st.composite
def datasets(draw):
    n = draw(st.integers(2, 12))
    cases = {f"c{i}": draw(st.lists(st.integers(0, 1), min_size=1, max_size=4))
             for i in range(n)}
    k = draw(st.integers(2, n))
    seed = draw(st.integers(0, 2**31 - 1))
    shuffle = draw(st.integers(0, 1000))
    return cases, k, seed, shuffle


@settings(max_examples=80, deadline=None)
@given(datasets())
def test_folds_partition_the_cases(data):
    cases, k, seed, shuffle = data
    case_ids, labels = slices_of(cases, shuffle)
    positive = {c for c, vs in cases.items() if any(vs)}
    if len(positive) < k:
        with pytest.raises(UsageError, match="no slice with a lesion"):
            patient_folds(case_ids, labels, k, seed)
        return
    folds = patient_folds(case_ids, labels, k, seed)
    assert len(folds) == k
    flat = [c for fold in folds for c in fold]
    assert sorted(flat) == sorted(cases)  # every case in exactly one fold
    assert len(flat) == len(set(flat))
    sizes = [len(f) for f in folds]
    assert max(sizes) - min(sizes) <= 1
    assert all(positive.intersection(f) for f in folds)  # every fold has a lesion case
    pos_counts = [len(positive.intersection(f)) for f in folds]
    assert max(pos_counts) - min(pos_counts) <= 1  # positives are spread evenly
    assert all(f == sorted(f) for f in folds)
    # the split depends on the cases, not on the order of the slices
    other_ids, other_labels = slices_of(cases, shuffle + 1)
    assert patient_folds(other_ids, other_labels, k, seed) == folds


def test_a_case_is_positive_if_any_of_its_slices_is():
    cases = {"a": [0, 0, 1], "b": [0, 0, 0], "c": [1, 0, 0], "d": [0, 0]}
    case_ids, labels = slices_of(cases)
    for seed in range(10):
        folds = patient_folds(case_ids, labels, 2, seed)
        assert all({"a", "c"} & set(f) for f in folds)


# ---------------------------------------------------------------- determinism


def test_folds_are_deterministic_for_a_seed_and_change_with_it():
    case_ids, labels = slices_of(many_cases(20, n_pos=10))
    first = patient_folds(case_ids, labels, 4, seed=0)
    assert patient_folds(case_ids, labels, 4, seed=0) == first
    assert patient_folds(case_ids.copy(), labels.copy(), 4, seed=0) == first
    assert patient_folds(case_ids, labels, 4, seed=1) != first
    assert len({str(patient_folds(case_ids, labels, 4, seed=s)) for s in range(6)}) > 3


def test_fold_sizes_with_uneven_counts():
    case_ids, labels = slices_of(many_cases(11, n_pos=4))
    folds = patient_folds(case_ids, labels, 3, seed=2)
    assert sorted(len(f) for f in folds) == [3, 4, 4]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("k", [-1, 0, 1])
def test_fewer_than_two_folds_is_a_usage_error(k):
    case_ids, labels = slices_of(many_cases(6, n_pos=3))
    with pytest.raises(UsageError, match="at least 2 folds"):
        patient_folds(case_ids, labels, k, seed=0)


def test_more_folds_than_cases_is_a_usage_error():
    case_ids, labels = slices_of(many_cases(4, n_pos=4))
    with pytest.raises(UsageError, match="only 4 cases"):
        patient_folds(case_ids, labels, 5, seed=0)
    assert len(patient_folds(case_ids, labels, 4, seed=0)) == 4  # k == n is fine


def test_fewer_positive_cases_than_folds_is_a_usage_error():
    case_ids, labels = slices_of(many_cases(9, n_pos=2))
    with pytest.raises(UsageError, match="no slice with a lesion"):
        patient_folds(case_ids, labels, 3, seed=0)
    assert len(patient_folds(case_ids, labels, 2, seed=0)) == 2


# ---------------------------------------------------------------- resize_case


def _bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
    """Interpolation matrix [n_out, n_in] of half-pixel bilinear upsampling (edge-clamped)."""
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        lo = min(int(np.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        mat[i, lo] += 1 - frac
        mat[i, hi] += frac
    return mat


def _case(size: int = 64, slices: int = 2, channels: int = 2, seed: int = 0) -> Case:
    rng = np.random.default_rng(seed)
    images = rng.random((slices, channels, size, size), dtype=np.float32)
    masks = rng.random((slices, size, size)) > 0.7
    return Case("x", images, masks)


def test_resize_up_images_bilinear_masks_nearest():
    case = _case()
    out = resize_case(case, 96)
    assert out.case_id == "x"
    assert out.images.shape == (2, 2, 96, 96) and out.images.dtype == np.float32
    assert out.masks.shape == (2, 96, 96) and out.masks.dtype == bool
    mat = _bilinear_1d(64, 96)
    expected = np.einsum("ih,schw,jw->scij", mat, case.images.astype(np.float64), mat)
    np.testing.assert_allclose(out.images, expected, atol=1e-5)
    # nearest: every output pixel copies the source pixel floor(i * 64 / 96)
    src = np.floor(np.arange(96) * 64 / 96).astype(int)
    np.testing.assert_array_equal(out.masks, case.masks[:, src][:, :, src])


def test_resize_down_keeps_shapes_ranges_and_mask_pixels():
    case = _case()
    out = resize_case(case, 32)
    assert out.images.shape == (2, 2, 32, 32) and out.masks.shape == (2, 32, 32)
    assert out.masks.dtype == bool
    np.testing.assert_array_equal(out.masks, case.masks[:, ::2, ::2])
    assert out.images.min() >= case.images.min() - 1e-6
    assert out.images.max() <= case.images.max() + 1e-6


def test_resize_down_is_antialiased():
    # one bright column in four: an antialiased 4x reduction gives its mean, 0.25, while
    # plain bilinear sampling (columns 4i+1, 4i+2) would see only the dark ones
    stripes = np.zeros((1, 1, 64, 64), np.float32)
    stripes[..., ::4] = 1.0
    out = resize_case(Case("s", stripes, np.zeros((1, 64, 64), bool)), 16).images
    np.testing.assert_allclose(out[..., 1:-1], 0.25, atol=1e-5)


def test_resize_to_the_same_size_returns_the_case():
    case = _case(size=48)
    assert resize_case(case, 48) is case


# ---------------------------------------------------------------- collect


def test_collect_the_phantom():
    dataset = Phantom(n_cases=3, n_slices=4)
    slices = collect(dataset, None)
    assert isinstance(slices, SliceSet)
    assert len(slices) == 12
    assert slices.case_ids.tolist() == ["phantom_000"] * 4 + ["phantom_001"] * 4 + [
        "phantom_002"] * 4
    assert slices.slice_index.tolist() == [0, 1, 2, 3] * 3
    assert slices.slice_index.dtype == np.int64
    assert slices.images.dtype == np.float32 and slices.images.shape == (12, 1, 64, 64)
    assert slices.masks.dtype == bool and slices.masks.shape == (12, 64, 64)
    for i, case in enumerate(dataset.cases(None)):
        rows = slices.case_ids == case.case_id
        np.testing.assert_array_equal(slices.images[rows], case.images)
        np.testing.assert_array_equal(slices.masks[rows], case.masks)
        assert slices.slice_index[rows].tolist() == list(range(4))
        assert np.flatnonzero(rows).tolist() == list(range(4 * i, 4 * i + 4))
    np.testing.assert_array_equal(slices.labels, slices.masks.any(axis=(1, 2)).astype(int))
    sub = slices.subset(np.array([5, 0]))
    assert sub.case_ids.tolist() == ["phantom_001", "phantom_000"]
    assert sub.slice_index.tolist() == [1, 0]
    np.testing.assert_array_equal(sub.images[0], slices.images[5])


def test_collect_resizes_every_case():
    dataset = Phantom(n_cases=2, n_slices=3)
    slices = collect(dataset, None, image_size=40)
    assert slices.images.shape == (6, 1, 40, 40) and slices.masks.shape == (6, 40, 40)
    first = resize_case(dataset.case(0), 40)
    np.testing.assert_array_equal(slices.images[:3], first.images)
    np.testing.assert_array_equal(slices.masks[:3], first.masks)


def test_collect_rejects_a_missing_data_dir(tmp_path):
    with pytest.raises(UsageError, match="no such folder"):
        collect(Phantom(n_cases=2, n_slices=1), tmp_path / "nope")
