"""Threshold calibration: pick one CAM threshold per backbone on a grid, exactly.

(Over 300 lines because the exact one-pass histogram counts of every ensemble rule belong
together with the grid search they feed; splitting them would scatter one algorithm.)

A pixel is positive iff ``cam > t`` (strict; compared exactly, in float64), so ``t = 1.0``
gives an empty mask for CAMs in [0, 1]. CAMs outside a filter's region are zeroed first.
For M >= 2 backbones an ensemble combines the M binary masks. Every point of the product
grid is evaluated exactly and the best score wins; among equal scores the lowest grid index
in C order (first backbone's threshold first) wins.

No mask is built per grid point (README.md, section "Calibration: every grid point, exactly,
in one pass"). Each CAM value is quantized once to its bin ``b`` = the number of grid values
strictly below it, so that ``cam > t_i`` iff ``i < b`` (exactly as the float64 comparison
decides it); the confusion counts of every grid point then follow from histograms of the bins
and cumulative sums. With P pixels, M backbones, G grid values and N slices, per kind of
ensemble:

- one backbone, or an ensemble that ``fuses`` (the fused CAM gets ONE threshold): histogram of
  ``(b, gt)``, suffix sums. O(P + G).
- a ``pixel_rule`` (positive iff at least k of M backbones say so; and, or, vote): joint
  histogram of ``(b_1..b_M, gt)``; the count of "at least k of the events b_m > i_m" by
  inclusion-exclusion over subsets of backbones, each term an M-dimensional suffix sum.
  O(P·M + 2^M·(G+1)^M).
- ``slice_rule`` ("smallest" / "largest": per slice the mask with the fewest / most positive
  pixels, ties to the first backbone): per-slice per-backbone histograms give every slice's
  (tp, positives) at every threshold; per threshold tuple, the chosen backbone per slice.
  O(P·M + N·M·G^M).
- no declared rule (only ``combine``, e.g. a third-party ensemble): the generic direct method,
  exact and slow: each CAM is binarized once per grid value and every tuple is combined and
  counted. O(P·G^M).

The metrics need pooled counts (``paper_miou``, ``paper_dsc``, ``dice_pooled``), per-slice
counts (``dice_slice``) or per-case counts (``dice_volume``): the histograms are kept per group
of slices (one group, each slice, each case), groups in chunks so that memory stays bounded by
about ``_CHUNK_BYTES``. Pixels are processed in cache-sized blocks of slices. All counts are
int64 and all scores come from :mod:`wsss_bench.core.metrics`, vectorized over the grid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from wsss_bench.contracts import declared_problems, pixel_rule_count
from wsss_bench.core.metrics import (
    METRIC_NAMES,
    _as_bool,
    case_indices,
    confusion,
    dice_sum,
    metric_values,
    to_numpy,
)

# Memory budget (bytes) for the temporaries of one chunk of groups or slices.
_CHUNK_BYTES = 128 * 2**20
# Pixels (per backbone) quantized and counted at a time: keeps the temporaries in cache.
_BLOCK_PIXELS = 2**16



def threshold_grid(step: float = 0.1) -> np.ndarray:
    """The grid ``i/n`` for ``i = 0..n``, ``n = round(1/step)``; always holds 0.0 and 1.0."""
    if not (isinstance(step, (int, float, np.floating)) and 0.0 < step <= 1.0):
        raise ValueError(f"step must be in (0, 1], got {step!r}")
    n = round(1.0 / step)
    if abs(1.0 / step - n) > 1e-9:
        raise ValueError(f"1/step must be an integer, got step={step!r} (1/step = {1.0 / step})")
    return np.arange(n + 1, dtype=np.float64) / n


@dataclass(frozen=True)
class GridResult:
    """The chosen thresholds (one per backbone), their grid indices, the best score and all
    scores (one axis per backbone over the grid, shape ``(G,)*M``). An ensemble that fuses
    the CAMs has one threshold and 1-D scores."""

    thresholds: tuple[float, ...]
    index: tuple[int, ...]
    score: float
    scores: np.ndarray


class _Stack:
    """M arrays [N,H,W] (memory-mapped float16, say) seen as one [M,N,H,W], never stacked
    whole: ``stack[:, rows]`` stacks just those rows (as ``np.stack`` would: same dtype)."""

    ndim = 4

    def __init__(self, arrays: list[np.ndarray]) -> None:
        self.arrays = arrays
        self.dtype = np.result_type(*arrays)
        self.shape = (len(arrays), *arrays[0].shape)

    def __getitem__(self, key: tuple[slice, Any]) -> np.ndarray:
        _, rows = key
        return np.stack([np.asarray(a[rows]) for a in self.arrays]).astype(self.dtype,
                                                                           copy=False)


def _as_cams(cams: Any) -> np.ndarray | _Stack:
    """cams as [M,N,H,W]: an array, or a :class:`_Stack` of a sequence of M [N,H,W] arrays
    (not copied)."""
    if isinstance(cams, (list, tuple)) and cams and all(
            getattr(a, "ndim", 0) == 3 for a in cams):
        arrays = [to_numpy(a) for a in cams]
        if len({a.shape for a in arrays}) != 1:
            raise ValueError(f"cams of the backbones differ in shape: "
                             f"{[a.shape for a in arrays]}")
        c: np.ndarray | _Stack = _Stack(arrays)
    else:
        c = to_numpy(cams)
        if c.ndim == 3:
            c = c[None]
    if c.ndim != 4:
        raise ValueError(f"cams must be float[M,N,H,W] or float[N,H,W], got shape {c.shape}")
    if not (np.issubdtype(c.dtype, np.floating) or np.issubdtype(c.dtype, np.integer)):
        raise ValueError(f"cams must be real numbers, got {c.dtype}")
    return c


def _check_nan(c: np.ndarray | _Stack, slices: np.ndarray | None) -> None:
    """A ValueError when the slices ``slices`` (default all) of ``c`` hold NaN (read in
    chunks)."""
    if not np.issubdtype(c.dtype, np.floating) or not math.prod(c.shape):
        return
    rows = np.arange(c.shape[1]) if slices is None else slices
    step = _chunk_rows(c.shape, 4)
    for a in range(0, rows.size, step):
        if np.isnan(np.min(c[:, _rows(rows[a:a + step])])):
            raise ValueError("cams contain NaN")


def _chunk_rows(shape: tuple[int, ...], bytes_per_value: int) -> int:
    """Slices per chunk so that a [M,rows,H,W] temporary stays within ``_CHUNK_BYTES``."""
    return max(1, _CHUNK_BYTES // max(1, math.prod(shape[:1] + shape[2:]) * bytes_per_value))


def _rows(rows: np.ndarray) -> slice | np.ndarray:
    """``rows`` as a slice when consecutive (views, no copies), else as they are."""
    if rows.size and (rows.size == 1 or (np.diff(rows) == 1).all()):
        return slice(int(rows[0]), int(rows[-1]) + 1)
    return rows


def _slices(slices: Any, n: int) -> np.ndarray | None:
    """``slices`` (indices into the N slices, or None for all) as int64, checked."""
    if slices is None:
        return None
    s = np.asarray(to_numpy(slices))
    if s.dtype == np.bool_ or s.ndim != 1 or not (s.size == 0 or np.issubdtype(s.dtype,
                                                                               np.integer)):
        raise ValueError(f"slices must be a 1-D array of slice indices, got {s!r}")
    s = s.astype(np.int64, copy=False)
    if s.size and (s.min() < 0 or s.max() >= n):
        raise ValueError(f"slices must lie in 0..{n - 1}")
    return s


def _check_masks(cams: np.ndarray, region: Any, name: str = "region") -> np.ndarray | None:
    if region is None:
        return None
    r = _as_bool(region)
    if r.shape != cams.shape[1:]:
        raise ValueError(f"{name} shape {r.shape} does not match cams {cams.shape} ([M,N,H,W])")
    return r


def resolve_ensemble(ensemble: Any) -> Any:
    """An ensemble object as given (its declared attributes checked: a ValueError names what
    is wrong), None, or the registered ensemble of that name (a string)."""
    if isinstance(ensemble, str):
        from wsss_bench import load_registry

        return load_registry().ensembles.get_entry(ensemble).obj  # UsageError when unknown
    if ensemble is None:
        return None
    problems = declared_problems("ensembles", ensemble)
    if not callable(getattr(ensemble, "combine", None)):
        problems.insert(0, "it has no combine() method")
    if problems:
        raise ValueError(f"{getattr(ensemble, 'name', ensemble)!r} is not an ensemble "
                         f"(wsss_bench.contracts.Ensemble): {'; '.join(problems)}")
    return ensemble


def _combine(ensemble: Any, masks: np.ndarray) -> np.ndarray:
    out = np.asarray(ensemble.combine(masks))
    if out.shape != masks.shape[1:]:
        raise ValueError(
            f"ensemble {getattr(ensemble, 'name', ensemble)!r} returned shape {out.shape} for "
            f"masks {masks.shape}; expected {masks.shape[1:]}"
        )
    return out if out.dtype == np.bool_ else out != 0


def _fuse(ensemble: Any, cams: np.ndarray) -> np.ndarray:
    """``ensemble.fuse`` of float64 cams [M,n,H,W] (already region-zeroed), checked."""
    out = to_numpy(ensemble.fuse(cams))
    if out.shape != cams.shape[1:]:
        raise ValueError(
            f"ensemble {getattr(ensemble, 'name', ensemble)!r} fused cams {cams.shape} into "
            f"shape {out.shape}; expected {cams.shape[1:]}"
        )
    if not (np.issubdtype(out.dtype, np.floating) or np.issubdtype(out.dtype, np.integer)):
        raise ValueError(f"fused cams must be real numbers, got {out.dtype}")
    if out.dtype not in (np.float32, np.float64):
        out = out.astype(np.float64)
    if out.size and np.isnan(np.min(out)):
        raise ValueError(f"ensemble {getattr(ensemble, 'name', ensemble)!r} fused cams to NaN")
    return out


def _positive(cams: np.ndarray, region: np.ndarray | None) -> np.ndarray:
    """float64 copy of cams [M,n,H,W] with values outside ``region`` [n,H,W] set to 0."""
    c = np.array(cams, dtype=np.float64)
    if region is not None:
        c[:, ~region] = 0.0
    return c


def binarize(cams: Any, thresholds: Any, ensemble: Any = None, region: Any = None,
             slices: Any = None) -> np.ndarray:
    """Binary masks bool[N,H,W] from cams float[M,N,H,W] (or [N,H,W]) and their thresholds.

    Per backbone ``cams[m] > thresholds[m]`` after zeroing cams outside ``region``
    (bool[N,H,W]); M >= 2 masks are combined by ``ensemble.combine``. An ensemble that
    ``fuses``, given ONE threshold, thresholds the fused (region-zeroed) CAMs instead.
    ``ensemble`` may be a registered ensemble's name. ``cams`` may also be a sequence of M
    arrays [N,H,W] (memory-mapped, say: never stacked whole). ``slices`` (indices) gives the
    masks of those slices only, bool[len(slices),H,W]. Slices are processed in chunks, so the
    temporaries stay bounded (about ``_CHUNK_BYTES``) whatever N.
    """
    c = _as_cams(cams)
    rows = _slices(slices, c.shape[1])
    _check_nan(c, rows)
    ens = resolve_ensemble(ensemble)
    t = np.atleast_1d(np.asarray(to_numpy(thresholds), dtype=np.float64))
    m = c.shape[0]
    reg = _check_masks(c, region)
    fused = m >= 2 and ens is not None and ens.fuses and t.shape == (1,)
    if not fused and t.shape != (m,):
        raise ValueError(f"need {m} thresholds (one per backbone), got {t.shape}")
    if not fused and m >= 2 and ens is None:
        raise ValueError(f"{m} backbones need an ensemble to combine their masks")
    rows = np.arange(c.shape[1]) if rows is None else rows
    out = np.empty((rows.size, *c.shape[2:]), dtype=bool)
    step = _chunk_rows(c.shape, 8 + 1 + 1)  # the float64 copy, the masks, the combined mask
    for a in range(0, rows.size, step):
        idx = _rows(rows[a:a + step])
        part = _positive(c[:, idx], None if reg is None else reg[idx])
        if fused:
            out[a:a + step] = _fuse(ens, part) > t[0]
            continue
        masks = part > t[:, None, None, None]
        del part
        out[a:a + step] = masks[0] if m == 1 else _combine(ens, masks)
    return out


class _Grid:
    """A threshold grid, sorted, that quantizes CAM values exactly.

    ``bins(c)`` is the number of grid values strictly below each value of ``c``, so that
    ``c > values[i]`` (float64) iff ``i < bins(c)``. On the uniform grid ``values[i] = i/n``
    (what ``threshold_grid`` makes):

    - float32 c: ``c·n`` is exact in float64 (24 + 20 bits), so ``ceil(c·n)`` counts the
      exact fractions ``i/n`` below c; that equals the count of their float64 roundings below
      c when no float32 lies between ``i/n`` and ``values[i]``, checked once per grid.
    - otherwise ``j = rint(c·n)`` clipped to ``0..n`` is the grid point nearest to c up to
      rounding (far from every other grid point), and ``b = j + (c > values[j])`` exactly; the
      comparison is done in c's own float type against the smallest value above ``values[j]``.

    Other grids use a binary search.
    """

    def __init__(self, thresholds: np.ndarray) -> None:
        order = np.argsort(thresholds, kind="stable")
        self.values = thresholds[order]
        self.size = int(thresholds.size)
        self.pos = np.empty_like(order)  # pos[i]: the sorted position of grid index i
        self.pos[order] = np.arange(self.size)
        self.identity = bool(np.array_equal(order, np.arange(self.size)))
        n = self.size - 1
        uniform = 1 <= n < 2**20 and np.array_equal(self.values, np.arange(n + 1) / n)
        self.n = n if uniform else 0
        self.zero_bin = int(np.searchsorted(self.values, 0.0, side="left"))
        if uniform:
            f = self.values.astype(np.float32)
            above32 = np.where(f.astype(np.float64) > self.values, f,
                               np.nextafter(f, np.float32(np.inf)))
            self._above = {
                np.dtype(np.float32): above32,
                np.dtype(np.float64): np.nextafter(self.values, np.inf),
            }
        self.ceil32 = uniform and n <= 10_000 and self._ceil_is_exact_for_float32()

    def _ceil_is_exact_for_float32(self) -> bool:
        """No float32 lies between any fraction ``i/n`` and its float64 rounding."""
        for i, v in enumerate(self.values.tolist()):
            q, f = Fraction(i, self.n), Fraction(v)
            if f < q:  # the smallest float32 above v must be above i/n too
                up = np.float32(v)
                if float(up) <= v:
                    up = np.nextafter(up, np.float32(np.inf))
                if Fraction(float(up)) <= q:
                    return False
            elif f > q:  # the largest float32 up to v must be at most i/n
                down = np.float32(v)
                if float(down) > v:
                    down = np.nextafter(down, np.float32(-np.inf))
                if Fraction(float(down)) > q:
                    return False
        return True

    def bins(self, c: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """intp bins of the values ``c`` (any real dtype; compared as float64 would)."""
        if c.dtype not in (np.float32, np.float64):
            c = c.astype(np.float32 if c.dtype == np.float16 else np.float64)
        if out is None:
            out = np.empty(c.shape, dtype=np.intp)
        if not self.n:
            out[...] = np.searchsorted(self.values, c.astype(np.float64, copy=False), "left")
            return out
        if c.dtype == np.float32 and self.ceil32:
            r = np.multiply(c, self.n, dtype=np.float64)
            np.ceil(r, out=r)
            np.clip(r, 0, self.n + 1, out=r)
            np.copyto(out, r, casting="unsafe")
            return out
        r = np.multiply(c, c.dtype.type(self.n))
        np.rint(r, out=r)
        np.clip(r, 0, self.n, out=r)
        np.copyto(out, r, casting="unsafe")
        np.add(out, np.greater_equal(c, np.take(self._above[c.dtype], out)), out=out)
        return out


@dataclass
class _Data:
    """The validated inputs of one calibration."""

    cams: np.ndarray | _Stack  # [M,N,H,W]
    gt: np.ndarray  # bool[N,H,W]
    region: np.ndarray | None  # bool[N,H,W]
    grid: _Grid
    fuse: Any  # an ensemble whose fuse() makes ONE map, or None
    index: np.ndarray | None = None  # the calibrated slices (positions map through it)

    def rows(self, part: np.ndarray) -> slice | np.ndarray:
        """The slices at positions ``part`` (of the calibrated slices) as an index into the
        arrays: a slice when consecutive (views, no copies)."""
        return _rows(part if self.index is None else self.index[part])

    @property
    def hw(self) -> int:
        return self.cams.shape[2] * self.cams.shape[3]

    @property
    def m(self) -> int:
        """The number of maps that get a threshold (1 for a fusing ensemble)."""
        return 1 if self.fuse is not None else self.cams.shape[0]

    def blocks(self, sel: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, int, int]]:
        """For consecutive blocks ``sel[a:b]`` of slices: ``(bins int[m, pixels], gt
        bool[pixels], a, b)``; CAMs outside the region count as 0 (bin ``zero_bin``)."""
        hw, grid = self.hw, self.grid
        step = max(1, _BLOCK_PIXELS // max(hw, 1))
        for a in range(0, sel.size, step):
            b = min(sel.size, a + step)
            idx = self.rows(sel[a:b])
            cams = self.cams[:, idx]
            reg = None if self.region is None else self.region[idx]
            if self.fuse is not None:
                zeroed = _positive(cams, reg)
                cams = _fuse(self.fuse, zeroed)[None]
                reg = None
            flat = cams.reshape(cams.shape[0], -1)
            bins = np.empty(flat.shape, dtype=np.intp)
            for m in range(flat.shape[0]):
                grid.bins(flat[m], out=bins[m])
            if reg is not None:
                keep = reg.reshape(-1)
                if grid.zero_bin == 0:
                    np.multiply(bins, keep, out=bins)
                else:
                    bins[:, ~keep] = grid.zero_bin
            yield bins, self.gt[idx].reshape(-1), a, b


def _suffix(a: np.ndarray, axis: int) -> np.ndarray:
    """``out[i] = sum(a[i+1:])`` along ``axis`` (length shrinks by one)."""
    s = np.flip(np.cumsum(np.flip(a, axis), axis=axis), axis)
    return s[(slice(None),) * axis + (slice(1, None),)]


def _at_least_k(hist: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(tp, positives) int64[ng, G^M] of "positive iff >= k of the M events ``b_m > i_m``"
    from joint histograms ``hist`` int64[ng, (G+1)^M, 2] (last axis: gt).

    Inclusion-exclusion: #(at least k) = sum over subsets S with |S| >= k of
    ``(-1)^(|S|-k) C(|S|-1, k-1) N(S)``, N(S) = #(every event in S), a suffix sum over S.
    """
    ng, m = hist.shape[0], hist.ndim - 2
    g = hist.shape[1] - 1
    both = np.stack([hist.sum(axis=-1), hist[..., 1]])  # [2, ng, (G+1)^M]: positives, tp
    out = np.zeros((2, ng) + (g,) * m, dtype=np.int64)
    if k <= 0:  # every pixel is positive
        out += both.reshape(2, ng, -1).sum(axis=-1).reshape((2, ng) + (1,) * m)
        return out[1].reshape(ng, -1), out[0].reshape(ng, -1)
    for size in range(k, m + 1):  # none when k > M: no pixel is positive
        coef = (-1) ** (size - k) * math.comb(size - 1, k - 1)
        for subset in itertools.combinations(range(m), size):
            others = tuple(2 + j for j in range(m) if j not in subset)
            term = both.sum(axis=others, keepdims=True) if others else both
            for j in subset:
                term = _suffix(term, 2 + j)
            out += coef * term
    return out[1].reshape(ng, -1), out[0].reshape(ng, -1)


def _pixel_rule_counts(data: _Data, sel: np.ndarray, group: np.ndarray, ng: int,
                       k: int) -> tuple[np.ndarray, np.ndarray]:
    """(tp, positives) int64[ng, G^M] of a k-of-M ensemble (M = 1: the plain threshold)."""
    m, g1, hw = data.m, data.grid.size + 1, data.hw
    cells = g1**m * 2
    hist = np.zeros((ng, cells), dtype=np.int64)
    for bins, gt, a, b in data.blocks(sel):
        idx = bins[0]
        for j in range(1, m):
            idx *= g1
            idx += bins[j]
        idx *= 2
        idx += gt
        lo, hi = int(group[a]), int(group[b - 1]) + 1
        if hi - lo > 1:
            idx += np.repeat((group[a:b] - lo) * cells, hw)
        hist[lo:hi] += np.bincount(idx, minlength=(hi - lo) * cells).reshape(hi - lo, cells)
    return _at_least_k(hist.reshape((ng,) + (g1,) * m + (2,)), k)


def _slice_counts(data: _Data, sel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per slice of ``sel``, backbone and threshold: (positives, tp) int[n, M, G]."""
    m, g, hw = data.m, data.grid.size, data.hw
    cells = (g + 1) * 2
    hist = np.zeros((sel.size, m, cells), dtype=np.int64)
    offsets = np.repeat(np.arange(max(1, _BLOCK_PIXELS // max(hw, 1))) * cells, hw)
    for bins, gt, a, b in data.blocks(sel):
        base = offsets[: gt.size] + gt  # the slice's histogram, then the gt bit
        for j in range(m):
            idx = bins[j]
            idx *= 2
            idx += base
            hist[a:b, j] += np.bincount(idx, minlength=(b - a) * cells).reshape(b - a, cells)
    hist = hist.reshape(sel.size, m, g + 1, 2)
    small = np.int32 if hw < 2**31 else np.int64  # half the memory traffic below
    return _suffix(hist.sum(axis=-1), 2).astype(small), _suffix(hist[..., 1], 2).astype(small)


def _slice_rule_counts(data: _Data, sel: np.ndarray, group: np.ndarray, ng: int,
                       largest: bool) -> tuple[np.ndarray, np.ndarray]:
    """(tp, positives) int64[ng, G^M] when each slice takes the mask of the backbone with the
    most (``largest``) or fewest positive pixels, ties to the first backbone."""
    m, g = data.m, data.grid.size
    k = g**m
    tp = np.zeros((ng, k), dtype=np.int64)
    pp = np.zeros((ng, k), dtype=np.int64)
    span = max(1, _CHUNK_BYTES // (m * (g + 1) * 2 * 8 * 4))  # slices whose histograms fit
    rows = max(1, min(_CHUNK_BYTES, _BLOCK_PIXELS * 32) // (k * 4 * 8))  # cache-sized
    for s0 in range(0, sel.size, span):
        area, hits = _slice_counts(data, sel[s0:s0 + span])
        for a in range(0, area.shape[0], rows):
            b = min(area.shape[0], a + rows)

            def axis(x: np.ndarray, j: int, a: int = a, b: int = b) -> np.ndarray:
                shape = [b - a] + [1] * m
                shape[1 + j] = g
                return x[a:b, j].reshape(shape)

            best_area, best_hits = axis(area, 0), axis(hits, 0)
            for j in range(1, m):
                cand_area, cand_hits = axis(area, j), axis(hits, j)
                better = cand_area > best_area if largest else cand_area < best_area
                best_area = np.where(better, cand_area, best_area)
                best_hits = np.where(better, cand_hits, best_hits)
            part = group[s0 + a:s0 + b]
            starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
            for acc, x in ((tp, best_hits), (pp, best_area)):
                x = np.broadcast_to(x, (b - a,) + (g,) * m).reshape(b - a, k)
                if starts.size == 1:
                    acc[part[0]] += x.sum(axis=0, dtype=np.int64)
                else:
                    acc[part[starts]] += np.add.reduceat(x, starts, axis=0, dtype=np.int64)
    return tp, pp


def _generic_counts(data: _Data, sel: np.ndarray, group: np.ndarray, ng: int,
                    ensemble: Any) -> tuple[np.ndarray, np.ndarray]:
    """(tp, positives) int64[ng, G^M] of an ensemble with only ``combine``: every CAM is
    binarized once per grid value, every threshold tuple is combined and counted."""
    m, grid, hw = data.m, data.grid.values, data.hw
    combos = list(itertools.product(range(grid.size), repeat=m))
    k = len(combos)
    tp = np.zeros((ng, k), dtype=np.int64)
    pp = np.zeros((ng, k), dtype=np.int64)
    # Per slice: M*G mask bytes, M float64 CAMs, a stacked M-mask copy, the combined mask.
    per_slice = hw * (m * grid.size + 8 * m + m + 2) + 16 * k
    rows = max(1, _CHUNK_BYTES // max(per_slice, 1))
    backbones = np.arange(m)
    for a in range(0, sel.size, rows):
        b = min(sel.size, a + rows)
        part = data.rows(sel[a:b])
        cams = _positive(data.cams[:, part], None if data.region is None else data.region[part])
        masks = cams[:, None] > grid[None, :, None, None, None]  # [M,G,n,H,W]
        del cams
        gt = data.gt[part]
        hits = np.empty((b - a, k), dtype=np.int64)
        area = np.empty((b - a, k), dtype=np.int64)
        for ki, idx in enumerate(combos):
            pred = _combine(ensemble, masks[backbones, np.asarray(idx)])
            hits[:, ki] = np.count_nonzero(pred & gt, axis=(1, 2))
            area[:, ki] = np.count_nonzero(pred, axis=(1, 2))
        local = group[a:b]
        starts = np.flatnonzero(np.r_[True, local[1:] != local[:-1]])
        tp[local[starts]] += np.add.reduceat(hits, starts, axis=0)
        pp[local[starts]] += np.add.reduceat(area, starts, axis=0)
    return tp, pp


def _rule(ensemble: Any, m: int) -> tuple[str, Any]:
    """How to count an ensemble of m >= 2 backbones: ("fuse" | "pixel" | "slice" | "generic",
    its parameter)."""
    if ensemble.fuses:
        return "fuse", None
    if ensemble.pixel_rule is not None:
        return "pixel", pixel_rule_count(ensemble.pixel_rule, m)
    if ensemble.slice_rule is not None:
        return "slice", ensemble.slice_rule == "largest"
    return "generic", ensemble


def grid_search(
    cams: Any,
    gt: Any,
    *,
    ensemble: Any = None,
    thresholds: Any = None,
    metric: str = "paper_miou",
    case_ids: Any = None,
    region: Any = None,
    slices: Any = None,
) -> GridResult:
    """Evaluate every point of the product threshold grid exactly; return the best.

    ``cams`` float[M,N,H,W] (or [N,H,W] for one backbone), ``gt`` bool[N,H,W],
    ``ensemble`` an ensemble or a registered ensemble's name (needed for M >= 2),
    ``thresholds`` a 1-D grid (default ``threshold_grid(0.1)``), ``metric`` one of
    ``METRIC_NAMES``, ``case_ids`` the case of each slice (for ``dice_volume``), ``region``
    bool[N,H,W] (cams outside it are zeroed). Ties go to the lowest C-order grid index.
    An ensemble that ``fuses`` is calibrated with one threshold on the fused CAMs.

    ``cams`` may also be a sequence of M arrays [N,H,W] (memory-mapped, say), and ``slices``
    (indices) calibrates on those slices only, as if ``cams[:, slices]``, ``gt[slices]``,
    ``region[slices]`` and ``case_ids[slices]`` had been passed: nothing is stacked or
    subset whole, the pixels are read block by block.
    """
    c = _as_cams(cams)
    index = _slices(slices, c.shape[1])
    _check_nan(c, index)
    m, n, h, w = c.shape
    g = _as_bool(gt)
    if g.shape != (n, h, w):
        raise ValueError(f"gt shape {g.shape} does not match cams {c.shape} ([M,N,H,W])")
    reg = _check_masks(c, region)
    if index is not None:
        n = index.size
        if case_ids is not None:
            case_ids = np.asarray(to_numpy(case_ids))[index]
    values = threshold_grid(0.1) if thresholds is None else to_numpy(thresholds)
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
        raise ValueError(f"thresholds must be a non-empty finite 1-D grid, got {values!r}")
    if metric not in METRIC_NAMES:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRIC_NAMES}")
    ens = resolve_ensemble(ensemble)
    if m >= 2 and ens is None:
        raise ValueError(f"{m} backbones need an ensemble to combine their masks")
    if n == 0:
        raise ValueError("cannot calibrate on zero slices")
    case_index = case_indices(case_ids, n)

    kind, param = ("pixel", 1) if m == 1 else _rule(ens, m)
    grid = _Grid(values)
    data = _Data(c, g, reg, grid, ens if kind == "fuse" else None, index)
    if kind == "fuse":
        kind, param = "pixel", 1

    # Groups of slices whose counts a metric needs: all slices, each slice, or each case.
    if metric == "dice_slice":
        group = np.arange(n)
    elif metric == "dice_volume":
        group = case_index
    else:
        group = np.zeros(n, dtype=np.int64)
    n_groups = int(group.max()) + 1
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    bounds = np.searchsorted(sorted_group, np.arange(n_groups + 1))
    positives = np.zeros(n_groups, dtype=np.int64)
    gt_count = np.empty(n, dtype=np.int64)
    step = _chunk_rows((1, n, h, w), 1)
    for a in range(0, n, step):
        gt_count[a:a + step] = np.count_nonzero(g[data.rows(np.arange(a, min(n, a + step)))],
                                                axis=(1, 2))
    np.add.at(positives, group, gt_count)
    pixels = np.diff(bounds).astype(np.int64) * (h * w)

    dims = data.m
    k = grid.size**dims
    per_group = k * 8 * 12
    if kind == "pixel":
        per_group += (grid.size + 1) ** dims * 2 * 8 * 6
    chunk = max(1, _CHUNK_BYTES // per_group)
    pooled = metric not in ("dice_slice", "dice_volume")
    total = np.zeros(k)
    for g0 in range(0, n_groups, chunk):
        g1 = min(n_groups, g0 + chunk)
        sel = order[bounds[g0]:bounds[g1]]
        local = sorted_group[bounds[g0]:bounds[g1]] - g0
        if kind == "pixel":
            tp, pp = _pixel_rule_counts(data, sel, local, g1 - g0, param)
        elif kind == "slice":
            tp, pp = _slice_rule_counts(data, sel, local, g1 - g0, param)
        else:
            tp, pp = _generic_counts(data, sel, local, g1 - g0, param)
        counts = confusion(tp.T, pp.T, positives[g0:g1], pixels[g0:g1])  # [K, groups, 4]
        if pooled:
            total = metric_values(counts, metric)
        else:
            total += dice_sum(counts)
    scores = (total if pooled else total / n_groups).reshape((grid.size,) * dims)
    if not grid.identity:  # back from the sorted grid to the given order
        scores = scores[np.ix_(*[grid.pos] * dims)]

    best = int(np.argmax(scores))
    index = tuple(int(i) for i in np.unravel_index(best, scores.shape))
    return GridResult(
        thresholds=tuple(float(values[i]) for i in index),
        index=index,
        score=float(scores.flat[best]),
        scores=scores,
    )


def choose_across_folds(scores: list[np.ndarray], thresholds: Any) -> GridResult:
    """One threshold tuple for several folds: the grid point with the best mean score.

    ``scores`` are the folds' ``GridResult.scores`` (one grid each, same shape), ``thresholds``
    the 1-D grid they were computed on. This is the paper's Fig. 6 (the training grid averaged
    over the folds). Ties go to the lowest C-order grid index, as in :func:`grid_search`.
    """
    if not scores:
        raise ValueError("choose_across_folds needs the score grid of at least one fold")
    shapes = {s.shape for s in scores}
    if len(shapes) != 1:
        raise ValueError(f"the folds' score grids differ in shape: {sorted(shapes)}")
    values = np.asarray(to_numpy(thresholds), dtype=np.float64)
    mean = np.mean(np.stack(scores), axis=0)
    best = int(np.argmax(mean))
    index = tuple(int(i) for i in np.unravel_index(best, mean.shape))
    return GridResult(thresholds=tuple(float(values[i]) for i in index), index=index,
                      score=float(mean.flat[best]), scores=mean)
