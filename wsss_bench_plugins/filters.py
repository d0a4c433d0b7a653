"""Filters: the region of each slice in which CAM values are kept.

Every filter implements ``region(images float[B,C,H,W]) -> bool[B,H,W]`` (True = keep); the CAM
is zeroed outside the region before thresholding. The built-ins:

- ``none``: every pixel.
- ``center-box``: a centred box (the paper's filter for Decathlon, where the prostate sits in
  the middle of the slice).
- ``brain``: the brain, i.e. every pixel whose normalised intensity is above the background in
  some channel (BraTS slices are min–max normalised per slice, so the background is exactly 0).
- ``brain-band``: the brain minus a band of rows around the central row (the paper's filter for
  BraTS: tumours rarely lie on the midline between the hemispheres, which in BraTS' array
  layout — axis 0 = left–right = image rows — is the central row).
- ``learned-box``: a learned filter. ``fit(images, masks)`` on the fold's training slices
  returns a NEW, fitted filter that keeps the bounding box of all training lesion pixels,
  grown by a margin. The registered object is never changed (it is shared by every fold).

Centred spans (``center-box`` sides, the ``brain-band`` band): a fraction ``f`` of ``n`` pixels
is the run of indices ``start <= i < n - start`` with ``start = floor(n·(1-f)/2)``, i.e. the
shortest run of at least ``f·n`` pixels that has the parity of ``n`` and is therefore exactly
centred (as many pixels before it as after it). Examples: n=64, f=0.5 → 16..47; n=65, f=0.5 →
16..48; f=1 → all of 0..n-1. ``f = 0`` is the empty run.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from wsss_bench import hookimpl
from wsss_bench.options import option

_EPS = 1e-9  # tolerance for float rounding in n·(1-f)/2 (e.g. 20·(1-0.9) = 1.9999999999999996)


def _shape(images: np.ndarray) -> tuple[int, int, int, int]:
    shape = np.shape(images)
    if len(shape) != 4:
        raise ValueError(f"images must be float[B,C,H,W], got shape {shape}")
    return shape


def _fraction(owner: str, field: str, value: float, low_open: bool) -> None:
    """``value`` must be a number in (0, 1] (``low_open``) or [0, 1]."""
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
          and (0 < value <= 1 if low_open else 0 <= value <= 1))
    if not ok:
        interval = "(0, 1]" if low_open else "[0, 1]"
        raise ValueError(f"{owner}: {field} must be a fraction in {interval}, got {value!r}")


def centred_span(n: int, fraction: float) -> tuple[int, int]:
    """``(start, stop)``: the centred run ``start <= i < stop`` covering ``fraction`` of ``n``.

    ``stop = n - start`` (symmetric); its length is the smallest length ``>= fraction·n`` with
    the parity of ``n``. ``fraction <= 0`` gives an empty run; any ``fraction > 0`` keeps at
    least the centre pixel (odd ``n``) or the two centre pixels (even ``n``).
    """
    if fraction <= 0:
        return n // 2, n // 2
    start = min(math.floor(n * (1 - fraction) / 2 + _EPS), (n - 1) // 2)
    return max(start, 0), n - max(start, 0)


def _repeat(plane: np.ndarray, b: int) -> np.ndarray:
    """``plane bool[H,W]`` for each of ``b`` slices, as a fresh writable array."""
    return np.broadcast_to(plane, (b, *plane.shape)).copy()


@dataclass(frozen=True)
class NoFilter:
    name: str = "none"
    learned: ClassVar[bool] = False  # declared: no fit()
    description: str = "keep every pixel"

    def region(self, images: np.ndarray) -> np.ndarray:
        b, _, h, w = _shape(images)
        return np.ones((b, h, w), dtype=bool)


@dataclass(frozen=True)
class CenterBox:
    """Keep the centred box whose sides are ``side`` of the image's height and width.

    Rows ``centred_span(H, side)`` × columns ``centred_span(W, side)`` (see the module doc):
    64×64 with side 0.5 keeps rows and columns 16..47; 65×65 keeps 16..48; side 1 keeps all.
    """

    name: str = "center-box"
    learned: ClassVar[bool] = False  # declared: no fit()
    description: str = "keep a centred box of `side` × the image side (paper: Decathlon)"
    side: float = option(0.5, "side of the kept centred box as a fraction of the image's "
                              "height and width, in (0, 1]")

    def __post_init__(self) -> None:
        _fraction(self.name, "side", self.side, low_open=True)

    def region(self, images: np.ndarray) -> np.ndarray:
        b, _, h, w = _shape(images)
        (top, bottom), (left, right) = centred_span(h, self.side), centred_span(w, self.side)
        plane = np.zeros((h, w), dtype=bool)
        plane[top:bottom, left:right] = True
        return _repeat(plane, b)


@dataclass(frozen=True)
class Brain:
    """Keep the brain: pixels where any channel is ``> background``.

    The BraTS reader min–max normalises every slice, and the background of a BraTS volume is
    one constant (the volume's minimum), so the background is exactly 0 after normalisation.
    """

    name: str = "brain"
    learned: ClassVar[bool] = False  # declared: no fit()
    description: str = "keep the brain: any channel above `background` (BraTS, normalised)"
    background: float = option(0.0, "intensity a pixel must exceed in some channel to count "
                                    "as brain (normalised slices: background is 0)")

    def __post_init__(self) -> None:
        if (not isinstance(self.background, numbers.Real) or isinstance(self.background, bool)
                or not math.isfinite(self.background)):
            raise ValueError(f"{self.name}: background must be a finite number, "
                             f"got {self.background!r}")

    def region(self, images: np.ndarray) -> np.ndarray:
        _shape(images)
        return np.any(np.asarray(images) > self.background, axis=1)


@dataclass(frozen=True)
class BrainBand:
    """The brain (as ``brain``) minus the rows ``centred_span(H, width)``.

    H=240, width 0.1 removes rows 108..131 (24 rows); H=128 removes 57..70 (14 rows, the
    smallest even count >= 12.8); width 0 removes nothing (equals ``brain``); width 1 removes
    every row.
    """

    name: str = "brain-band"
    learned: ClassVar[bool] = False  # declared: no fit()
    description: str = ("the brain minus a band of `width` × the height around the central row "
                        "(paper: BraTS)")
    width: float = option(0.1, "height of the removed band of central rows as a fraction of "
                               "the image height, in [0, 1] (0 = brain)")
    background: float = option(0.0, "intensity a pixel must exceed in some channel to count "
                                    "as brain (normalised slices: background is 0)")

    def __post_init__(self) -> None:
        _fraction(self.name, "width", self.width, low_open=False)
        Brain(background=self.background)  # validates background

    def band(self, h: int) -> tuple[int, int]:
        """The removed rows ``start <= row < stop``."""
        return centred_span(h, self.width)

    def region(self, images: np.ndarray) -> np.ndarray:
        _, _, h, _ = _shape(images)
        keep = Brain(background=self.background).region(images)
        start, stop = self.band(h)
        keep[:, start:stop] = False
        return keep


@dataclass(frozen=True)
class LearnedBox:
    """The bounding box of the training lesions, grown by ``margin``: a learned filter.

    ``fit(images, masks)`` takes the fold's TRAINING slices and returns a NEW ``LearnedBox``
    holding the box (``self`` is not changed: the registered object is shared by every fold);
    ``region`` of that fitted copy keeps the box on every slice. The box: rows
    ``r0 - mr .. r1 + mr`` and columns ``c0 - mc .. c1 + mc`` (inclusive, clipped to the
    image), where ``r0..r1`` × ``c0..c1`` bounds every lesion pixel of every training slice and
    ``mr = floor(margin·H + 0.5)``, ``mc = floor(margin·W + 0.5)``. Training slices without any
    lesion pixel give nothing to learn from: the fitted filter then keeps every pixel.
    ``region`` on an unfitted filter raises RuntimeError; on slices of another size than the
    training slices, ValueError.
    """

    name: str = "learned-box"
    learned: ClassVar[bool] = True  # declared: fit() returns the fitted filter
    description: str = ("keep the bounding box of the training lesions grown by `margin` × the "
                        "side (fit on the training folds)")
    margin: float = option(0.05, "growth of the fitted lesion box on each side, as a fraction "
                                 "of the image height (rows) and width (columns), in [0, 1]")
    box: tuple[int, int, int, int] | None = None  # fitted: rows [top, bottom), cols [left, right)
    shape: tuple[int, int] | None = None  # fitted: the (H, W) of the training slices
    fixed_fields: ClassVar[tuple[str, ...]] = ("box", "shape")  # set by fit, not options

    def __post_init__(self) -> None:
        _fraction(self.name, "margin", self.margin, low_open=False)
        if (self.box is None) != (self.shape is None):
            raise ValueError(f"{self.name}: box and shape are set together (by fit)")
        if self.shape is not None:
            h, w = self.shape
            top, bottom, left, right = self.box
            if not (h > 0 and w > 0 and 0 <= top < bottom <= h and 0 <= left < right <= w):
                raise ValueError(f"{self.name}: box {self.box} does not fit shape {self.shape}")

    @property
    def fitted(self) -> bool:
        return self.box is not None

    def fit(self, images: np.ndarray, masks: np.ndarray) -> LearnedBox:
        """A fitted copy: the box of the lesions in ``masks`` (training slices only)."""
        n, _, h, w = _shape(images)
        masks = np.asarray(masks, dtype=bool)
        if masks.shape != (n, h, w):
            raise ValueError(f"{self.name}: masks must be bool[{n},{h},{w}] like the images, "
                             f"got shape {masks.shape}")
        rows, cols = np.flatnonzero(masks.any(axis=(0, 2))), np.flatnonzero(masks.any(axis=(0, 1)))
        if rows.size == 0:  # no lesion pixel to learn from: keep everything
            box = (0, h, 0, w)
        else:
            mr, mc = math.floor(self.margin * h + 0.5), math.floor(self.margin * w + 0.5)
            box = (max(int(rows[0]) - mr, 0), min(int(rows[-1]) + mr + 1, h),
                   max(int(cols[0]) - mc, 0), min(int(cols[-1]) + mc + 1, w))
        return dataclasses.replace(self, box=box, shape=(h, w))

    def region(self, images: np.ndarray) -> np.ndarray:
        b, _, h, w = _shape(images)
        if self.box is None:
            raise RuntimeError(f"{self.name}: region() before fit(); fit returns the fitted "
                               f"filter: fitted = filt.fit(train_images, train_masks), then "
                               f"fitted.region(images)")
        if (h, w) != self.shape:
            raise ValueError(f"{self.name}: fitted on {self.shape[0]}×{self.shape[1]} slices, "
                             f"got {h}×{w}")
        top, bottom, left, right = self.box
        plane = np.zeros((h, w), dtype=bool)
        plane[top:bottom, left:right] = True
        return _repeat(plane, b)


@hookimpl
def register_filters(register) -> None:
    for filt in (NoFilter(), CenterBox(), Brain(), BrainBand(), LearnedBox()):
        register(filt)
