"""The drawing layer of the figures (issue 14): every function writes one PNG that decodes, has
the size its layout promises, carries real content and is byte-identical when drawn again;
the landscape marks the chosen cell where that cell is; training curves have one point per
epoch; rankings are in value order; importing the module does not import pyplot."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
from matplotlib import style
from PIL import Image

from wsss_bench.figures import draw
from wsss_bench.figures.draw import (
    LandscapeGrid,
    OverlayPanel,
    OverlaySlice,
    RankEntry,
    cell_box,
    landscape,
    landscape_size,
    mosaic_column,
    overlay_size,
    overlays,
    ranking,
    ranking_size,
    training_curves,
    training_size,
)

ROOT = Path(__file__).resolve().parents[1]
H = W = 48
THRESHOLDS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
G = len(THRESHOLDS)


def decode(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def colours(pixels: np.ndarray) -> int:
    rgb = pixels.reshape(-1, 3).astype(np.int32)
    return len(np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2]))


def build(builder, *args, **kwargs):
    """The figure of an internal builder, drawn under the same style as the public writers,
    with its PNG bytes (drawing also settles the axes positions)."""
    with style.context("default"):
        fig, extra = builder(*args, **kwargs)
        data = draw._png_bytes(fig)
    return fig, extra, data


def crop(pixels: np.ndarray, ax) -> np.ndarray:
    box = ax.get_window_extent()
    top = pixels.shape[0] - round(box.y1)
    return pixels[top: top + round(box.height), round(box.x0): round(box.x0) + round(box.width)]


def assert_written(path: Path, data: bytes) -> None:
    """``path`` holds exactly ``data`` (the figure drawn a second time, independently: the same
    inputs give the same bytes) and its folder no temp file."""
    assert path.read_bytes() == data
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# ----------------------------------------------------------------------------- overlays


def overlay_slices() -> list[OverlaySlice]:
    rng = np.random.default_rng(0)
    image = rng.normal(size=(H, W)).cumsum(axis=0)  # the same image in both rows
    yy, xx = np.mgrid[:H, :W]
    gt = (yy - 20) ** 2 + (xx - 26) ** 2 < 8**2
    cam = np.exp(-((yy - 21) ** 2 + (xx - 25) ** 2) / (2 * 10.0**2))
    none = np.zeros((H, W), dtype=bool)

    def row(label, gt, cam, mask, dice):
        return OverlaySlice(label, image, gt, [
            OverlayPanel("source", "image"),
            OverlayPanel("ground truth", "truth"),
            OverlayPanel("gradcam resnet18", "cam", cam, f"Dice {dice}"),
            OverlayPanel("mean + filter", "mask", mask, f"Dice {dice}"),
        ])

    return [row("case 3 z=20 fold 0 (lesion)", gt, cam, cam > 0.5, "0.71"),
            row("case 5 z=2 fold 1 (no lesion)", none, np.zeros((H, W)), none, "1.00")]


def test_overlays_png_size_content_and_bytes(tmp_path):
    slices = overlay_slices()
    path = tmp_path / "a" / "overlays.png"
    overlays(path, slices, "phantom: overlays")
    fig, axes, data = build(draw._overlays_figure, slices, "phantom: overlays")
    assert_written(path, data)
    pixels = decode(path)
    assert overlay_size(2, 4) == (975, 575)
    assert pixels.shape == (575, 975, 3)
    assert colours(pixels) > 1000
    # the same image in both rows: alike source columns (up to sub-pixel placement),
    # different truth, CAM and mask columns
    source = np.abs(crop(pixels, axes[0][0]).astype(int) - crop(pixels, axes[1][0])).sum(-1)
    assert (source > 60).mean() < 0.01
    for c in (1, 2, 3):  # the outline, the CAM, the mask: only on the lesion row
        diff = np.abs(crop(pixels, axes[0][c]).astype(int) - crop(pixels, axes[1][c])).sum(-1)
        assert (diff > 60).mean() > (0.1 if c == 2 else 0.01), c
    lesion_cam = crop(pixels, axes[0][2]).astype(int)
    assert (lesion_cam[..., 0] - lesion_cam[..., 2] > 100).sum() > 50  # red-hot CAM centre


def test_overlay_size_scales_with_rows_and_panels(tmp_path):
    one = overlay_slices()[:1]
    one = [OverlaySlice(s.label, s.image, s.gt, s.panels[:3]) for s in one]
    overlays(tmp_path / "one.png", one, "one row")
    assert decode(tmp_path / "one.png").shape[:2][::-1] == overlay_size(1, 3)
    w2, h2 = overlay_size(2, 3)
    w1, h1 = overlay_size(1, 3)
    assert (w2, h2 - h1) == (w1, 225)
    assert overlay_size(1, 4)[0] - w1 == 200


def test_overlays_reject_inconsistent_input(tmp_path):
    s = overlay_slices()
    other = OverlaySlice("x", s[1].image, s[1].gt, s[1].panels[:2])
    with pytest.raises(ValueError, match="same panels"):
        overlays(tmp_path / "x.png", [s[0], other], "t")
    bad = OverlaySlice("x", s[0].image, s[0].gt, [OverlayPanel("p", "heat", None)])
    with pytest.raises(ValueError, match="kind"):
        overlays(tmp_path / "x.png", [bad], "t")
    with pytest.raises(ValueError, match="shape"):
        overlays(tmp_path / "x.png", [OverlaySlice("x", s[0].image, s[0].gt[:10],
                                                   s[0].panels)], "t")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- landscapes


def grids(m: int, chosen: tuple[int, ...] | None) -> list[LandscapeGrid]:
    rng = np.random.default_rng(m)
    return [LandscapeGrid("fold 0", rng.uniform(size=(G,) * m), chosen),
            LandscapeGrid("mean", rng.uniform(size=(G,) * m), None)]


NAMES = ["resnet18", "densenet121", "efficientnet_b0"]


@pytest.mark.parametrize("m,chosen", [(2, (1, 4)), (3, (4, 1, 3))])
def test_landscape_marks_the_chosen_cell(tmp_path, m, chosen):
    path = tmp_path / f"m{m}.png"
    landscape(path, grids(m, chosen), THRESHOLDS, NAMES[:m], "paper_dsc", "mean: paper_dsc")
    fig, axes, data = build(draw._landscape_figure, grids(m, chosen), THRESHOLDS, NAMES[:m],
                            "paper_dsc", "mean: paper_dsc")
    assert_written(path, data)
    marked = decode(path)
    assert marked.shape[:2][::-1] == landscape_size(2, m, G)
    assert colours(marked) > 200
    *_, plain = build(draw._landscape_figure, grids(m, None), THRESHOLDS, NAMES[:m],
                      "paper_dsc", "mean: paper_dsc")
    plain = np.asarray(Image.open(io.BytesIO(plain)).convert("RGB"))
    assert marked.shape == plain.shape

    ax = axes[0]
    row, col = chosen[0], chosen[1] if m == 2 else mosaic_column(G, chosen[2], chosen[1])
    x0, y0, x1, y1 = cell_box(ax, row, col)
    assert x1 - x0 > 5 and y1 - y0 > 5
    box = ax.get_window_extent()
    ay0, ay1 = marked.shape[0] - box.y1, marked.shape[0] - box.y0
    # rows increase upwards: row 4 of 6 lies in the upper half, row 1 in the lower half
    assert ((y0 + y1) / 2 < (ay0 + ay1) / 2) == (row > (G - 1) / 2)

    diff = np.abs(marked.astype(int) - plain).sum(-1) > 0
    ys, xs = np.nonzero(diff)
    inside_axes = (xs >= box.x0 - 4) & (xs <= box.x1 + 4) & (ys >= ay0 - 4) & (ys <= ay1 + 4)
    assert inside_axes.sum() > 20  # the rectangle
    margin = 4  # half the rectangle's line width plus antialiasing
    near_cell = ((xs >= x0 - margin) & (xs <= x1 + margin)
                 & (ys >= y0 - margin) & (ys <= y1 + margin))
    assert np.all(near_cell[inside_axes]), "the mark changed pixels away from the chosen cell"
    # nothing changed in the other grid's ("mean", chosen None) axes
    other = axes[1].get_window_extent()
    oy0 = marked.shape[0] - other.y1
    assert not diff[round(oy0): round(oy0 + other.height),
                    round(other.x0): round(other.x1)].any()


def test_landscape_curve_for_one_threshold(tmp_path):
    gs = grids(1, (2,))
    path = tmp_path / "m1.png"
    landscape(path, gs, THRESHOLDS, ["mean(resnet18, densenet121)"], "paper_dsc", "t")
    fig, axes, data = build(draw._landscape_figure, gs, THRESHOLDS,
                            ["mean(resnet18, densenet121)"], "paper_dsc", "t")
    assert_written(path, data)
    assert decode(path).shape[:2][::-1] == landscape_size(2, 1, G) == (750, 450)
    assert landscape_size(4, 1, G) == (750, 450)  # one panel, whatever the number of grids
    assert axes[0] is axes[1]  # all grids' curves in one panel
    curves = [line for line in axes[0].lines if line.get_marker() == "o"]
    stars = [line for line in axes[0].lines if line.get_marker() == "*"]
    assert [c.get_label() for c in curves] == [f"fold 0: chosen ({THRESHOLDS[2]:g}) = "
                                               f"{gs[0].scores[2]:.3f}", "mean"]
    for curve, grid in zip(curves, gs, strict=True):
        assert list(curve.get_xdata()) == THRESHOLDS
        assert np.allclose(curve.get_ydata(), grid.scores)
    assert curves[1].get_color() == "black"  # the last grid (the mean)
    [star] = stars  # the mean has no chosen point
    assert list(star.get_xdata()) == [THRESHOLDS[2]]
    assert list(star.get_ydata()) == [gs[0].scores[2]]
    assert [t.get_text().replace("\n", " ") for t in axes[0].get_legend().get_texts()] == [
        c.get_label() for c in curves]


def test_heat_maps_share_one_colour_bar(tmp_path):
    fig, axes, _ = build(draw._landscape_figure, grids(2, (1, 4)) * 2, THRESHOLDS, NAMES[:2],
                         "paper_dsc", "t")
    bars = [ax for ax in fig.axes if ax not in axes]
    assert len(axes) == 4 and len(bars) == 1
    assert {tuple(a.images[0].get_clim()) for a in axes} == {bars[0].get_ylim()}


def test_landscape_sizes_and_errors(tmp_path):
    assert landscape_size(2, 2, G) == (1050, 525)
    assert landscape_size(6, 2, G) == (1575, 1000)  # 3 panels a row
    w3, h3 = landscape_size(3, 3, G)
    assert h3 - landscape_size(2, 3, G)[1] == (h3 - 50) // 3
    with pytest.raises(ValueError, match="1, 2 or 3"):
        landscape(tmp_path / "x.png", [LandscapeGrid("f", np.zeros((G,) * 4), None)],
                  THRESHOLDS, NAMES + ["x"], "m", "t")
    with pytest.raises(ValueError, match="shape"):
        landscape(tmp_path / "x.png", [LandscapeGrid("f", np.zeros((G, G + 1)), None)],
                  THRESHOLDS, NAMES[:2], "m", "t")
    with pytest.raises(ValueError, match="chosen"):
        landscape(tmp_path / "x.png", [LandscapeGrid("f", np.zeros((G, G)), (1,))],
                  THRESHOLDS, NAMES[:2], "m", "t")
    with pytest.raises(ValueError, match="chosen"):
        landscape(tmp_path / "x.png", [LandscapeGrid("f", np.zeros((G, G)), (1, G))],
                  THRESHOLDS, NAMES[:2], "m", "t")
    assert not (tmp_path / "x.png").exists()


# ----------------------------------------------------------------------------- training


def epochs(n: int, val: bool, shift: float) -> list[dict[str, float]]:
    out = []
    for e in range(n):
        d = {"train_loss": 1 / (e + 1) + shift, "train_accuracy": 1 - 1 / (e + 2) - shift}
        if val:
            d |= {"val_loss": 1.2 / (e + 1) + shift, "val_accuracy": 0.9 - 1 / (e + 2)}
        out.append(d)
    return out


HISTORIES = {
    "resnet18": [epochs(4, True, 0.0), epochs(4, True, 0.1), epochs(3, True, 0.05)],
    "densenet121 (old run)": [[{"train_loss": v} for v in (0.9, 0.5, 0.4, 0.3, 0.25)]],
}


def test_training_curves_one_point_per_epoch(tmp_path):
    path = tmp_path / "training.png"
    training_curves(path, HISTORIES, "phantom: training")
    fig, lines, data = build(draw._training_figure, HISTORIES, "phantom: training")
    assert_written(path, data)
    pixels = decode(path)
    assert training_size(2) == (900, 650)
    assert pixels.shape == (650, 900, 3)
    assert colours(pixels) > 200
    for k, fold in enumerate(HISTORIES["resnet18"]):
        for key in ("train_loss", "val_loss", "train_accuracy", "val_accuracy"):
            line = lines[("resnet18", k, key)]
            assert list(line.get_xdata()) == list(range(1, len(fold) + 1))
            assert np.allclose(line.get_ydata(), [e[key] for e in fold])
            assert line.get_linestyle() == ("--" if key.startswith("val") else "-")
    old = "densenet121 (old run)"
    assert list(lines[(old, 0, "train_loss")].get_xdata()) == [1, 2, 3, 4, 5]
    assert {key for key in lines if key[0] == old} == {(old, 0, "train_loss")}
    titles = [ax.get_title() for ax in fig.axes]
    assert any("no validation loss stored" in t and old in t for t in titles)
    assert not any("no validation" in t and "resnet18" in t for t in titles)
    # one colour per fold, the same in both panels
    assert len({lines[("resnet18", k, "train_loss")].get_color() for k in range(3)}) == 3
    assert (lines[("resnet18", 1, "train_loss")].get_color()
            == lines[("resnet18", 1, "val_accuracy")].get_color())


# ----------------------------------------------------------------------------- ranking


ENTRIES = [
    RankEntry("gradcam resnet18", 0.41, 0.38, 0.44),
    RankEntry("Empty", 0.10, None, None, "empty"),
    RankEntry("paper: mean(resnet18, densenet121) / gradcam / largest-cc", 0.62, None, None,
              "reported"),
    RankEntry("mean(resnet18, densenet121) / gradcam / largest-cc", 0.55, 0.50, 0.60),
    RankEntry("scorecam densenet121", float("nan")),
]


def test_ranking_in_value_order(tmp_path):
    path = tmp_path / "ranking.png"
    ranking(path, ENTRIES, "paper_dsc", "phantom: ranking")
    fig, order, data = build(draw._ranking_figure, ENTRIES, "paper_dsc", "phantom: ranking")
    assert_written(path, data)
    pixels = decode(path)
    assert ranking_size(5) == (900, 300)
    assert pixels.shape == (300, 900, 3)
    assert colours(pixels) > 100
    expected = [ENTRIES[i].name for i in (2, 3, 0, 1, 4)]  # best first, NaN last
    assert [e.name for e in order] == expected
    ax = fig.axes[0]
    by_height = sorted(zip(ax.get_yticks(), (t.get_text() for t in ax.get_yticklabels()),
                           strict=True), reverse=True)
    assert [name for _, name in by_height] == expected  # the best at the top
    _, low_first, _ = build(draw._ranking_figure, ENTRIES, "hd95", "t", higher_is_better=False)
    assert [e.name for e in low_first] == [ENTRIES[i].name for i in (1, 0, 3, 2, 4)]
    with pytest.raises(ValueError, match="kind"):
        ranking(tmp_path / "x.png", [RankEntry("a", 0.1, kind="paper")], "m", "t")
    with pytest.raises(ValueError, match="both"):
        ranking(tmp_path / "x.png", [RankEntry("a", 0.1, 0.0, None)], "m", "t")


def test_user_style_does_not_change_the_bytes(tmp_path):
    ranking(tmp_path / "default.png", ENTRIES[:3], "paper_dsc", "t")
    with matplotlib.rc_context({"font.size": 20, "lines.linewidth": 6,
                                "axes.facecolor": "black", "savefig.dpi": 300}):
        ranking(tmp_path / "styled.png", ENTRIES[:3], "paper_dsc", "t")
    assert (tmp_path / "styled.png").read_bytes() == (tmp_path / "default.png").read_bytes()


# ----------------------------------------------------------------------------- no pyplot


def test_drawing_never_imports_pyplot(tmp_path):
    code = (
        "import sys\n"
        "from wsss_bench.figures.draw import RankEntry, ranking\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'import'\n"
        f"ranking({str(tmp_path / 'r.png')!r}, [RankEntry('a', 0.5, 0.4, 0.6)], 'm', 't')\n"
        "assert 'matplotlib.pyplot' not in sys.modules, 'draw'\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT),
                                            "MPLBACKEND": "TkAgg", "DISPLAY": ""})
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "r.png").stat().st_size > 1000
