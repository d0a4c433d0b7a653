"""``--calibrate across-folds``: one threshold tuple for every fold, the grid point with the
best mean training score over the folds (the paper's Fig. 6), against a brute-force reference;
and the run with it: one tuple per row, its own unit keys, reused on a re-run."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from tests.calibration_oracle import oracle_grid_search
from tests.test_cli import run_main
from wsss_bench.core import calibration
from wsss_bench.core.metrics import score
from wsss_bench.registry import load_registry

from .conftest import FIRST, SECOND

ENSEMBLES = load_registry().ensembles
GRID = calibration.threshold_grid(0.25)


def folds_of_random_cams(m: int, seed: int):
    """Three folds of blobby CAMs with lesions (different sizes per fold)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (5, 7, 6):
        gt = np.zeros((n, 12, 12), dtype=bool)
        for i in range(n):
            if rng.random() < 0.7:
                y, x = rng.integers(2, 8, size=2)
                gt[i, y : y + rng.integers(2, 5), x : x + rng.integers(2, 5)] = True
        cams = np.clip(gt[None] * rng.uniform(0.3, 0.9, size=(m, 1, 1, 1))
                       + rng.uniform(0, 0.7, size=(m, n, 12, 12)), 0, 1).astype(np.float32)
        case_ids = np.asarray([f"c{i // 2}" for i in range(n)])
        out.append((cams, gt, case_ids))
    return out


def brute_force(folds, ensemble, metric):
    """Every threshold tuple, every fold binarised and scored; the best mean (first in C
    order among equals)."""
    m = folds[0][0].shape[0]
    best, best_t = -np.inf, None
    for idx in itertools.product(range(len(GRID)), repeat=m):
        t = [GRID[i] for i in idx]
        values = []
        for cams, gt, ids in folds:
            masks = np.stack([cams[j].astype(np.float64) > t[j] for j in range(m)])
            pred = masks[0] if m == 1 else ensemble.combine(masks)
            values.append(score(pred, gt, ids)[metric])
        mean = float(np.mean(values))
        if mean > best + 1e-12:
            best, best_t = mean, tuple(t)
    return best_t, best


@pytest.mark.parametrize(("m", "ensemble", "metric"), [
    (1, None, "paper_miou"), (2, "and", "paper_miou"), (2, "or", "dice_volume"),
    (2, "smaller", "paper_miou"), (3, "bigger", "dice_slice")])
@pytest.mark.parametrize("seed", [0, 1])
def test_choice_is_the_brute_force_best_mean(m, ensemble, metric, seed):
    folds = folds_of_random_cams(m, seed)
    ens = ENSEMBLES[ensemble] if ensemble else None
    grids = [calibration.grid_search(c, g, ensemble=ens, thresholds=GRID, metric=metric,
                                     case_ids=ids).scores for c, g, ids in folds]
    got = calibration.choose_across_folds(grids, GRID)
    want_t, want_score = brute_force(folds, ens, metric)
    assert got.thresholds == want_t
    assert got.score == pytest.approx(want_score, abs=1e-12)


def test_the_mean_grid_equals_the_oracle_grids_mean():
    folds = folds_of_random_cams(2, 3)
    ens = ENSEMBLES["and"]
    ours = calibration.choose_across_folds(
        [calibration.grid_search(c, g, ensemble=ens, thresholds=GRID).scores
         for c, g, _ in folds], GRID)
    oracle = np.mean([oracle_grid_search(c, g, GRID, ens)[2] for c, g, _ in folds], axis=0)
    np.testing.assert_allclose(ours.scores, oracle, atol=1e-12)


def test_ties_go_to_the_lowest_index_and_bad_input_is_refused():
    flat = [np.zeros((3, 3)), np.zeros((3, 3))]
    assert calibration.choose_across_folds(flat, [0.0, 0.5, 1.0]).index == (0, 0)
    with pytest.raises(ValueError, match="at least one fold"):
        calibration.choose_across_folds([], [0.0, 1.0])
    with pytest.raises(ValueError, match="differ in shape"):
        calibration.choose_across_folds([np.zeros(3), np.zeros((3, 3))], [0.0, 0.5, 1.0])


@pytest.mark.slow
def test_across_folds_run_uses_one_tuple_per_row_with_its_own_units(tmp_path):
    """A phantom run: per-fold and across-folds share train and CAM units, not evaluate units;
    every across-folds row has one tuple in every fold, the best mean of the folds'
    training grids recomputed here from the stored CAMs; a re-run reuses everything."""
    common = ["run", "--epochs", "1", "--workdir", str(tmp_path / "w"), "-q",
              "-o", "phantom.n_cases=6", "-o", "phantom.n_slices=6", "-o", "phantom.size=32"]
    assert run_main([*common, "--leaderboard-dir", str(tmp_path / "a")]) == 0
    evaluate = tmp_path / "w" / "units" / "evaluate"
    per_fold_units = set(p.name for p in evaluate.iterdir())
    train_units = set(p.name for p in (tmp_path / "w" / "units" / "train").iterdir())
    assert run_main([*common, "--calibrate", "across-folds", "--leaderboard-dir",
                     str(tmp_path / "b")]) == 0
    assert set(p.name for p in (tmp_path / "w" / "units" / "train").iterdir()) == train_units
    across_units = set(p.name for p in evaluate.iterdir()) - per_fold_units
    assert len(across_units) == len(per_fold_units)  # same methods × folds, other keys
    board = json.loads((tmp_path / "b" / "phantom.json").read_text())
    rows = {r["method"]: r for r in board["rows"] if r["source"] == "measured"}
    assert rows[f"{FIRST} / gradcam / none"]["run"]["config"]["calibrate"] == "across-folds"
    for method, row in rows.items():
        if method != "Empty":
            assert len(row["thresholds"]) == 3
            assert all(t == row["thresholds"][0] for t in row["thresholds"]), method
    check_against_stored_cams(tmp_path / "w", rows[f"and({FIRST},{SECOND}) / gradcam / none"])
    made = {p.name: (p / "unit.json").stat().st_mtime_ns for p in evaluate.iterdir()
            if (p / "unit.json").exists()}
    assert run_main([*common, "--calibrate", "across-folds", "--leaderboard-dir",
                     str(tmp_path / "b")]) == 0
    assert {p.name: (p / "unit.json").stat().st_mtime_ns for p in evaluate.iterdir()
            if (p / "unit.json").exists()} == made
    again = json.loads((tmp_path / "b" / "phantom.json").read_text())["rows"]
    assert [(r["method"], r["thresholds"], r["metrics"]) for r in again] == [
        (r["method"], r["thresholds"], r["metrics"]) for r in board["rows"]]


def check_against_stored_cams(workdir, row):
    """The row's tuple is the best mean, over folds, of the training grids of its stored
    CAMs (brute force over the grid with metrics.score)."""
    from wsss_bench.core.progress import Reporter
    from wsss_bench.pipeline.context import Context
    from wsss_bench.pipeline.plan import Plan
    from wsss_bench.pipeline.prepare import prepare
    from wsss_bench.pipeline.settings import RunConfig

    config = RunConfig(**{**row["run"]["config"], "backbones": tuple(row["backbones"]),
                          "cams": tuple(row["run"]["config"]["cams"]),
                          "ensembles": tuple(row["run"]["config"]["ensembles"]),
                          "filters": tuple(row["run"]["config"]["filters"]),
                          "seeds": tuple(row["run"]["config"]["seeds"]),
                          "force": (), "devices": (), "workdir": str(workdir)})
    registry = load_registry()
    plan = Plan.build(config, registry)
    ctx = Context(plan, None, None, plan.device, registry=registry)  # type: ignore[arg-type]
    data = prepare(plan, ctx.plugin("datasets", config.dataset), Reporter(quiet=True))
    folds = json.loads((workdir / "phantom" / "folds.json").read_text())["folds"]
    # the plan's unit keys are those the run stored (deterministic): no retraining here
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(), folds)
    ctx = Context(plan, data, workdir / "units", plan.device, registry=registry)
    grid = plan.grid
    ens = ENSEMBLES["and"]
    fold_data, val_data = [], []
    for k in range(len(folds)):
        train, val = ctx.split(k)
        keys = {u.train.backbone: u.keys["gradcam"][0] for u in plan.cams
                if (u.train.seed, u.train.fold) == (config.seed, k)}
        cams = np.stack([np.load(workdir / "units" / "cams" / keys[b] / "cams.npy")
                         .astype(np.float64) for b in row["backbones"]])
        fold_data.append((cams[:, train], data.masks[train], data.case_ids[train]))
        val_data.append((cams[:, val], data.masks[val], data.case_ids[val]))

    def predict(c, t):
        return ens.combine(np.stack([c[j] > t[j] for j in range(2)]))

    best, best_t = -np.inf, None
    for t in itertools.product(grid, repeat=2):
        mean = np.mean([score(predict(c, t), g, ids)["paper_miou"] for c, g, ids in fold_data])
        if mean > best + 1e-12:
            best, best_t = mean, list(t)
    assert row["thresholds"][0] == best_t
    # the tuple scored on each fold's validation slices, in fold order
    for k, (c, g, ids) in enumerate(val_data):
        want = score(predict(c, best_t), g, ids)
        for metric, value in want.items():
            assert row["metrics"][metric]["folds"][k] == pytest.approx(value, abs=1e-12)
