"""The slice cache: one pass per (dataset, options, file set), reuse, invalidation, no partial
cache after a failure or an interruption, parallel decoding = serial decoding."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest

from tests.mri_files import tiny_decathlon
from wsss_bench.contracts import CaseFiles
from wsss_bench.core import slice_cache
from wsss_bench.errors import UsageError
from wsss_bench_plugins.brats import Brats
from wsss_bench_plugins.msd import Decathlon

pytestmark = pytest.mark.usefixtures("one_thread")


@dataclasses.dataclass(frozen=True)
class Counting(Decathlon):
    """Decathlon that records each decoded case in a file (works across processes) and can
    fail on one case."""

    log: str = ""
    fail_on: str = ""
    interrupt: bool = False

    def load(self, source: CaseFiles):
        with open(self.log, "a") as fh:
            fh.write(source.case_id + "\n")
        if source.case_id == self.fail_on:
            if self.interrupt:
                raise KeyboardInterrupt
            raise UsageError(f"broken case {source.case_id}")
        return super().load(source)


@pytest.fixture
def data(tmp_path) -> Path:
    tiny_decathlon(tmp_path / "data", n_cases=4)
    return tmp_path / "data"


def decoded(log: Path) -> list[str]:
    return log.read_text().split() if log.exists() else []


def cache_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_second_pass_reuses_the_cache(tmp_path, data):
    log = tmp_path / "log"
    ds = Counting(size=32, log=str(log))
    first = slice_cache.prepare(ds, data, tmp_path / "cache", workers=1)
    assert len(decoded(log)) == 4
    second = slice_cache.prepare(ds, data, tmp_path / "cache", workers=1)
    assert len(decoded(log)) == 4  # nothing decoded again
    assert isinstance(second.images, np.memmap) and second.images.dtype == np.float16
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.masks, second.masks)
    assert first.case_ids.tolist() == [f"prostate_{i:02d}" for i in range(4) for _ in range(4)]
    assert first.slice_index.tolist() == [0, 1, 2, 3] * 4
    (folder,) = cache_dirs(tmp_path / "cache")
    assert sorted(os.listdir(tmp_path / "cache" / folder)) == [
        "case_ids.npy", "images.npy", "masks.npy", "meta.json", "slice_index.npy"]


def test_cache_holds_float16_of_the_decoded_slices(tmp_path, data):
    ds = Decathlon(size=32)
    cached = slice_cache.prepare(ds, data, tmp_path / "cache", workers=1)
    direct = np.concatenate([ds.load(s).images for s in ds.sources(data)])
    np.testing.assert_array_equal(cached.images, direct.astype(np.float16))


def test_a_changed_option_or_file_makes_a_new_pass(tmp_path, data):
    log = tmp_path / "log"
    slice_cache.prepare(Counting(size=32, log=str(log)), data, tmp_path / "cache", workers=1)
    slice_cache.prepare(Counting(size=48, log=str(log)), data, tmp_path / "cache", workers=1)
    assert len(decoded(log)) == 8 and len(cache_dirs(tmp_path / "cache")) == 2
    slice_cache.prepare(Counting(size=32, log=str(log)), data, tmp_path / "cache", workers=1,
                        image_size=16)
    assert len(decoded(log)) == 12
    image = data / "Task05_Prostate" / "imagesTr" / "prostate_02.nii.gz"
    stat = image.stat()
    os.utime(image, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    slice_cache.prepare(Counting(size=32, log=str(log)), data, tmp_path / "cache", workers=1)
    assert len(decoded(log)) == 16 and len(cache_dirs(tmp_path / "cache")) == 4


@pytest.mark.parametrize("interrupt", [False, True], ids=["error", "interrupt"])
@pytest.mark.parametrize("workers", [1, 2])
def test_failed_or_interrupted_pass_leaves_no_cache(tmp_path, data, interrupt, workers):
    ds = Counting(size=32, log=str(tmp_path / "log"), fail_on="prostate_02", interrupt=interrupt)
    expected = KeyboardInterrupt if interrupt else UsageError
    with pytest.raises(expected):
        slice_cache.prepare(ds, data, tmp_path / "cache", workers=workers)
    assert cache_dirs(tmp_path / "cache") == []
    # the next, successful pass builds the cache
    ok = dataclasses.replace(ds, fail_on="")
    assert len(slice_cache.prepare(ok, data, tmp_path / "cache", workers=workers)) == 16


def test_stale_temporary_folder_of_a_killed_pass_is_removed(tmp_path, data):
    cache = tmp_path / "cache"
    stale = cache / ".tmp-decathlon-0123456789abcdef-999999999"  # no such pid
    stale.mkdir(parents=True)
    (stale / "images.npy").write_bytes(b"half")
    slice_cache.prepare(Decathlon(size=32), data, cache, workers=1)
    assert not stale.exists()
    assert len(cache_dirs(cache)) == 1


def test_parallel_decoding_equals_serial(tmp_path, brats_sample):
    ds = Brats(crop="56:184,56:184,60:70")
    serial = slice_cache.prepare(ds, brats_sample, tmp_path / "one", workers=1)
    parallel = slice_cache.prepare(ds, brats_sample, tmp_path / "two", workers=2)
    np.testing.assert_array_equal(serial.images, parallel.images)
    np.testing.assert_array_equal(serial.masks, parallel.masks)
    assert serial.case_ids.tolist() == parallel.case_ids.tolist()
    assert len(serial) == 60


def test_slices_of_different_sizes_need_image_size(tmp_path, data):
    tiny_decathlon(tmp_path / "other", n_cases=1, shape=(30, 30, 4))
    (data / "Task05_Prostate" / "imagesTr" / "prostate_09.nii.gz").symlink_to(
        tmp_path / "other" / "Task05_Prostate" / "imagesTr" / "prostate_00.nii.gz")
    (data / "Task05_Prostate" / "labelsTr" / "prostate_09.nii.gz").symlink_to(
        tmp_path / "other" / "Task05_Prostate" / "labelsTr" / "prostate_00.nii.gz")
    # decathlon resizes every slice to `size`: one shape
    assert slice_cache.prepare(Decathlon(size=32), data, tmp_path / "c", 1).images.shape[-1] == 32
    with pytest.raises(UsageError, match="several shapes"):
        slice_cache.prepare(Brats(crop="none"), _as_brats(tmp_path, data), tmp_path / "c", 1)


def _as_brats(tmp_path: Path, data: Path) -> Path:
    """The tiny Task05 images and labels laid out as BraTS case folders (3-D images)."""
    import nibabel as nib

    from tests.mri_files import write_nifti

    root = tmp_path / "brats"
    for image in sorted((data / "Task05_Prostate" / "imagesTr").glob("*.nii.gz"))[-2:]:
        case = image.name[: -len(".nii.gz")]
        volume = np.asarray(nib.load(str(image)).dataobj)[..., 0]
        label = np.asarray(nib.load(str(data / "Task05_Prostate" / "labelsTr" / image.name)
                                    ).dataobj)
        write_nifti(root / case / f"{case}_flair.nii.gz", volume)
        write_nifti(root / case / f"{case}_seg.nii.gz", label)
    return root
