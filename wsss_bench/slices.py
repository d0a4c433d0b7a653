"""All slices of a dataset in one place: images, masks, case id and slice index per slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.contracts import Case, Dataset
from wsss_bench.errors import UsageError


@dataclass(frozen=True)
class SliceSet:
    images: np.ndarray  # float32[N,C,H,W]
    masks: np.ndarray  # bool[N,H,W]
    case_ids: np.ndarray  # str[N]
    slice_index: np.ndarray  # int64[N]
    origin: str = ""  # where the slices came from (the slice-cache folder), for unit keys

    def __len__(self) -> int:
        return len(self.images)

    @property
    def labels(self) -> np.ndarray:
        """Image-level labels: 1 where the slice holds any lesion pixel."""
        return self.masks.any(axis=(1, 2)).astype(np.int64)

    def subset(self, index: np.ndarray) -> SliceSet:
        return SliceSet(self.images[index], self.masks[index], self.case_ids[index],
                        self.slice_index[index], self.origin)


def resize_case(case: Case, size: int) -> Case:
    """Resize to ``size``×``size``: images bilinear (antialiased), masks nearest."""
    if case.images.shape[-2:] == (size, size):
        return case
    images = F.interpolate(torch.from_numpy(case.images.astype(np.float32)), size=(size, size),
                           mode="bilinear", align_corners=False, antialias=True)
    masks = F.interpolate(torch.from_numpy(case.masks[:, None].astype(np.float32)),
                          size=(size, size), mode="nearest")[:, 0] > 0.5
    return Case(case.case_id, images.numpy(), masks.numpy())


def collect(dataset: Dataset, data_dir: Path | None, image_size: int | None = None) -> SliceSet:
    """Read every case of ``dataset`` into one SliceSet (optionally resized)."""
    if dataset.needs_data_dir and data_dir is None:
        raise UsageError(f"dataset {dataset.name!r} needs its files: pass --data-dir DIR")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder; pass the folder that holds "
                         f"the {dataset.name} cases")
    images, masks, case_ids, slice_index = [], [], [], []
    for case in dataset.cases(data_dir):
        if image_size is not None:
            case = resize_case(case, image_size)
        images.append(case.images.astype(np.float32, copy=False))
        masks.append(case.masks.astype(bool, copy=False))
        case_ids.extend([case.case_id] * len(case.images))
        slice_index.extend(range(len(case.images)))
    if not images:
        raise UsageError(f"dataset {dataset.name!r} found no cases under {data_dir}; "
                         f"check --data-dir")
    shapes = {im.shape[1:] for im in images}
    if len(shapes) > 1:
        raise UsageError(f"dataset {dataset.name!r} yields slices of several shapes {shapes}; "
                         f"pass --image-size N to resize them to N×N")
    return SliceSet(np.concatenate(images), np.concatenate(masks), np.asarray(case_ids),
                    np.asarray(slice_index, dtype=np.int64))
