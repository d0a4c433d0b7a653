"""The plugin contracts: what each kind of plugin object must provide.

A plugin registers objects with a unique ``name`` and a one-line ``description``. The
Protocols below are structural: any object with these attributes and methods qualifies.
Arrays are NumPy unless a signature says ``torch.Tensor``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

KINDS = ("datasets", "backbones", "cams", "ensembles", "filters", "executors")


@dataclass(frozen=True)
class Case:
    """One patient: its 2-D slices after the dataset's preprocessing.

    ``images`` is float32[S,C,H,W], the training view: what the classifiers are trained on
    and what filters see. ``masks`` is bool[S,H,W] (True = lesion). ``cam_images``, when not
    None, is the CAM view: float32 of the same shape as ``images``, what the CAM methods are
    given instead of ``images`` (the authors' BraTS code trains on [FLAIR, T1ce, T2] and takes
    the Grad-CAM of binarised FLAIR). None means the CAMs see the training view.
    """

    case_id: str
    images: np.ndarray
    masks: np.ndarray
    cam_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise ValueError(
                f"case {self.case_id}: images must be [S,C,H,W] and masks [S,H,W], got "
                f"{self.images.shape} and {self.masks.shape}"
            )
        s, _, h, w = self.images.shape
        if self.masks.shape != (s, h, w):
            raise ValueError(
                f"case {self.case_id}: mask shape {self.masks.shape} does not match images "
                f"{self.images.shape}"
            )
        if self.cam_images is not None and self.cam_images.shape != self.images.shape:
            raise ValueError(
                f"case {self.case_id}: CAM view shape {self.cam_images.shape} does not match "
                f"the training view {self.images.shape}"
            )


@runtime_checkable
class Dataset(Protocol):
    """Finds cases under a root folder (``None`` for generated data) and yields them."""

    name: str
    description: str
    needs_data_dir: bool

    def cases(self, data_dir: Path | None) -> Iterator[Case]: ...


@dataclass(frozen=True)
class CaseFiles:
    """One case of a file-based dataset before decoding: its id and files by role
    (e.g. ``{"image": ..., "label": ...}`` or ``{"flair": ..., "seg": ...}``)."""

    case_id: str
    files: dict[str, Path]


@runtime_checkable
class FileDataset(Dataset, Protocol):
    """A dataset read from files. ``sources`` lists the cases (cheap: no decoding) and
    ``load`` decodes one; the core decodes cases in parallel worker processes and keeps the
    result in the slice cache, keyed by the dataset's options and every listed file's size and
    modification time. ``sources`` raises :class:`wsss_bench.volumes.MissingData` when the data
    is not there. Optional attributes: ``archive`` (a :class:`wsss_bench.download.Archive`, for
    data that may be downloaded) and ``cache_version`` (bump it when preprocessing changes).
    """

    def sources(self, data_dir: Path) -> list[CaseFiles]: ...

    def load(self, source: CaseFiles) -> Case: ...


@runtime_checkable
class Backbone(Protocol):
    """A classifier architecture and the layer whose activations CAMs are taken from.

    ``build`` may also accept ``output_stride`` (16 or 8: dilated last stages for finer CAMs);
    the runner passes it only when a run asks for a stride other than 32.
    """

    name: str
    description: str

    def build(self, in_chans: int, num_classes: int, pretrained: bool | str | Path
              ) -> nn.Module: ...

    def target_layer(self, model: nn.Module) -> nn.Module: ...


@runtime_checkable
class Cam(Protocol):
    """A class activation map method.

    ``cam(model, target_layer, images[B,C,H,W], target[B] | None) -> float[B,H,W]`` at input
    resolution, in [0, 1] (ReLU, then per-sample min-max; a flat map is all 0, never NaN),
    high = lesion. ``target=None`` means each sample's predicted class. Must leave no hooks
    and no parameter ``.grad`` behind.
    """

    name: str
    description: str

    def cam(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


@runtime_checkable
class Ensemble(Protocol):
    """Combines the binary masks of M >= 2 backbones: ``bool[M,B,H,W] -> bool[B,H,W]``."""

    name: str
    description: str

    def combine(self, masks: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Filter(Protocol):
    """The region of each slice where CAMs are kept: ``images[B,C,H,W] -> bool[B,H,W]``.

    A learned filter may also define ``fit(images, masks) -> Filter``: called with the fold's
    training slices only, it returns a new, fitted filter; the registered object is shared by
    every fold and must not change.
    """

    name: str
    description: str

    def region(self, images: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Executor(Protocol):
    """Where a stage's units run: ``run(stage, units, context)`` calls ``stage(unit, context)``
    once for every unit (in this process, in workers, on a cluster) and yields
    ``(unit, result)`` as each finishes, in any order; it stores nothing (the driver does).

    Units and the context are picklable; ``unit.portable()`` and ``context.portable(units)``
    give copies that need no shared filesystem, and ``context.on(device)`` one that computes on
    a worker's device. A unit that fails for good raises
    :class:`wsss_bench.executors.UnitFailed` (one line naming the unit) after every finished
    unit was yielded. Options are dataclass fields, set with ``-o NAME.field=value``.
    """

    name: str
    description: str

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]: ...
