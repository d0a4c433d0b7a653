"""A run's figures, from its stored units: CAM overlays, threshold landscapes, training curves
and the leaderboard's ranking, written as PNGs with stable names under
``<leaderboard-dir>/figures/<board name>/``.

- ``overlays-<cam>-<filter>.png`` (the paper's Fig. 5): a few validation slices chosen
  deterministically (lesion slices of large, middling and small lesion area and a lesion-free
  slice, from different cases and, where there are enough, different folds), each with its
  source, ground truth, each backbone's CAM and the mask of every method of that CAM and
  filter, captioned with the slice's Dice;
- ``landscape-<method>.png`` (Fig. 6): the selection metric over the threshold grid on the
  training slices, per fold and averaged over folds, the chosen thresholds marked;
- ``curves-training.png`` (Figs. 7-8): training and validation loss and accuracy per epoch;
- ``ranking.png``: each row's score with its bootstrap interval.

Only the first training seed is drawn (the figures say so when a run has several).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench.core import calibration, leaderboard
from wsss_bench.core.metrics import foreground_dice, slice_counts
from wsss_bench.core.statistics import EMPTY
from wsss_bench.figures import draw
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.plan import EvalUnit, Plan

OVERLAY_QUANTILES = (0.9, 0.5, 0.1)  # lesion slices by lesion area: large, middling, small


def slug(text: str) -> str:
    """A file-name-safe form of a method or plugin name."""
    return re.sub(r"[^A-Za-z0-9+._]+", "-", text.replace("<", "smaller").replace(">", "bigger")
                  ).strip("-").lower()


def figure_dir(leaderboard_dir: Path | str, name: str) -> Path:
    return Path(leaderboard_dir) / "figures" / name


def listed(leaderboard_dir: Path | str, name: str) -> list[str]:
    """The PNGs of board ``name``, as links relative to the leaderboard folder (sorted)."""
    root = figure_dir(leaderboard_dir, name)
    return sorted(p.relative_to(Path(leaderboard_dir)).as_posix() for p in root.glob("*.png"))


def write_run_figures(plan: Plan, ctx: Context, evaluations: list[tuple[EvalUnit, list[dict]]],
                      out: Path, problems: list[str] | None = None) -> list[Path]:
    """Overlays, landscapes and training curves of a run's whole methods. A figure that
    cannot be drawn is left out and one line about it added to ``problems``: figures never
    stop a run from publishing its numbers."""
    out.mkdir(parents=True, exist_ok=True)
    problems = [] if problems is None else problems
    seed = plan.seeds[0]
    mine = [(u, r) for u, r in evaluations if u.seed == seed]
    note = f" (seed {seed} of {len(plan.seeds)})" if len(plan.seeds) > 1 else ""
    written: list[Path] = []

    def attempt(path: Path, make: Any) -> None:
        try:
            make(path)
        except Exception as exc:  # noqa: BLE001 - a figure is reported, never fatal
            problems.append(f"{path.name}: not drawn ({type(exc).__name__}: {exc})")
        else:
            written.append(path)

    for cam in plan.config.cams:
        for filt in plan.config.filters:
            methods = [(u, r) for u, r in mine if u.cam == cam and u.filter == filt]
            if methods:
                attempt(out / f"overlays-{slug(cam)}-{slug(filt)}.png",
                        lambda p, m=methods, c=cam, f=filt: draw.overlays(
                            p, overlay_slices(plan, ctx, m),
                            f"{plan.config.dataset}: {c} CAMs, filter {f}{note}"))
    for name in plan.config.methods:  # an end-to-end method's own maps
        for filt in plan.config.filters:
            methods = [(u, r) for u, r in mine if u.group == (name,) and u.filter == filt
                       and u.cam in plan.outputs.get(name, ())]
            if methods:
                attempt(out / f"overlays-{slug(name)}-{slug(filt)}.png",
                        lambda p, m=methods, n=name, f=filt: draw.overlays(
                            p, overlay_slices(plan, ctx, m),
                            f"{plan.config.dataset}: {n} maps, filter {f}{note}"))
    for unit, results in _per_method(mine):
        method = (f"{unit.ensemble}({','.join(unit.group)})" if unit.ensemble
                  else unit.group[0])
        grids = landscape_grids(plan, ctx, results)
        if not grids or grids[0].scores.ndim > 3:  # no stored grid, or too many dimensions
            continue
        names = list(unit.group) if grids[0].scores.ndim == len(unit.group) else [method]
        attempt(out / f"landscape-{slug(method)}-{slug(unit.cam)}-{slug(unit.filter)}.png",
                lambda p, g=grids, n=names, u=unit, m=method: draw.landscape(
                    p, g, list(plan.grid), n, plan.config.select_by,
                    f"{m} / {u.cam} / {u.filter}: {plan.config.select_by} on the training "
                    f"slices{note}"))
    histories = training_histories(plan, ctx, seed)
    if histories:
        attempt(out / "curves-training.png", lambda p: draw.training_curves(
            p, histories, f"{plan.config.dataset}: training{note}"))
    return written


def _per_method(evaluations: list[tuple[EvalUnit, list[dict]]]
                ) -> list[tuple[EvalUnit, list[tuple[int, dict, str]]]]:
    """Each method's (fold, result, unit key) over all folds, in plan order."""
    out: dict[tuple, tuple[EvalUnit, list[tuple[int, dict, str]]]] = {}
    for unit, results in evaluations:
        entry = out.setdefault(unit.method, (unit, []))
        entry[1].extend(zip(unit.folds, results, [k for k, _ in unit.keys], strict=True))
    return [(u, sorted(r, key=lambda p: p[0])) for u, r in out.values()]


def landscape_grids(plan: Plan, ctx: Context, results: list[tuple[int, dict, str]]
                    ) -> list[draw.LandscapeGrid]:
    """Per fold and their mean: the stored training grid and the chosen grid cell."""
    grid = np.asarray(plan.grid)
    panels, scores = [], []
    for fold, result, key in results:
        stored = result.get("grid")
        if not stored:
            return []  # made before evaluate units kept their grid
        values = _grid_scores(ctx, stored, key)
        chosen = tuple(int(np.argmin(np.abs(grid - t))) for t in result["thresholds"])
        if len(chosen) != values.ndim:  # an ensemble that fuses: one threshold
            chosen = chosen[:values.ndim]
        scores.append(values)
        panels.append(draw.LandscapeGrid(f"fold {fold + 1}", values, chosen))
    if len(scores) > 1:
        mean = np.mean(np.stack(scores), axis=0)
        across = plan.config.calibrate == "across-folds"
        chosen = (panels[0].chosen if across
                  else tuple(int(i) for i in np.unravel_index(np.argmax(mean), mean.shape)))
        panels.append(draw.LandscapeGrid("mean over folds" + ("" if across else " (best cell)"),
                                         mean, chosen))
    return panels


def _grid_scores(ctx: Context, stored: dict[str, Any], key: str) -> np.ndarray:
    if "scores" in stored:  # a result of this run, as it was computed
        return np.asarray(stored["scores"], dtype=np.float64)
    return np.load(ctx.store_root / "evaluate" / key / stored["file"])


def training_histories(plan: Plan, ctx: Context, seed: int) -> dict[str, list[list[dict]]]:
    """backbone -> per fold, the per-epoch history its train unit stored (train loss only for
    units made before validation was recorded)."""
    out: dict[str, list[list[dict]]] = {}
    for unit in plan.train:
        if unit.seed != seed or not (ctx.store_root / "train" / unit.key / "unit.json").is_file():
            continue  # a unit that failed in this run
        info = _unit_info(ctx, "train", unit.key)
        history = info.get("history") or [{"train_loss": v} for v in info.get("losses", [])]
        out.setdefault(unit.backbone, []).append(history)
    return out


def _unit_info(ctx: Context, stage: str, key: str) -> dict[str, Any]:
    return json.loads((ctx.store_root / stage / key / "unit.json").read_text())


def overlay_slices(plan: Plan, ctx: Context, methods: list[tuple[EvalUnit, list[dict]]]
                   ) -> list[draw.OverlaySlice]:
    """The chosen validation slices with their panels (see :func:`choose_slices`)."""
    data = ctx.data
    by_fold: dict[int, list[tuple[EvalUnit, dict]]] = {}
    for unit, results in methods:
        for fold, result in zip(unit.folds, results, strict=True):
            by_fold.setdefault(fold, []).append((unit, result))
    out = []
    for fold, index in choose_slices(plan, ctx):
        done = by_fold.get(fold, [])
        if not done:
            continue
        image = np.asarray(data.images[index, 0], dtype=np.float32)
        gt = np.asarray(data.masks[index], dtype=bool)
        panels = [draw.OverlayPanel("source", "image", None),
                  draw.OverlayPanel("ground truth", "truth", gt)]
        for backbone in plan.config.backbones:
            unit = next((u for u, _ in done if backbone in u.group), None)
            if unit is not None:
                key = unit.cam_keys[unit.folds.index(fold)][unit.group.index(backbone)]
                cam = np.asarray(ctx.cams(key)[index], dtype=np.float32)
                panels.append(draw.OverlayPanel(f"{backbone} {unit.cam}", "cam", cam))
        for unit, _ in done:  # an end-to-end method's maps
            if unit.group[0] in plan.config.methods and not unit.ensemble:
                key = unit.cam_keys[unit.folds.index(fold)][0]
                cam = np.asarray(ctx.cams(key)[index], dtype=np.float32)
                panels.append(draw.OverlayPanel(f"{unit.group[0]} {unit.cam}", "cam", cam))
        for unit, result in done:
            mask = _mask(ctx, unit, fold, result["thresholds"], index)
            dice = float(foreground_dice(slice_counts(mask[None], gt[None]))[0])
            name = (f"{unit.ensemble}({','.join(unit.group)})" if unit.ensemble
                    else unit.group[0] if unit.group[0] not in plan.config.methods
                    else f"{unit.group[0]} {unit.cam}")
            panels.append(draw.OverlayPanel(name, "mask", mask, caption=f"Dice {dice:.2f}"))
        case = str(data.case_ids[index])
        out.append(draw.OverlaySlice(f"{case} #{index} (fold {fold + 1})", image, gt, panels))
    return out


def _mask(ctx: Context, unit: EvalUnit, fold: int, thresholds: list[float], index: int
          ) -> np.ndarray:
    i = unit.folds.index(fold)
    stack = [ctx.cams(key) for key in unit.cam_keys[i]]
    ensemble = ctx.plugin("ensembles", unit.ensemble) if unit.ensemble else None
    region = ctx.region(unit.filter, fold)
    return calibration.binarize(stack, thresholds, ensemble, region, slices=[index])[0]


def choose_slices(plan: Plan, ctx: Context) -> list[tuple[int, int]]:
    """(fold, slice index) of the overlay slices: the lesion slices at the
    :data:`OVERLAY_QUANTILES` of lesion area and one lesion-free slice, each from another
    case (and fold, cycling through the folds), deterministic."""
    data = ctx.data
    area = np.asarray(data.masks).reshape(len(data), -1).sum(axis=1)
    used: set[str] = set()
    out = []
    wanted = [("lesion", q) for q in OVERLAY_QUANTILES] + [("free", 0.5)]
    for n, (kind, q) in enumerate(wanted):
        for fold in [(n + k) % len(plan.folds) for k in range(len(plan.folds))]:
            _, val = ctx.split(fold)
            pool = [i for i in val if (area[i] > 0) == (kind == "lesion")
                    and str(data.case_ids[i]) not in used]
            if not pool:
                continue
            pool.sort(key=lambda i: (area[i], i))
            pick = int(pool[min(len(pool) - 1, int(q * len(pool)))])
            used.add(str(data.case_ids[pick]))
            out.append((fold, pick))
            break
    return out


def ranking_link(name: str) -> str:
    """The ranking figure of board ``name``, relative to the leaderboard folder."""
    return f"figures/{name}/ranking.png"


def write_ranking(board: dict[str, Any], leaderboard_dir: Path) -> Path:
    """The board's ranking figure (every row's value and interval, sorted)."""
    name = board.get("name") or board["dataset"]
    path = Path(leaderboard_dir) / ranking_link(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    st = board.get("statistics") or {}
    how = (f", {st['level'] * 100:g} % bootstrap intervals ({st['resamples']} resamples)"
           if st else "")
    draw.ranking(path, ranking_entries(board), leaderboard.SORT_METRIC,
                 f"{name}: {leaderboard.SORT_METRIC} (mean over folds{how})")
    return path


def ranking_entries(board: dict[str, Any]) -> list[draw.RankEntry]:
    """Every row's leaderboard value with its interval (none for reported rows)."""
    out = []
    for row in leaderboard.sort_rows(board["rows"]):
        value = (row["metrics"].get(leaderboard.SORT_METRIC) or {}).get("mean")
        if value is None:
            continue
        ci = ((row.get("stats") or {}).get("ci") or {}).get(leaderboard.SORT_METRIC)
        kind = ("reported" if leaderboard.is_reported(row)
                else "empty" if row["method"] == EMPTY else "measured")
        out.append(draw.RankEntry(leaderboard.shown_name(row, board), value,
                                  ci[0] if ci else None, ci[1] if ci else None, kind))
    return out
