"""All slices of a dataset in one place: images, masks, case id and slice index per slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from wsss_bench.contracts import Case, Dataset
from wsss_bench.errors import UsageError
from wsss_bench.guards import guarded_cases


@dataclass(frozen=True)
class SliceSet:
    images: np.ndarray  # float32[N,C,H,W]
    masks: np.ndarray  # bool[N,H,W]
    case_ids: np.ndarray  # str[N]
    slice_index: np.ndarray  # int64[N]
    origin: str = ""  # where the slices came from (the slice-cache folder), for unit keys
    cam_images: np.ndarray | None = None  # the CAM view (same shape as images), if any

    def __len__(self) -> int:
        return len(self.images)

    @property
    def cam_input(self) -> np.ndarray:
        """What the CAM methods see: the dataset's CAM view, else the training images."""
        return self.images if self.cam_images is None else self.cam_images

    @property
    def labels(self) -> np.ndarray:
        """Image-level labels: 1 where the slice holds any lesion pixel."""
        return self.masks.any(axis=(1, 2)).astype(np.int64)

    def subset(self, index: np.ndarray) -> SliceSet:
        return SliceSet(self.images[index], self.masks[index], self.case_ids[index],
                        self.slice_index[index], self.origin,
                        None if self.cam_images is None else self.cam_images[index])


def _resize_images(images: np.ndarray, size: int) -> np.ndarray:
    return F.interpolate(torch.from_numpy(images.astype(np.float32)), size=(size, size),
                         mode="bilinear", align_corners=False, antialias=True).numpy()


def _resize_view(view: np.ndarray, size: int) -> np.ndarray:
    """A CAM view resized: nearest neighbour when it holds at most two values (a binarised
    view, such as the authors' 0/255 FLAIR, stays binary), else as the images."""
    if len(np.unique(view)) > 2:
        return _resize_images(view, size)
    return F.interpolate(torch.from_numpy(view.astype(np.float32)), size=(size, size),
                         mode="nearest").numpy()


def resize_case(case: Case, size: int) -> Case:
    """Resize to ``size``×``size``: images bilinear (antialiased), masks nearest, a CAM view
    as :func:`_resize_view` says."""
    if case.images.shape[-2:] == (size, size):
        return case
    masks = F.interpolate(torch.from_numpy(case.masks[:, None].astype(np.float32)),
                          size=(size, size), mode="nearest")[:, 0] > 0.5
    cam = None if case.cam_images is None else _resize_view(case.cam_images, size)
    return Case(case.case_id, _resize_images(case.images, size), masks.numpy(), cam)


def collect(dataset: Dataset, data_dir: Path | None, image_size: int | None = None) -> SliceSet:
    """Read every case of ``dataset`` into one SliceSet (optionally resized)."""
    if dataset.needs_data_dir and data_dir is None:
        raise UsageError(f"dataset {dataset.name!r} needs its files: pass --data-dir DIR")
    if data_dir is not None and not Path(data_dir).is_dir():
        raise UsageError(f"--data-dir {data_dir}: no such folder; pass the folder that holds "
                         f"the {dataset.name} cases")
    images, masks, case_ids, slice_index, cams = [], [], [], [], []
    for case in guarded_cases(dataset, data_dir):
        if image_size is not None:
            case = resize_case(case, image_size)
        cams.append(case.cam_images)
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
                    np.asarray(slice_index, dtype=np.int64),
                    cam_images=join_cam_views(dataset.name, cams, dataset.cam_view))


def join_cam_views(dataset: str, views: list[np.ndarray | None], cam_view: bool
                   ) -> np.ndarray | None:
    """The cases' CAM views as one float32 array, or None when no case has one. A dataset
    whose cases do not all carry a CAM view as its declared ``cam_view`` says is an error
    naming it."""
    present = [v is not None for v in views]
    if any(p != cam_view for p in present):
        raise UsageError(f"dataset plugin {dataset!r} declares cam_view = {cam_view} but gave "
                         f"a CAM view for {sum(present)} of {len(views)} cases; it must give "
                         f"one for every case or for none, as declared (report this to the "
                         f"plugin's authors)")
    if not cam_view or not views:
        return None
    return np.concatenate([np.asarray(v, dtype=np.float32) for v in views])
