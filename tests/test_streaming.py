"""Bounded memory (issue 12): the streaming paths give exactly the whole-array results.

Calibration reads the stored float16 CAMs of each backbone (memory-mapped, never stacked or
converted whole) and a fold's slices through ``slices=``; CAM generation writes each batch
into the float16 output. Chunks are forced small here so that every path crosses chunk
boundaries. The slice cache appends each case to its files as it is decoded: the same bytes as
saving the concatenated arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch

from wsss_bench.contracts import Case, CaseFiles
from wsss_bench.core import calibration, slice_cache
from wsss_bench.core.calibration import binarize, grid_search, threshold_grid
from wsss_bench.pipeline.cams import compute_cams
from wsss_bench_plugins.ensembles import And, Bigger, Mean, Or

N, H, W = 37, 12, 10


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(calibration, "_CHUNK_BYTES", 3 * 2 * H * W * 10)
    monkeypatch.setattr(calibration, "_BLOCK_PIXELS", 2 * H * W)


@pytest.fixture
def stored(tmp_path):
    """Two backbones' CAMs stored as float16 .npy files (memory-mapped), gt, region, cases,
    and a non-contiguous fold split."""
    rng = np.random.default_rng(3)
    cams = []
    for m in range(2):
        c = rng.random((N, H, W), dtype=np.float32) ** (1 + m)
        c[::5] = np.round(c[::5] * 10) / 10  # values on the grid too
        np.save(tmp_path / f"cams{m}.npy", c.astype(np.float16))
        cams.append(np.load(tmp_path / f"cams{m}.npy", mmap_mode="r"))
    gt = rng.random((N, H, W)) < 0.3
    region = rng.random((N, H, W)) < 0.8
    case_ids = np.asarray([f"c{i // 6}" for i in range(N)])
    val = np.isin(case_ids, ["c1", "c4"])
    return cams, gt, region, case_ids, np.flatnonzero(~val), np.flatnonzero(val)


@pytest.mark.parametrize("ensemble", [None, And(), Or(), Bigger(), Mean()])
@pytest.mark.parametrize("metric", ["paper_miou", "dice_slice", "dice_volume"])
def test_grid_search_streams_exactly(stored, small_chunks, ensemble, metric):
    cams, gt, region, case_ids, train, _ = stored
    cams = cams[:1] if ensemble is None else cams
    whole = np.stack([np.asarray(c, dtype=np.float32) for c in cams])  # the old path
    grid = threshold_grid(0.1)
    old = grid_search(whole[:, train], gt[train], ensemble=ensemble, thresholds=grid,
                      metric=metric, case_ids=case_ids[train], region=region[train])
    new = grid_search(cams, gt, ensemble=ensemble, thresholds=grid, metric=metric,
                      case_ids=case_ids, region=region, slices=train)
    assert new.index == old.index and new.thresholds == old.thresholds
    np.testing.assert_array_equal(new.scores, old.scores)


@pytest.mark.parametrize("ensemble, thresholds", [(None, (0.4,)), (And(), (0.3, 0.6)),
                                                  (Bigger(), (0.5, 0.2)), (Mean(), (0.4,))])
def test_binarize_streams_exactly(stored, small_chunks, ensemble, thresholds):
    cams, _, region, _, _, val = stored
    cams = cams[:1] if ensemble is None else cams
    whole = np.stack([np.asarray(c, dtype=np.float32) for c in cams])
    old = binarize(whole[:, val], thresholds, ensemble, region[val])
    new = binarize(cams, thresholds, ensemble, region, slices=val)
    assert new.dtype == np.bool_
    np.testing.assert_array_equal(new, old)
    np.testing.assert_array_equal(binarize(cams, thresholds, ensemble, region),
                                  binarize(whole, thresholds, ensemble, region))


def test_nan_is_found_in_the_selected_slices_only(stored):
    cams, gt, _, _, train, val = stored
    bad = np.array(cams[0], dtype=np.float32)
    bad[val[0], 0, 0] = np.nan
    grid_search([bad], gt, slices=train)  # the NaN lies outside the calibrated slices
    with pytest.raises(ValueError, match="NaN"):
        grid_search([bad], gt, slices=val)
    with pytest.raises(ValueError, match="NaN"):
        binarize([bad], (0.5,), slices=val)


class _Cam:
    """A deterministic stand-in CAM method: values that float16 rounds."""

    def cam(self, model, layer, batch, classes):
        with torch.no_grad():
            return torch.sigmoid(model(batch))[:, 0] * 0.987654321


def test_compute_cams_writes_float16_exactly():
    torch.manual_seed(0)
    model = torch.nn.Conv2d(1, 1, 3, padding=1).eval()
    images = np.random.default_rng(0).random((23, 1, H, W)).astype(np.float16)
    gate = np.arange(23) % 4 != 1
    args = (_Cam(), model, None, images, 5, torch.device("cpu"))
    old = compute_cams(*args, gate=gate).astype(np.float16)
    out = np.full((23, H, W), np.nan, dtype=np.float16)
    new = compute_cams(*args, gate=gate, out=out)
    assert new is out
    np.testing.assert_array_equal(new.view(np.uint16), old.view(np.uint16))


@dataclass(frozen=True)
class _Files:
    """A file dataset: case_K.txt holds K; case K has K + 2 slices of 9×7, a CAM view."""

    name: str = "streamtest"
    description: str = "test"
    needs_data_dir: bool = True
    reads_files: ClassVar[bool] = True
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = "test"
    cache_version: ClassVar[int] = 0
    cam_view: ClassVar[bool] = True

    def sources(self, data_dir: Path) -> list[CaseFiles]:
        return [CaseFiles(p.stem, {"case": p}) for p in sorted(Path(data_dir).glob("case_*"))]

    def load(self, source: CaseFiles) -> Case:
        k = int(Path(source.files["case"]).read_text())
        rng = np.random.default_rng(k)
        images = rng.random((k + 2, 2, 9, 7)).astype(np.float32)
        return Case(source.case_id, images, rng.random((k + 2, 9, 7)) < 0.2, 1 - images)

    def cases(self, data_dir):
        return (self.load(s) for s in self.sources(data_dir))


@pytest.mark.parametrize("workers", [1, 2])
def test_slice_cache_streams_the_same_files(tmp_path, workers):
    data = tmp_path / "data"
    data.mkdir()
    for k in range(7):
        (data / f"case_{k}").write_text(str(k))
    ds = _Files()
    cases = [ds.load(s) for s in ds.sources(data)]
    ref = tmp_path / "ref"
    ref.mkdir()
    np.save(ref / "images.npy", np.concatenate([c.images for c in cases]).astype(np.float16))
    np.save(ref / "cam_images.npy",
            np.concatenate([c.cam_images for c in cases]).astype(np.float16))
    np.save(ref / "masks.npy", np.concatenate([c.masks for c in cases]))
    slice_cache.prepare(ds, data, tmp_path / "cache", workers=workers)
    (folder,) = (tmp_path / "cache").glob("streamtest-*")
    for name in ("images.npy", "cam_images.npy", "masks.npy"):
        assert (folder / name).read_bytes() == (ref / name).read_bytes(), name
    assert not list(folder.glob("*.part"))
    assert np.load(folder / "case_ids.npy").tolist() == [
        c.case_id for c in cases for _ in range(len(c.images))]
