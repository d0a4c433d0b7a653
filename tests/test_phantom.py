"""Tests for the ``phantom`` dataset plugin."""

from __future__ import annotations

import dataclasses

import numpy as np
import pluggy
import pytest

from wsss_bench import hookspecs
from wsss_bench.contracts import Case, Dataset
from wsss_bench_plugins import phantom
from wsss_bench_plugins.phantom import Phantom


@pytest.fixture(scope="module")
def default_cases() -> list[Case]:
    return list(Phantom().cases(None))


def _positive(case: Case) -> np.ndarray:
    return case.masks.reshape(len(case.masks), -1).any(axis=1)


def _runs(flags: np.ndarray) -> list[int]:
    """Lengths of the maximal runs of True in a 1-D bool array."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return (edges[1::2] - edges[::2]).tolist()


def test_shapes_dtypes_and_range(default_cases: list[Case]) -> None:
    assert len(default_cases) == 24
    for case in default_cases:
        assert case.images.shape == (16, 1, 64, 64)
        assert case.images.dtype == np.float32
        assert case.masks.shape == (16, 64, 64)
        assert case.masks.dtype == np.bool_
        assert np.isfinite(case.images).all()
        assert case.images.min() >= 0.0 and case.images.max() <= 1.0


def test_case_ids_unique_and_named(default_cases: list[Case]) -> None:
    ids = [c.case_id for c in default_cases]
    assert ids == [f"phantom_{i:03d}" for i in range(24)]
    assert len(set(ids)) == len(ids)


def test_same_seed_same_data_other_seed_differs() -> None:
    a = list(Phantom(n_cases=3, seed=5).cases(None))
    b = list(Phantom(n_cases=3, seed=5).cases(None))
    c = list(Phantom(n_cases=3, seed=6).cases(None))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.masks, y.masks)
    assert not any(np.array_equal(x.images, z.images) for x, z in zip(a, c, strict=True))
    assert not all(np.array_equal(x.masks, z.masks) for x, z in zip(a, c, strict=True))


def test_case_does_not_depend_on_n_cases(default_cases: list[Case]) -> None:
    few = list(Phantom(n_cases=3).cases(None))
    assert len(few) == 3
    for x, y in zip(few, default_cases[:3], strict=True):
        assert x.case_id == y.case_id
        np.testing.assert_array_equal(x.images, y.images)
        np.testing.assert_array_equal(x.masks, y.masks)


def test_cases_differ_from_each_other(default_cases: list[Case]) -> None:
    a, b = default_cases[0], default_cases[1]
    assert not np.array_equal(a.images, b.images)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_about_half_of_slices_positive(seed: int, default_cases: list[Case]) -> None:
    cases = default_cases if seed == 0 else list(Phantom(seed=seed).cases(None))
    frac = np.concatenate([_positive(c) for c in cases]).mean()
    assert 0.35 <= frac <= 0.65, frac
    # Some cases are entirely lesion-free, most are not.
    n_negative = sum(not _positive(c).any() for c in cases)
    assert 0 < n_negative < len(cases) // 2


def test_mask_is_exactly_where_lesion_intensity_was_added() -> None:
    # Lesion amounts scale with ``contrast`` and nothing else changes; with no noise the two
    # images differ exactly on the lesion pixels.
    lo = Phantom(n_cases=4, noise=0.0, contrast=0.2)
    hi = Phantom(n_cases=4, noise=0.0, contrast=0.3)
    for i in range(4):
        img_lo, masks_lo, _ = lo.generate(i)
        img_hi, masks_hi, _ = hi.generate(i)
        np.testing.assert_array_equal(masks_lo, masks_hi)
        np.testing.assert_array_equal(img_hi[:, 0] > img_lo[:, 0], masks_hi)
        np.testing.assert_array_equal(img_hi[:, 0] < img_lo[:, 0], np.zeros_like(masks_hi))


def test_lesions_inside_organ_and_brighter_than_organ() -> None:
    p = Phantom()
    n_checked = 0
    for i in range(p.n_cases):
        images, masks, organ = p.generate(i)
        assert organ.shape == masks.shape and organ.dtype == np.bool_
        assert not (masks & ~organ).any(), f"case {i}: lesion pixels outside the organ"
        assert organ.any(axis=(1, 2)).all(), "the organ shows on every slice"
        img = images[:, 0]
        assert img[~organ].mean() < 0.1, "background is dark"
        for s in np.flatnonzero(masks.any(axis=(1, 2))):
            lesion = img[s][masks[s]]
            tissue = img[s][organ[s] & ~masks[s]]
            assert lesion.mean() > tissue.mean() + 0.03, (i, s)
            assert lesion.min() > 0.15, "lesion pixels are not background"
            n_checked += 1
    assert n_checked > 100


def test_lesion_surroundings_look_like_organ(default_cases: list[Case]) -> None:
    # Image-only check: a 2-px ring around each positive slice's lesion is organ-bright.
    for case in default_cases:
        for s in np.flatnonzero(_positive(case)):
            m = case.masks[s]
            grown = m.copy()
            for _ in range(2):
                grown = grown | np.roll(grown, 1, 0) | np.roll(grown, -1, 0)
                grown = grown | np.roll(grown, 1, 1) | np.roll(grown, -1, 1)
            ring = grown & ~m
            assert case.images[s, 0][ring].mean() > 0.2, (case.case_id, s)


def test_lesions_span_adjacent_slices(default_cases: list[Case]) -> None:
    all_runs = [r for c in default_cases for r in _runs(_positive(c))]
    assert all_runs, "no lesions at all"
    assert min(all_runs) >= 2, all_runs
    assert max(all_runs) >= 5


def test_lesion_radius_shrinks_toward_run_ends(default_cases: list[Case]) -> None:
    shrinking = 0
    runs = 0
    for case in default_cases:
        area = case.masks.sum(axis=(1, 2))
        flags = area > 0
        padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
        edges = np.flatnonzero(np.diff(padded))
        for start, stop in zip(edges[::2], edges[1::2], strict=True):
            if stop - start >= 5:
                runs += 1
                peak = area[start:stop].max()
                shrinking += area[start] < peak and area[stop - 1] < peak
    assert runs > 0 and shrinking >= 0.8 * runs


def test_lesion_sizes_vary(default_cases: list[Case]) -> None:
    peak_areas = np.array(
        [c.masks.sum(axis=(1, 2)).max() for c in default_cases if c.masks.any()], dtype=float
    )
    assert len(peak_areas) >= 10
    # radius 6-13 px at 64×64: peak areas from ~110 to ~530 px, irregular and clipped
    assert peak_areas.min() < 160 and peak_areas.max() > 300, peak_areas
    assert peak_areas.std() / peak_areas.mean() > 0.25
    lesion_px = np.mean([c.masks.mean() for c in default_cases])
    assert 0.003 < lesion_px < 0.05


def test_other_size_and_slice_count() -> None:
    cases = list(Phantom(n_cases=3, n_slices=8, size=96).cases(None))
    for case in cases:
        assert case.images.shape == (8, 1, 96, 96)
        assert case.masks.shape == (8, 96, 96)
    single = next(iter(Phantom(n_cases=2, n_slices=1, size=32).cases(None)))
    assert single.images.shape == (1, 1, 32, 32)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_cases": 1},
        {"n_cases": 0},
        {"n_slices": 0},
        {"size": 31},
        {"size": 64.0},
        {"n_slices": True},
        {"seed": -1},
        {"noise": -0.1},
        {"contrast": 0.0},
        {"channels": 0},
        {"channels": 3},
        {"channels": 2.0},
        {"channels": True},
    ],
)
def test_invalid_parameters_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        Phantom(**kwargs)


def test_parameters_are_simple_numbers() -> None:
    p = Phantom()
    assert p.name == "phantom" and p.needs_data_dir is False
    assert p.description and "\n" not in p.description
    for f in dataclasses.fields(p):
        if f.name not in ("name", "description", "needs_data_dir"):
            assert type(getattr(p, f.name)) in (int, float), f.name
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 3  # type: ignore[misc]


def test_hook_registers_one_phantom_dataset() -> None:
    got: list[object] = []
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(phantom)
    pm.hook.register_datasets(register=got.append)
    assert len(got) == 1
    (obj,) = got
    assert obj.name == "phantom"
    assert isinstance(obj, Dataset)
    assert isinstance(obj, Phantom)


# --- the optional second channel (channels=2) ---------------------------------------------


@pytest.fixture(scope="module")
def two_channel() -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    p = Phantom(n_cases=6, channels=2)
    return [p.generate(i) for i in range(p.n_cases)]


def test_channel_one_and_masks_identical_to_single_channel(
    default_cases: list[Case], two_channel: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    one = Phantom(n_cases=6)
    for i, (images, masks, organ) in enumerate(two_channel):
        _, _, organ1 = one.generate(i)
        assert images.shape == (16, 2, 64, 64) and images.dtype == np.float32
        np.testing.assert_array_equal(images[:, :1], default_cases[i].images)  # bit-identical
        np.testing.assert_array_equal(masks, default_cases[i].masks)
        np.testing.assert_array_equal(organ, organ1)
    case = next(iter(Phantom(n_cases=2, channels=2).cases(None)))
    assert case.images.shape == (16, 2, 64, 64) and case.masks.shape == (16, 64, 64)


def test_second_channel_is_another_contrast_of_the_same_lesions(
    two_channel: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
) -> None:
    checked = 0
    for images, masks, organ in two_channel:
        first, second = images[:, 0], images[:, 1]
        assert np.isfinite(second).all() and second.min() >= 0.0 and second.max() <= 1.0
        assert not np.allclose(first, second, atol=0.05)
        assert second[~organ].mean() < 0.1, "background is dark"
        assert second[organ & ~masks].mean() > first[organ & ~masks].mean() + 0.05
        for s in np.flatnonzero(masks.any(axis=(1, 2))):
            lesion = second[s][masks[s]].mean()
            tissue = second[s][organ[s] & ~masks[s]].mean()
            assert lesion < tissue - 0.02, "the lesion shows (hypo-intense) in channel 2"
            checked += 1
    assert checked > 20


def test_second_channel_seeded_and_its_own_noise() -> None:
    a = Phantom(n_cases=2, channels=2, seed=3).generate(1)[0]
    b = Phantom(n_cases=2, channels=2, seed=3).generate(1)[0]
    np.testing.assert_array_equal(a, b)
    quiet = Phantom(n_cases=2, channels=2, seed=3, noise=0.0).generate(1)[0]
    residual_1 = a[:, 0] - quiet[:, 0]
    residual_2 = a[:, 1] - quiet[:, 1]
    assert abs(np.corrcoef(residual_1.ravel(), residual_2.ravel())[0, 1]) < 0.1


def test_channels_is_key_neutral_at_one() -> None:
    assert Phantom.key_neutral == {"channels": 1}
    assert Phantom().channels == 1
    assert "key_neutral" not in {f.name for f in dataclasses.fields(Phantom)}
