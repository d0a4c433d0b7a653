"""The drawing layer of the figures: plain arrays and dataclasses in, one PNG out per call.

Every public function builds a :class:`matplotlib.figure.Figure` on an Agg canvas (never
pyplot: no display, no global figure registry), under matplotlib's default style (whatever the
user's matplotlibrc says), with a fixed layout in inches at :data:`DPI` dots per inch, and
writes the PNG atomically (:func:`wsss_bench.core.atomic.write_bytes`) without the
"Software" metadata: the same inputs give byte-identical files.

The sizes are fixed per figure kind and grow with the number of rows and panels; the
``*_size`` functions give them in pixels (width, height). All layout lengths are multiples of
1/4 inch so that the pixel sizes are exact.
"""

from __future__ import annotations

import functools
import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import style
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.path import Path as MplPath
from matplotlib.textpath import TextPath
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import Affine2D

from wsss_bench.core import atomic

DPI = 100
PANEL_KINDS = ("image", "truth", "cam", "mask")
RANK_KINDS = ("measured", "empty", "reported")

TRUTH_COLOUR = "#00ff00"  # ground-truth outline: bright green on grey, jet and red
MASK_RGBA = (1.0, 0.15, 0.15, 0.5)  # predicted mask: semi-transparent red
CAM_CMAP = "jet"
CAM_ALPHA = 0.5
HEAT_CMAP = "viridis"
CHOSEN_COLOUR = "#ff2020"

# overlays (inches)
_OV_TITLE, _OV_HEADER, _OV_LABEL, _OV_PANEL, _OV_CAPTION, _OV_PAD = 0.5, 0.5, 1.5, 2.0, 0.25, 0.25
# landscapes
_LS_TITLE, _LS_COLS = 0.5, 3
_LS1_W, _LS1_H = 7.5, 4.0  # the one curve panel, all grids in it, its legend at the right
_LS1_AXES_W = 3.9
_LS2_W, _LS2_H = 5.25, 4.75  # one heat map panel and room for a colour bar (one per figure)
_LS3_LEFT, _LS3_MAX_W, _LS3_RIGHT = 1.0, 14.0, 1.0  # a row of G small heat maps a grid
# training curves
_TC_TITLE, _TC_W, _TC_H = 0.5, 4.5, 3.0
# ranking
_RK_TOP, _RK_ROW, _RK_BOTTOM, _RK_W = 1.0, 0.25, 0.75, 9.0
_RK_LEFT, _RK_RIGHT = 3.0, 1.75


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True)
class OverlayPanel:
    """One panel of an overlay row.

    ``kind``: "image" (the grey image; ``data`` unused), "truth" (the image with the
    ground-truth outline; ``data`` unused), "cam" (``data`` float[H,W] in [0,1] as a colour map
    over the image, with the outline) or "mask" (``data`` bool[H,W] filled semi-transparently
    over the image, with the outline). A "cam" or "mask" panel without data is drawn as the
    image with "not available". ``caption`` (e.g. "Dice 0.43") is written under the panel.
    """

    title: str
    kind: str
    data: np.ndarray | None = None
    caption: str = ""


@dataclass(frozen=True)
class OverlaySlice:
    """One row of the overlays: ``image`` float[H,W] (shown in grey, min-max scaled per
    slice), ``gt`` bool[H,W] (its outline is drawn on "truth", "cam" and "mask" panels) and the
    panels, whose titles are the same for every slice of one figure (the column headers)."""

    label: str
    image: np.ndarray
    gt: np.ndarray
    panels: list[OverlayPanel] = field(default_factory=list)


@dataclass(frozen=True)
class LandscapeGrid:
    """The selection metric over the threshold grid of one fold (or the mean over folds):
    ``scores`` has shape ``(G,)*M`` (one axis per backbone, G thresholds), ``chosen`` the grid
    indices of the chosen thresholds (M of them) or None."""

    label: str
    scores: np.ndarray
    chosen: tuple[int, ...] | None = None


@dataclass(frozen=True)
class RankEntry:
    """One leaderboard row of a ranking: its score, its interval (``low``/``high``, both or
    neither) and its ``kind``: "measured", "empty" (the Empty baseline) or "reported" (the
    paper's reported number)."""

    name: str
    value: float
    low: float | None = None
    high: float | None = None
    kind: str = "measured"


# ----------------------------------------------------------------------------- shared


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _add_axes(fig: Figure, left: float, top: float, width: float, height: float) -> Axes:
    """Axes at ``left``/``top`` inches from the figure's left/top edge, ``width``×``height``."""
    fw, fh = fig.get_size_inches()
    return fig.add_axes((left / fw, 1.0 - (top + height) / fh, width / fw, height / fh))


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def _write(path: str | Path, build, *args, **kwargs) -> None:
    """Build the figure under the default style and write its PNG atomically to ``path``."""
    with style.context("default"):
        fig = build(*args, **kwargs)[0]
        data = _png_bytes(fig)
    atomic.write_bytes(Path(path), data)


def _pixels(width_in: float, height_in: float) -> tuple[int, int]:
    return round(width_in * DPI), round(height_in * DPI)


def _wrap(text: str, width: int) -> str:
    return "\n".join(textwrap.wrap(text, width)) if len(text) > width else text


def _short(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _quarter(inches: float) -> float:
    """Rounded up to a multiple of 1/4 inch (exact pixel sizes)."""
    return math.ceil(inches * 4 - 1e-9) / 4


def _fmt(value: float) -> str:
    return f"{value:g}"


# ----------------------------------------------------------------------------- overlays


def overlay_size(n_slices: int, n_panels: int) -> tuple[int, int]:
    """Pixel size (width, height) of :func:`overlays` with that many rows and columns."""
    width = _OV_LABEL + n_panels * _OV_PANEL + _OV_PAD
    height = _OV_TITLE + _OV_HEADER + n_slices * (_OV_PANEL + _OV_CAPTION) + _OV_PAD
    return _pixels(width, height)


def overlays(path: str | Path, slices: Sequence[OverlaySlice], title: str) -> None:
    """Write a grid of overlays (the paper's Fig. 5) to ``path``: one row per slice (its label
    at the row start), one column per panel (the panel titles as column headers)."""
    _write(path, _overlays_figure, slices, title)


def _grey(image: np.ndarray) -> np.ndarray:
    img = np.asarray(image, dtype=np.float64)
    finite = np.isfinite(img)
    if not finite.any():
        return np.zeros(img.shape)
    low, high = float(img[finite].min()), float(img[finite].max())
    out = np.where(finite, img, low) - low
    return out / (high - low) if high > low else np.zeros(img.shape)


def _outline(ax: Axes, gt: np.ndarray) -> None:
    if not gt.any() or gt.all():
        return
    h, w = gt.shape
    padded = np.pad(gt.astype(np.float32), 1)  # closes outlines that touch the border
    ax.contour(np.arange(-1, w + 1), np.arange(-1, h + 1), padded, levels=[0.5],
               colors=[TRUTH_COLOUR], linewidths=1.2)


def _check_slices(slices: Sequence[OverlaySlice]) -> list[str]:
    if not slices:
        raise ValueError("overlays need at least one slice")
    titles = [p.title for p in slices[0].panels]
    if not titles:
        raise ValueError("overlays need at least one panel per slice")
    for s in slices:
        if [p.title for p in s.panels] != titles:
            raise ValueError(f"slice {s.label!r} has panels {[p.title for p in s.panels]}, "
                             f"the first slice has {titles}: every slice needs the same panels")
        shape = np.shape(s.image)
        if len(shape) != 2 or np.shape(s.gt) != shape:
            raise ValueError(f"slice {s.label!r}: image {shape} and gt {np.shape(s.gt)} must "
                             f"be the same 2-D shape")
        for p in s.panels:
            if p.kind not in PANEL_KINDS:
                raise ValueError(f"panel {p.title!r}: kind {p.kind!r} is not one of "
                                 f"{', '.join(PANEL_KINDS)}")
            if p.kind in ("cam", "mask") and p.data is not None and np.shape(p.data) != shape:
                raise ValueError(f"slice {s.label!r}, panel {p.title!r}: data "
                                 f"{np.shape(p.data)} is not the image's shape {shape}")
    return titles


def _overlays_figure(slices: Sequence[OverlaySlice], title: str) -> tuple[Figure, list[list[Axes]]]:
    """The overlay figure and its image axes (one list per slice, one axes per panel)."""
    titles = _check_slices(slices)
    n_rows, n_cols = len(slices), len(titles)
    width = _OV_LABEL + n_cols * _OV_PANEL + _OV_PAD
    height = _OV_TITLE + _OV_HEADER + n_rows * (_OV_PANEL + _OV_CAPTION) + _OV_PAD
    fig = _new_figure(width, height)
    fig.text(0.5, 1 - 0.5 * _OV_TITLE / height, title, ha="center", va="center", fontsize=12)
    for c, name in enumerate(titles):
        x = (_OV_LABEL + (c + 0.5) * _OV_PANEL) / width
        y = 1 - (_OV_TITLE + 0.5 * _OV_HEADER) / height
        fig.text(x, y, _wrap(name, 26), ha="center", va="center", fontsize=9, weight="bold")
    rows: list[list[Axes]] = []
    gap = 0.05
    for r, s in enumerate(slices):
        top = _OV_TITLE + _OV_HEADER + r * (_OV_PANEL + _OV_CAPTION)
        fig.text((_OV_LABEL - 0.1) / width, 1 - (top + 0.5 * _OV_PANEL) / height,
                 _wrap(s.label, 20), ha="right", va="center", fontsize=8)
        grey = _grey(s.image)
        gt = np.asarray(s.gt, dtype=bool)
        h, w = grey.shape
        row: list[Axes] = []
        for c, panel in enumerate(s.panels):
            left = _OV_LABEL + c * _OV_PANEL
            ax = _add_axes(fig, left + gap, top + gap, _OV_PANEL - 2 * gap, _OV_PANEL - 2 * gap)
            ax.imshow(grey, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            missing = panel.kind in ("cam", "mask") and panel.data is None
            if panel.kind == "cam" and not missing:
                cam = np.clip(np.nan_to_num(np.asarray(panel.data, dtype=np.float64)), 0, 1)
                ax.imshow(cam, cmap=CAM_CMAP, vmin=0.0, vmax=1.0, alpha=CAM_ALPHA,
                          interpolation="nearest")
            elif panel.kind == "mask" and not missing:
                rgba = np.zeros((h, w, 4))
                rgba[np.asarray(panel.data, dtype=bool)] = MASK_RGBA
                ax.imshow(rgba, interpolation="nearest")
            if panel.kind != "image":
                _outline(ax, gt)
            if missing:
                ax.text(0.5, 0.5, "not available", transform=ax.transAxes, ha="center",
                        va="center", fontsize=9, color="white",
                        bbox={"facecolor": "black", "alpha": 0.6, "edgecolor": "none"})
            ax.set_xlim(-0.5, w - 0.5)
            ax.set_ylim(h - 0.5, -0.5)
            ax.set_axis_off()
            if panel.caption:
                fig.text((left + 0.5 * _OV_PANEL) / width,
                         1 - (top + _OV_PANEL + 0.5 * _OV_CAPTION) / height,
                         _short(panel.caption, 30), ha="center", va="center", fontsize=8)
            row.append(ax)
        rows.append(row)
    return fig, rows


# ----------------------------------------------------------------------------- landscapes


def mosaic_column(g: int, k: int, j: int) -> int:
    """M = 3: the data column, in a grid's one heat-map axes, of cell column ``j`` of the
    panel of third threshold index ``k`` (the G panels side by side, one empty column
    between)."""
    return k * (g + 1) + j


def _mosaic_columns(g: int) -> int:
    return g * g + g - 1


def _mosaic_cell(g: int) -> float:
    """M = 3: the side of one cell in inches (the G panels fit in 14 inches)."""
    return min(0.3, _LS3_MAX_W / _mosaic_columns(g))


def _landscape_layout(n_grids: int, m: int, g: int) -> tuple[float, float, int, float]:
    """(width, height) in inches, the number of panel columns (M = 1, 2) and the height of
    one grid's row."""
    if m == 3:
        cell = _mosaic_cell(g)
        row_h = _quarter(g * cell + 1.0)
        width = _quarter(_LS3_LEFT + _mosaic_columns(g) * cell + _LS3_RIGHT)
        return width, _LS_TITLE + n_grids * row_h, 1, row_h
    if m == 1:
        return _LS1_W, _LS_TITLE + _LS1_H, 1, _LS1_H
    cols = min(n_grids, _LS_COLS)
    rows = math.ceil(n_grids / cols)
    return cols * _LS2_W, _LS_TITLE + rows * _LS2_H, cols, _LS2_H


def landscape_size(n_grids: int, m: int, g: int) -> tuple[int, int]:
    """Pixel size (width, height) of :func:`landscape` for ``n_grids`` grids of M backbones
    over G thresholds (M = 1: one panel for all grids; M = 2: up to 3 panels a row; M = 3:
    one row a grid, its G panels side by side within 14 inches)."""
    width, height, _, _ = _landscape_layout(n_grids, m, g)
    return _pixels(width, height)


def landscape(path: str | Path, grids: Sequence[LandscapeGrid], thresholds: Sequence[float],
              names: Sequence[str], metric: str, title: str,
              cell_values: bool | None = None) -> None:
    """Write the threshold landscape (the paper's Fig. 6) of one ensemble to ``path``: the
    grids per fold and their mean. ``names``: the M backbones (the axes), ``metric``: the
    score's name. M = 1: one panel, one curve per grid over the thresholds, each grid's chosen
    point starred, the last grid (the mean) in black; M = 2: a heat map per grid (rows: the
    first backbone's threshold, increasing upwards; columns: the second's), the values in the
    cells (G <= 15), the chosen cell outlined, one colour bar for all (they share the scale);
    M = 3: one small heat map per value of the third threshold, side by side. Other M:
    ValueError. ``cell_values``: write the values in the M = 2 cells (default: when G <= 15)."""
    _write(path, _landscape_figure, grids, thresholds, names, metric, title, cell_values)


def _check_grids(grids: Sequence[LandscapeGrid], thresholds: Sequence[float],
                 names: Sequence[str]) -> tuple[int, int, list[np.ndarray]]:
    if not grids:
        raise ValueError("a landscape needs at least one grid")
    g, m = len(thresholds), len(names)
    if g < 1:
        raise ValueError("a landscape needs at least one threshold")
    if m not in (1, 2, 3):
        raise ValueError(f"a landscape draws 1, 2 or 3 backbones (thresholds), got {m} names")
    arrays = []
    for grid in grids:
        scores = np.asarray(grid.scores, dtype=np.float64)
        if scores.shape != (g,) * m:
            raise ValueError(f"grid {grid.label!r} has shape {scores.shape}; with {g} "
                             f"thresholds and {m} backbones ({', '.join(names)}) it must be "
                             f"{(g,) * m}")
        if grid.chosen is not None and (len(grid.chosen) != m
                                        or not all(0 <= int(i) < g for i in grid.chosen)):
            raise ValueError(f"grid {grid.label!r}: chosen {grid.chosen} is not {m} indices in "
                             f"0..{g - 1}")
        arrays.append(scores)
    return g, m, arrays


def _value_range(arrays: list[np.ndarray]) -> tuple[float, float]:
    values = np.concatenate([a.ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return 0.0, 1.0
    low, high = float(values.min()), float(values.max())
    return (low - 0.5, high + 0.5) if high <= low else (low, high)


def _chosen_text(grid: LandscapeGrid, scores: np.ndarray, thresholds: Sequence[float]) -> str:
    if grid.chosen is None:
        return grid.label
    where = ", ".join(_fmt(thresholds[i]) for i in grid.chosen)
    return f"{grid.label}: chosen ({where}) = {scores[tuple(grid.chosen)]:.3f}"


def _ticks(ax: Axes, thresholds: Sequence[float], size: float) -> None:
    """Threshold values as the tick labels of both axes (at most 11 of them)."""
    g = len(thresholds)
    idx = list(range(0, g, max(1, math.ceil(g / 11))))
    labels = [_fmt(thresholds[i]) for i in idx]
    ax.set_xticks(idx, labels, fontsize=size)
    ax.set_yticks(idx, labels, fontsize=size)


@functools.lru_cache(maxsize=1024)
def _glyphs(text: str, size: float) -> MplPath:
    """The outline of ``text`` in DejaVu Sans at ``size`` points, centred on (0, 0)."""
    path = TextPath((0, 0), text, prop=FontProperties(family="DejaVu Sans", size=size))
    low, high = path.vertices.min(axis=0), path.vertices.max(axis=0)
    return MplPath(path.vertices - (low + high) / 2, path.codes)


def _cell_values(ax: Axes, scores: np.ndarray, norm: Normalize, size: float) -> None:
    """The values (2 decimals) centred in the cells, white on dark cells, black on light ones:
    one collection of glyph outlines (a Text per cell costs ~3 ms to draw)."""
    paths, offsets, colours = [], [], []
    cmap = matplotlib.colormaps[HEAT_CMAP]
    for (i, j), v in np.ndenumerate(scores):
        if not np.isfinite(v):
            continue
        r, g, b, _ = cmap(norm(v))
        paths.append(_glyphs(f"{v:.2f}", size))
        offsets.append((j, i))
        colours.append("white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
    if paths:
        ax.add_collection(PathCollection(
            paths, offsets=offsets, offset_transform=ax.transData, facecolors=colours,
            edgecolors="none", transform=Affine2D().scale(ax.figure.dpi / 72.0), zorder=3),
            autolim=False)


def _heat(ax: Axes, scores: np.ndarray, norm: Normalize, cells: bool, text_size: float):
    """One heat map, rows = first axis (origin lower), columns = second; the values in the
    cells when ``cells``."""
    image = ax.imshow(np.ma.masked_invalid(scores), cmap=HEAT_CMAP, norm=norm, origin="lower",
                      aspect="auto", interpolation="nearest")
    if cells:
        _cell_values(ax, scores, norm, text_size)
    return image


def _mark_cell(ax: Axes, row: int, col: int) -> None:
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), 1, 1, fill=False, edgecolor=CHOSEN_COLOUR,
                           linewidth=2.5, clip_on=False, zorder=5))


def cell_box(ax: Axes, row: int, col: int) -> tuple[float, float, float, float]:
    """The pixel box (x0, y0, x1, y1; origin at the image's top-left, as in a decoded PNG) of
    the heat-map cell (``row``, ``col``) of ``ax`` in a figure drawn by this module."""
    ax.apply_aspect()
    fig_h = ax.figure.bbox.height
    (x0, y0), (x1, y1) = ax.transData.transform([(col - 0.5, row - 0.5), (col + 0.5, row + 0.5)])
    xs, ys = sorted((x0, x1)), sorted((fig_h - y0, fig_h - y1))
    return xs[0], ys[0], xs[1], ys[1]


def _landscape_figure(grids: Sequence[LandscapeGrid], thresholds: Sequence[float],
                      names: Sequence[str], metric: str, title: str,
                      cell_values: bool | None = None) -> tuple[Figure, list[Axes]]:
    """The landscape figure and its data axes, one per grid (M = 1: the same axes for every
    grid, its curves labelled with the grids' labels; M = 3: the G panels side by side in one
    axes, see :func:`mosaic_column`)."""
    g, m, arrays = _check_grids(grids, thresholds, names)
    width, height, cols, row_h = _landscape_layout(len(grids), m, g)
    fig = _new_figure(width, height)
    fig.text(0.5, 1 - 0.5 * _LS_TITLE / height, title, ha="center", va="center", fontsize=12)
    low, high = _value_range(arrays)
    norm = Normalize(vmin=low, vmax=high)
    cells = g <= 15 if cell_values is None else cell_values
    out: list[Axes] = []
    for n, (grid, scores) in enumerate(zip(grids, arrays, strict=True)):
        if m == 1:
            if not out:
                ax = _add_axes(fig, 0.85, _LS_TITLE + 0.4, _LS1_AXES_W, _LS1_H - 1.15)
                pad = 0.05 * (high - low)
                ax.set_ylim(low - pad, high + pad)
                ax.set_xlabel(f"{_short(names[0], 30)} threshold", fontsize=8)
                ax.set_ylabel(metric, fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(True, alpha=0.3)
            ax = out[0] if out else ax
            last = n == len(grids) - 1 and len(grids) > 1
            colour = "black" if last else _fold_colour(n)
            ax.plot(list(thresholds), scores, marker="o", markersize=3, color=colour,
                    linewidth=2.0 if last else 1.2, label=_chosen_text(grid, scores, thresholds))
            if grid.chosen is not None:
                i = int(grid.chosen[0])
                ax.plot([thresholds[i]], [scores[i]], marker="*", markersize=13,
                        color=colour, markeredgecolor=CHOSEN_COLOUR, linestyle="none",
                        zorder=5)
            out.append(ax)
            if n == len(grids) - 1:
                curves = [line for line in ax.lines if line.get_marker() == "o"]
                ax.legend(curves, [_wrap(c.get_label(), 32) for c in curves], loc="upper left",
                          bbox_to_anchor=(1.02, 1.0), fontsize=7, frameon=False)
        elif m == 2:
            left, top = (n % cols) * _LS2_W, _LS_TITLE + (n // cols) * _LS2_H
            side = _LS2_H - 1.25
            ax = _add_axes(fig, left + 0.85, top + 0.4, side, side)
            image = _heat(ax, scores, norm, cells, min(8.0, 70.0 / g))
            if grid.chosen is not None:
                _mark_cell(ax, int(grid.chosen[0]), int(grid.chosen[1]))
            _ticks(ax, thresholds, 7)
            ax.set_ylabel(f"{_short(names[0], 30)} threshold", fontsize=8)
            ax.set_xlabel(f"{_short(names[1], 30)} threshold", fontsize=8)
            ax.set_title(_chosen_text(grid, scores, thresholds), fontsize=9)
            if n == min(len(grids), cols) - 1:  # one bar, beside the first row's last panel
                cax = _add_axes(fig, left + 0.85 + side + 0.1, top + 0.4, 0.12, side)
                bar = fig.colorbar(image, cax=cax)
                bar.set_label(metric, fontsize=8)
                bar.ax.tick_params(labelsize=7)
            out.append(ax)
        else:
            top = _LS_TITLE + n * row_h
            cell = _mosaic_cell(g)
            fig.text(0.1 / width, 1 - (top + 0.05) / height, _chosen_text(grid, scores,
                     thresholds), ha="left", va="top", fontsize=9, weight="bold")
            ax = _add_axes(fig, _LS3_LEFT, top + 0.55, _mosaic_columns(g) * cell, g * cell)
            mosaic = np.full((g, _mosaic_columns(g)), np.nan)
            for k in range(g):
                mosaic[:, mosaic_column(g, k, 0): mosaic_column(g, k, 0) + g] = scores[:, :, k]
                ax.text(mosaic_column(g, k, 0) + (g - 1) / 2, 1.03, _fmt(thresholds[k]),
                        transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=6)
            ax.text(-0.01, 1.03, f"{_short(names[2], 20)} =", transform=ax.transAxes,
                    ha="right", va="bottom", fontsize=6)
            image = _heat(ax, mosaic, norm, False, 6)
            if grid.chosen is not None:
                i, j, k = (int(v) for v in grid.chosen)
                _mark_cell(ax, i, mosaic_column(g, k, j))
            step = max(1, math.ceil(g / 6))
            idx = list(range(0, g, step))
            ax.set_xticks(idx, [_fmt(thresholds[i]) for i in idx], fontsize=5, rotation=90)
            ax.set_yticks(idx, [_fmt(thresholds[i]) for i in idx], fontsize=5)
            ax.set_xlabel(f"{_short(names[1], 30)} threshold (each panel)", fontsize=7,
                          loc="left")
            ax.set_ylabel(f"{_short(names[0], 18)}", fontsize=7)
            for spine in ax.spines.values():
                spine.set_visible(False)
            cax = _add_axes(fig, _LS3_LEFT + _mosaic_columns(g) * cell + 0.15, top + 0.55, 0.1,
                            g * cell)
            bar = fig.colorbar(image, cax=cax)
            bar.set_label(metric, fontsize=7)
            bar.ax.tick_params(labelsize=6)
            out.append(ax)
    return fig, out


# ----------------------------------------------------------------------------- training curves


def training_size(n_backbones: int) -> tuple[int, int]:
    """Pixel size (width, height) of :func:`training_curves` for that many backbones."""
    return _pixels(2 * _TC_W, _TC_TITLE + n_backbones * _TC_H)


def training_curves(path: str | Path, histories: dict[str, list[list[dict[str, float]]]],
                    title: str) -> None:
    """Write the training curves (the paper's Figs. 7-8) to ``path``: one row per backbone
    (``histories``: backbone name -> one list per fold of per-epoch dicts with train_loss,
    val_loss, train_accuracy, val_accuracy), a loss and an accuracy panel; train solid,
    validation dashed, one colour per fold, x = epoch 1..E. Missing keys (old data) are left
    out and the panel title says so."""
    _write(path, _training_figure, histories, title)


_TrainLines = dict[tuple[str, int, str], Line2D]


def _fold_colour(k: int):
    return matplotlib.colormaps["tab10"](k % 10)


def _training_figure(histories: dict[str, list[list[dict[str, float]]]], title: str
                     ) -> tuple[Figure, _TrainLines]:
    """The training-curve figure and its lines: (backbone, fold, key) -> Line2D."""
    if not histories:
        raise ValueError("training curves need at least one backbone's history")
    width, height = 2 * _TC_W, _TC_TITLE + len(histories) * _TC_H
    fig = _new_figure(width, height)
    fig.text(0.5, 1 - 0.5 * _TC_TITLE / height, title, ha="center", va="center", fontsize=12)
    lines: _TrainLines = {}
    for r, (backbone, folds) in enumerate(histories.items()):
        top = _TC_TITLE + r * _TC_H
        for c, label in enumerate(("loss", "accuracy")):
            ax = _add_axes(fig, c * _TC_W + 0.75, top + 0.35, _TC_W - 1.0, _TC_H - 1.0)
            missing_val = False
            drawn = False
            for k, epochs in enumerate(folds):
                x = np.arange(1, len(epochs) + 1)
                for split, dash in (("train", "-"), ("val", "--")):
                    key = f"{split}_{label}"
                    y = [float(e[key]) if key in e else np.nan for e in epochs]
                    if not epochs or all(key not in e for e in epochs):
                        missing_val |= split == "val"
                        continue
                    (line,) = ax.plot(x, y, linestyle=dash, color=_fold_colour(k),
                                      linewidth=1.2, marker="o" if len(x) <= 30 else None,
                                      markersize=2.5)
                    lines[(backbone, k, key)] = line
                    drawn = True
            name = _short(backbone, 36)
            note = ""
            if not drawn:
                note = f" (no {label} stored)"
            elif missing_val:
                note = f" (no validation {label} stored)"
            ax.set_title(f"{name}: {label}{note}", fontsize=9)
            ax.set_xlabel("epoch", fontsize=8)
            ax.set_ylabel(label, fontsize=8)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.tick_params(labelsize=7)
            ax.grid(True, alpha=0.3)
            if label == "accuracy":
                ax.set_ylim(-0.02, 1.02)
            if c == 0 and folds:
                handles = [Line2D([], [], color=_fold_colour(k), label=f"fold {k}")
                           for k in range(len(folds))]
                handles.append(Line2D([], [], color="black", linestyle="-", label="train"))
                if any(key[0] == backbone and key[2] == "val_loss" for key in lines):
                    handles.append(Line2D([], [], color="black", linestyle="--", label="val"))
                ax.legend(handles=handles, fontsize=6, loc="upper right", ncol=2,
                          framealpha=0.8)
    return fig, lines


# ----------------------------------------------------------------------------- ranking


def ranking_size(n_entries: int) -> tuple[int, int]:
    """Pixel size (width, height) of :func:`ranking` with that many entries."""
    return _pixels(_RK_W, _RK_TOP + max(n_entries, 1) * _RK_ROW + _RK_BOTTOM)


def ranking(path: str | Path, entries: Sequence[RankEntry], metric: str, title: str,
            higher_is_better: bool = True) -> None:
    """Write a ranking to ``path``: each entry's score (dot) and interval (bar, when it has
    one), sorted with the best at the top (NaN last), Empty and reported rows marked by colour
    and marker, a legend of the kinds, the value and interval written at the right."""
    _write(path, _ranking_figure, entries, metric, title, higher_is_better)


_RANK_STYLE = {
    "measured": {"color": "#1f77b4", "marker": "o", "label": "measured"},
    "empty": {"color": "#7f7f7f", "marker": "s", "label": "Empty (predicts no lesion)"},
    "reported": {"color": "#ff7f0e", "marker": "D", "label": "reported by the paper"},
}


def _rank_order(entries: Sequence[RankEntry], higher_is_better: bool) -> list[RankEntry]:
    def key(e: RankEntry):
        v = float(e.value)
        bad = not math.isfinite(v)
        return (bad, 0.0 if bad else (-v if higher_is_better else v), e.name, e.kind)

    return sorted(entries, key=key)


def _ranking_figure(entries: Sequence[RankEntry], metric: str, title: str,
                    higher_is_better: bool = True) -> tuple[Figure, list[RankEntry]]:
    """The ranking figure and the entries in drawn order, top first (row i at y = n-1-i)."""
    for e in entries:
        if e.kind not in RANK_KINDS:
            raise ValueError(f"entry {e.name!r}: kind {e.kind!r} is not one of "
                             f"{', '.join(RANK_KINDS)}")
        if (e.low is None) != (e.high is None):
            raise ValueError(f"entry {e.name!r}: give both low and high, or neither")
    order = _rank_order(entries, higher_is_better)
    n = len(order)
    width, height = _RK_W, _RK_TOP + max(n, 1) * _RK_ROW + _RK_BOTTOM
    fig = _new_figure(width, height)
    fig.text(0.5, 1 - 0.35 / height, title, ha="center", va="center", fontsize=12)
    ax = _add_axes(fig, _RK_LEFT, _RK_TOP, width - _RK_LEFT - _RK_RIGHT, max(n, 1) * _RK_ROW)
    seen: list[str] = []
    for i, e in enumerate(order):
        y = n - 1 - i
        st = _RANK_STYLE[e.kind]
        if e.low is not None and e.high is not None:
            ax.plot([e.low, e.high], [y, y], color=st["color"], linewidth=1.6,
                    solid_capstyle="butt")
            ax.plot([e.low, e.high], [y, y], color=st["color"], linestyle="none", marker="|",
                    markersize=6)
            text = f"{e.value:.3f} [{e.low:.3f}, {e.high:.3f}]"
        else:
            text = f"{e.value:.3f}"
        ax.plot([e.value], [y], color=st["color"], marker=st["marker"], markersize=5,
                linestyle="none", zorder=4)
        ax.text(1.02, y, text, transform=ax.get_yaxis_transform(), ha="left", va="center",
                fontsize=7, color=st["color"])
        if e.kind == "empty" and math.isfinite(float(e.value)):
            ax.axvline(float(e.value), color=st["color"], linestyle=":", linewidth=0.8)
        if e.kind not in seen:
            seen.append(e.kind)
    ax.set_yticks(range(n), [_short(e.name, 60) for e in reversed(order)], fontsize=7)
    ax.set_ylim(-0.6, max(n, 1) - 0.4)
    ax.set_xlabel(f"{metric} ({'higher' if higher_is_better else 'lower'} is better)",
                  fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(True, axis="x", alpha=0.3)
    if n == 0:
        ax.text(0.5, 0.5, "no entries", transform=ax.transAxes, ha="center", va="center")
    handles = [Line2D([], [], color=_RANK_STYLE[k]["color"], marker=_RANK_STYLE[k]["marker"],
                      linestyle="none", label=_RANK_STYLE[k]["label"])
               for k in RANK_KINDS if k in seen]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7,
                   frameon=False, bbox_to_anchor=(0.5, 1 - 0.6 / height))
    return fig, order
