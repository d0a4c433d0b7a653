"""Reading NIfTI volumes and turning them into checked, normalised 2-D slices.

Every problem with a file is a :class:`DataError` (a :class:`UsageError`) whose message names
the file, the problem and the fix, so the CLI reports it as one line and exits with status 2.
Volumes are indexed as nibabel returns them, ``[x, y, z(, channel)]``; a slice is
``volume[:, :, z]``, so image rows are the volume's first axis.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np

from wsss_bench.contracts import Case
from wsss_bench.errors import UsageError


class DataError(UsageError):
    """A data file is missing, unreadable or inconsistent."""


class MissingData(DataError):
    """The dataset's root folder or its cases are not there (a download may fix that)."""


class FileDatasetBase:
    """``cases()`` of a :class:`wsss_bench.contracts.FileDataset` from its ``sources`` and
    ``load`` (the core itself decodes through the slice cache; this is for library use), and
    its declaration ``reads_files = True``."""

    reads_files: ClassVar[bool] = True

    def cases(self, data_dir: Path | None) -> Iterator[Case]:
        for source in self.sources(Path(data_dir or ".")):  # type: ignore[attr-defined]
            yield self.load(source)  # type: ignore[attr-defined]


NIFTI_SUFFIXES = (".nii.gz", ".nii")


def is_nifti(path: Path) -> bool:
    """A visible NIfTI file (archives made on macOS carry ``._name`` companions: skipped)."""
    return path.is_file() and not path.name.startswith(".") and path.name.endswith(NIFTI_SUFFIXES)


def stem(path: Path) -> str:
    """``prostate_00.nii.gz`` → ``prostate_00``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.name


def read(path: Path) -> np.ndarray:
    """The voxel array of a NIfTI file as stored (scaling applied); any failure names the file."""
    import nibabel as nib

    try:
        image = nib.load(str(path))
        data = np.asanyarray(image.dataobj)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except Exception as exc:  # nibabel, gzip and zlib raise many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: not a readable NIfTI file ({reason}); the file is corrupt "
                        f"or truncated: download or copy it again") from None
    return np.asarray(data)


def read_image(path: Path, ndim: int) -> np.ndarray:
    """A float32 image volume with ``ndim`` dimensions and only finite values."""
    data = read(path)
    if data.ndim != ndim:
        raise DataError(f"{path}: expected a {ndim}-D image, found shape {data.shape}")
    data = data.astype(np.float32, copy=False)
    if not np.isfinite(data).all():
        bad = int(np.count_nonzero(~np.isfinite(data)))
        raise DataError(f"{path}: {bad} voxels are NaN or Inf; repair or remove this case")
    return data


def channels(path: Path, volume: np.ndarray, wanted: Iterable[int], names: str) -> np.ndarray:
    """``volume[..., wanted]`` of a 4-D image; too few channels is an error naming the file."""
    wanted = list(wanted)
    have = volume.shape[-1]
    if max(wanted) >= have:
        raise DataError(f"{path}: has {have} channel(s) but {names} needs channel "
                        f"{max(wanted)}; is this the right file?")
    return volume[..., wanted]


def read_mask(path: Path, allowed: Iterable[int], shape: tuple[int, ...]) -> np.ndarray:
    """bool mask (label > 0) of a label volume whose values must lie in ``allowed``.

    Float-typed label files (BraTS 2015 stores float32) are accepted when every value is one of
    the allowed integers.
    """
    data = read(path)
    if data.shape != tuple(shape):
        raise DataError(f"{path}: label shape {data.shape} does not match its image "
                        f"{tuple(shape)}; the label belongs to another image")
    values = np.unique(data)
    allowed = sorted(allowed)
    bad = values[~np.isin(values, np.asarray(allowed, dtype=values.dtype))]
    if bad.size or (values.dtype.kind == "f" and not np.array_equal(values, np.round(values))):
        shown = ", ".join(f"{v:g}" for v in values[:8])
        raise DataError(f"{path}: label values {{{shown}}} outside the expected "
                        f"{{{', '.join(map(str, allowed))}}}; is this a label file of this "
                        f"dataset?")
    return data > 0


def minmax_slices(volume: np.ndarray) -> np.ndarray:
    """Per-slice, per-channel min–max to [0, 1] of ``float[X,Y,Z,C]``; a flat slice is all 0.

    The background of a slice (its minimum) becomes exactly 0.
    """
    low = volume.min(axis=(0, 1), keepdims=True)
    span = volume.max(axis=(0, 1), keepdims=True) - low
    out = volume - low
    np.divide(out, span, out=out, where=span > 0)
    out[np.broadcast_to(span == 0, out.shape)] = 0.0
    return out


def to_slices(volume: np.ndarray) -> np.ndarray:
    """``float[X,Y,Z,C]`` → ``float32[Z,C,X,Y]`` (one 2-D slice per z)."""
    return np.ascontiguousarray(volume.transpose(2, 3, 0, 1), dtype=np.float32)


def mask_slices(mask: np.ndarray) -> np.ndarray:
    """``bool[X,Y,Z]`` → ``bool[Z,X,Y]``."""
    return np.ascontiguousarray(mask.transpose(2, 0, 1))


def parse_crop(text: str, owner: str) -> tuple[slice, slice, slice] | None:
    """``"56:184,56:184,13:141"`` → three slices; ``"none"`` → None."""
    if text.strip().lower() == "none":
        return None
    parts = text.split(",")
    try:
        bounds = [tuple(int(v) for v in p.split(":")) for p in parts]
    except ValueError:
        bounds = []
    if len(bounds) != 3 or any(len(b) != 2 or not 0 <= b[0] < b[1] for b in bounds):
        raise ValueError(f"{owner}: crop must be 'x0:x1,y0:y1,z0:z1' with 0 <= start < stop, "
                         f"or 'none'; got {text!r}")
    return tuple(slice(a, b) for a, b in bounds)  # type: ignore[return-value]


def crop(path: Path, volume: np.ndarray, box: tuple[slice, slice, slice] | None) -> np.ndarray:
    """``volume[box]`` on the first three axes; a volume smaller than the box is an error."""
    if box is None:
        return volume
    for axis, s in enumerate(box):
        if s.stop > volume.shape[axis]:
            raise DataError(f"{path}: shape {volume.shape[:3]} is smaller than the crop "
                            f"{s.start}:{s.stop} on axis {axis}; set the dataset's crop option "
                            f"(e.g. -o DATASET.crop=none)")
    return volume[box]


def resize_slices(images: np.ndarray, masks: np.ndarray, size: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Resize ``float32[S,C,H,W]`` and ``bool[S,H,W]`` to ``size``×``size``.

    Images: area averaging along an axis that shrinks, bilinear along one that grows (area is
    exact averaging for downsampling; bilinear does not invent blocks when upsampling). Masks:
    nearest neighbour, so labels stay binary.
    """
    import torch
    import torch.nn.functional as F

    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images, masks
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    if size <= h and size <= w:
        x = F.interpolate(x, size=(size, size), mode="area")
    elif size >= h and size >= w:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    else:  # shrinks along one axis, grows along the other
        x = F.interpolate(x, size=(min(h, size), min(w, size)), mode="area")
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.uint8))[:, None]
    m = F.interpolate(m.float(), size=(size, size), mode="nearest")[:, 0] > 0.5
    return x.numpy(), m.numpy()


def brain_case(case_id: str, where: Path, images: list[tuple[Path, np.ndarray]],
               mask: np.ndarray, box: tuple[slice, slice, slice] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """The authors' BraTS preprocessing of one case: ``(float32[S,C,H,W], bool[S,H,W])``.

    ``images`` are 3-D modality volumes (path, array) of one shape. Each 2-D slice of each
    modality is min–max normalised on the full slice (background → exactly 0), then the
    volume is cropped to ``box``. This is the training view; nothing here is binarised.
    """
    shape = images[0][1].shape
    for path, volume in images[1:]:
        if volume.shape != shape:
            raise DataError(f"{path}: shape {volume.shape} differs from {images[0][0].name} "
                            f"{shape} in case {case_id} ({where})")
    volume = minmax_slices(np.stack([v for _, v in images], axis=-1))
    first = images[0][0]
    return to_slices(crop(first, volume, box)), mask_slices(crop(first, mask, box))


def binarized_view(path: Path, volume: np.ndarray, box: tuple[slice, slice, slice] | None,
                   threshold: float, value: float, channels: int) -> np.ndarray:
    """The authors' Grad-CAM input of one case: ``float32[S,channels,H,W]``.

    ``volume`` is one 3-D modality (FLAIR in the authors' code). Each slice is min–max
    normalised on the full slice in float64, cropped to ``box``, and every pixel ``>=
    threshold`` becomes ``value``, every other pixel 0 (``img[img < 0.8] = 0; img[img > 0] =
    255`` in brats_GradCAM_res34.py); the map is repeated over ``channels`` (the model's
    input channels).
    """
    normalised = minmax_slices(volume.astype(np.float64)[..., None])
    cropped = crop(path, normalised, box)[..., 0]  # [X,Y,Z]
    binary = np.where(cropped >= threshold, np.float32(value), np.float32(0.0))
    slices = np.ascontiguousarray(binary.transpose(2, 0, 1), dtype=np.float32)  # [Z,X,Y]
    return np.repeat(slices[:, None], channels, axis=1)
