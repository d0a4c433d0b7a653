"""Ensembles of the binary masks of M >= 2 backbones: the paper's four and two more.

Each ensemble implements ``combine(masks bool[M,B,H,W]) -> bool[B,H,W]`` (the contract), and
declares (class attributes, not options) its leaderboard ``symbol`` and its rule, so that
calibration can evaluate every threshold combination exactly from histograms instead of
binarising per grid point:

- ``pixel_rule``: a pixel is positive iff at least k of M backbones say so
  (``and``: "all" = M, ``or``: "any" = 1, ``vote``: "majority" = ceil(M/2));
- ``slice_rule = "smallest" | "largest"``: per slice, the mask of the backbone with the
  fewest / most positive pixels (ties: the first backbone);
- ``fuses = True`` and ``fuse(cams float[M,B,H,W]) -> float[B,H,W]``: the CAMs are fused
  first and thresholded with one threshold (``mean``).

A third-party ensemble that declares no rule (all None, ``fuses = False``) is calibrated by a
generic exact path through ``combine``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from wsss_bench import hookimpl
from wsss_bench.contracts import pixel_rule_count


def _bool(masks: np.ndarray) -> np.ndarray:
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 4 or masks.shape[0] < 1:
        raise ValueError(f"masks must be bool[M,B,H,W], got shape {masks.shape}")
    return masks


@dataclass(frozen=True)
class And:
    name: str = "and"
    description: str = "intersection: a pixel is lesion only if every backbone says so"
    symbol: ClassVar[str | None] = "and"
    pixel_rule: ClassVar[str | None] = "all"
    slice_rule: ClassVar[str | None] = None
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return np.logical_and.reduce(_bool(masks), axis=0)


@dataclass(frozen=True)
class Or:
    name: str = "or"
    description: str = "union: a pixel is lesion if any backbone says so"
    symbol: ClassVar[str | None] = "or"
    pixel_rule: ClassVar[str | None] = "any"
    slice_rule: ClassVar[str | None] = None
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return np.logical_or.reduce(_bool(masks), axis=0)


@dataclass(frozen=True)
class Vote:
    name: str = "vote"
    description: str = "majority: a pixel is lesion if at least half of the backbones say so"
    symbol: ClassVar[str | None] = "vote"
    pixel_rule: ClassVar[str | None] = "majority"  # ceil(M/2): ties count as positive
    slice_rule: ClassVar[str | None] = None
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        masks = _bool(masks)
        return masks.sum(axis=0) >= pixel_rule_count(self.pixel_rule, masks.shape[0])


def _pick(masks: np.ndarray, largest: bool) -> np.ndarray:
    masks = _bool(masks)
    area = masks.sum(axis=(2, 3))  # [M,B]
    choice = np.argmax(area, axis=0) if largest else np.argmin(area, axis=0)  # first on ties
    return masks[choice, np.arange(masks.shape[1])]


@dataclass(frozen=True)
class Smaller:
    name: str = "smaller"
    description: str = "the paper's '<': per slice, the mask with the fewest lesion pixels"
    symbol: ClassVar[str | None] = "<"
    pixel_rule: ClassVar[str | None] = None
    slice_rule: ClassVar[str | None] = "smallest"
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return _pick(masks, largest=False)


@dataclass(frozen=True)
class Bigger:
    name: str = "bigger"
    description: str = "the paper's '>': per slice, the mask with the most lesion pixels"
    symbol: ClassVar[str | None] = ">"
    pixel_rule: ClassVar[str | None] = None
    slice_rule: ClassVar[str | None] = "largest"
    fuses: ClassVar[bool] = False

    def combine(self, masks: np.ndarray) -> np.ndarray:
        return _pick(masks, largest=True)


@dataclass(frozen=True)
class Mean:
    """Fuses the CAMs (their mean) and thresholds the fused map with one threshold.

    ``combine`` (masks only) is the best a mask ensemble can do with it: a pixel is positive
    when at least half of the masks are, which equals thresholding the mean of the binary maps.
    """

    name: str = "mean"
    description: str = "mean of the CAMs, thresholded with one threshold"
    symbol: ClassVar[str | None] = "mean"
    pixel_rule: ClassVar[str | None] = None
    slice_rule: ClassVar[str | None] = None
    fuses: ClassVar[bool] = True

    def fuse(self, cams: np.ndarray) -> np.ndarray:
        return np.asarray(cams, dtype=np.float64).mean(axis=0)

    def combine(self, masks: np.ndarray) -> np.ndarray:
        masks = _bool(masks)
        return 2 * masks.sum(axis=0) >= masks.shape[0]


@hookimpl
def register_ensembles(register) -> None:
    for ensemble in (And(), Or(), Smaller(), Bigger(), Vote(), Mean()):
        register(ensemble)
