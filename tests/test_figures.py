"""A run's figures: drawn from its stored units, listed by its board and linked by the
markdown, byte-identical when redrawn, skipped with ``--no-figures``, redrawn by
``wsss-bench figures``."""

from __future__ import annotations

import io
import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import wsss_bench
from wsss_bench.cli import main
from wsss_bench.core import leaderboard
from wsss_bench.core.progress import Reporter
from wsss_bench.figures import from_run
from wsss_bench.pipeline.publish import run_and_publish
from wsss_bench.pipeline.run import execute
from wsss_bench.pipeline.settings import RunConfig

from .conftest import FIRST, SECOND

QUIET = Reporter(quiet=True)
EPOCHS = 2
COMMAND = ("wsss-bench run -o phantom.n_cases=6 -o phantom.n_slices=8 -o phantom.size=32 "
           "--folds 2 --epochs 2 --batch-size 8 --ensembles and")


def config_of(tmp: Path, boards: str = "boards", **extra) -> RunConfig:
    return RunConfig(options={"phantom": {"n_cases": "6", "n_slices": "8", "size": "32"}}, folds=2,
                     epochs=EPOCHS, batch_size=8, ensembles=("and",), device="cpu",
                     workdir=str(tmp / "runs"), leaderboard_dir=str(tmp / boards), **extra)


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> tuple[Path, dict, dict[str, bytes]]:
    """One small phantom run with figures: its folder, board and every figure's bytes."""
    tmp = tmp_path_factory.mktemp("figures")
    board = run_and_publish(config_of(tmp), wsss_bench.load_registry(), QUIET, command=COMMAND)
    pngs = {p.name: p.read_bytes() for p in (tmp / "boards" / "figures" / "phantom").glob("*")}
    return tmp, board, pngs


def decode(data: bytes) -> np.ndarray:
    from matplotlib.image import imread

    return imread(io.BytesIO(data), format="png")


def test_every_figure_is_drawn_listed_and_linked(made):
    tmp, board, pngs = made
    want = {"overlays-gradcam-none.png", "curves-training.png", "ranking.png",
            f"landscape-{from_run.slug(FIRST)}-gradcam-none.png",
            f"landscape-{from_run.slug(SECOND)}-gradcam-none.png",
            f"landscape-and-{from_run.slug(FIRST)}-{from_run.slug(SECOND)}-gradcam-none.png"}
    assert set(pngs) == want
    for name, data in pngs.items():
        image = decode(data)
        assert image.shape[0] >= 200 and image.shape[1] >= 300, name
        packed = (np.round(image[::3, ::3, :3] * 255).astype(np.uint32)
                  @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32))
        assert len(np.unique(packed)) > 20, name
    assert board["figures"] == sorted(f"figures/phantom/{n}" for n in want)
    markdown = (tmp / "boards" / "phantom.md").read_text()
    for link in board["figures"]:
        assert f"]({link})" in markdown and (tmp / "boards" / link).is_file()
    assert "![ranking](figures/phantom/ranking.png)" in markdown
    html = (tmp / "boards" / "phantom.html").read_text()
    assert all(f'src="{link}"' in html for link in board["figures"])


def test_landscapes_mark_the_thresholds_each_fold_chose_and_curves_have_every_epoch(made):
    tmp, _, _ = made
    config = config_of(tmp, boards="again", figures=False)
    outcome = execute(config, wsss_bench.load_registry(), QUIET, stored_only=COMMAND)
    grid = np.asarray(outcome.plan.grid)
    methods = from_run._per_method(outcome.evaluations)
    assert len(methods) == 3
    for unit, results in methods:
        panels = from_run.landscape_grids(outcome.plan, outcome.context, results)
        assert [p.label for p in panels[:2]] == ["fold 1", "fold 2"]
        for panel, (_, result, _) in zip(panels, results, strict=False):
            assert tuple(grid[list(panel.chosen)]) == tuple(result["thresholds"])
            assert panel.scores.shape == (len(grid),) * len(unit.group)
            # the stored grid's best cell is what per-fold calibration chose
            best = np.unravel_index(np.argmax(panel.scores), panel.scores.shape)
            assert panel.scores[best] == panel.scores[panel.chosen]
        assert np.array_equal(panels[-1].scores, (panels[0].scores + panels[1].scores) / 2)
    histories = from_run.training_histories(outcome.plan, outcome.context, 0)
    assert set(histories) == {FIRST, SECOND}
    for per_fold in histories.values():
        assert len(per_fold) == 2
        assert all(len(h) == EPOCHS and {"train_loss", "val_loss", "val_accuracy"} <= set(h[0])
                   for h in per_fold)


def test_overlay_slices_are_lesion_slices_of_other_sizes_and_a_lesion_free_one(made):
    tmp, _, _ = made
    outcome = execute(config_of(tmp, boards="again", figures=False), wsss_bench.load_registry(),
                      QUIET, stored_only=COMMAND)
    chosen = from_run.choose_slices(outcome.plan, outcome.context)
    data = outcome.context.data
    areas = [int(np.asarray(data.masks[i]).sum()) for _, i in chosen]
    assert len(chosen) == 4 and areas[-1] == 0 and all(a > 0 for a in areas[:3])
    assert areas[0] >= areas[1] >= areas[2]
    assert len({str(data.case_ids[i]) for _, i in chosen}) == 4  # four cases
    assert {f for f, _ in chosen} == {0, 1}  # both folds
    for fold, index in chosen:  # each from its fold's validation slices
        assert str(data.case_ids[index]) in outcome.plan.folds[fold]
    assert chosen == from_run.choose_slices(outcome.plan, outcome.context)


def test_a_rerun_draws_byte_identical_figures_and_no_figures_draws_none(made):
    tmp, _, pngs = made
    again = tmp / "rerun"
    shutil.copytree(tmp / "boards", again)
    shutil.rmtree(again / "figures")
    run_and_publish(config_of(tmp, boards="rerun"), wsss_bench.load_registry(), QUIET,
                    command=COMMAND)  # every unit reused
    assert {p.name: p.read_bytes() for p in (again / "figures" / "phantom").glob("*")} == pngs
    board = run_and_publish(config_of(tmp, boards="none", figures=False),
                            wsss_bench.load_registry(), QUIET, command=COMMAND)
    assert not (tmp / "none" / "figures").exists() and not board.get("figures")
    assert "Figures (" not in (tmp / "none" / "phantom.md").read_text()


def test_figures_command_redraws_from_the_stored_units(made, tmp_path, monkeypatch, capsys):
    tmp, board, pngs = made
    boards = tmp_path / "boards"
    boards.mkdir()
    shutil.copy(tmp / "boards" / "phantom.json", boards / "phantom.json")
    monkeypatch.chdir(tmp)  # the board's command ran here (default workdir: runs)
    assert main(["figures", "--dataset", "phantom", "--leaderboard-dir", str(boards),
                 "-q"]) == 0
    assert {p.name: p.read_bytes() for p in (boards / "figures" / "phantom").glob("*")} == pngs
    redrawn = json.loads((boards / "phantom.json").read_text())
    original = json.loads((tmp / "boards" / "phantom.json").read_text())
    assert redrawn["rows"] == original["rows"] and redrawn["figures"] == board["figures"]
    assert (boards / "phantom.md").read_text() == leaderboard.render_markdown(redrawn)
    # without the run's units: one line naming the command to run, exit status 2
    assert main(["figures", "--dataset", "phantom", "--leaderboard-dir", str(boards),
                 "--workdir", str(tmp_path / "elsewhere"), "-q"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not stored" in err[0] and COMMAND in err[0]


def test_figures_command_needs_a_recorded_run_command(tmp_path, capsys):
    board = {"dataset": "phantom", "name": "phantom", "rows": []}
    (tmp_path / "phantom.json").write_text(json.dumps(board))
    assert main(["figures", "--dataset", "phantom", "--leaderboard-dir", str(tmp_path)]) == 2
    assert "no `wsss-bench run` command" in capsys.readouterr().err


def test_old_units_without_history_or_grid_still_draw(made, tmp_path):
    """Units made before train units kept validation history and evaluate units their grid:
    the curves show training loss only, the landscapes are left out."""
    tmp, _, _ = made
    runs = tmp_path / "runs"
    shutil.copytree(tmp / "runs", runs)
    for unit in (runs / "units" / "train").glob("*/unit.json"):
        meta = json.loads(unit.read_text())
        meta.pop("history")
        _rewrite(unit, meta)
    for unit in (runs / "units" / "evaluate").glob("*/unit.json"):
        meta = json.loads(unit.read_text())
        meta["result"].pop("grid")
        (unit.parent / "grid.npy").unlink()
        meta["files"].pop("grid.npy")
        _rewrite(unit, meta)
    config = replace(config_of(tmp_path), workdir=str(runs))
    board = run_and_publish(config, wsss_bench.load_registry(), QUIET, command=COMMAND)
    names = {Path(f).name for f in board["figures"]}
    assert names == {"overlays-gradcam-none.png", "curves-training.png", "ranking.png"}
    outcome = execute(config, wsss_bench.load_registry(), QUIET, stored_only=COMMAND)
    histories = from_run.training_histories(outcome.plan, outcome.context, 0)
    assert all(set(h[0]) == {"train_loss"} for per in histories.values() for h in per)


def _rewrite(path: Path, meta: dict) -> None:
    from wsss_bench.core.store import meta_sha256

    meta["meta_sha256"] = meta_sha256(meta)
    path.write_text(json.dumps(meta, indent=1))


@pytest.mark.parametrize(("flags", "want"), [([], True), (["--figures"], True),
                                             (["--no-figures"], False)])
def test_run_draws_figures_unless_told_not_to(flags, want):
    from wsss_bench.cli import build_parser, run_config

    assert run_config(build_parser().parse_args(["run", *flags])).figures is want


def test_a_figure_that_cannot_be_drawn_is_a_warning_and_the_board_is_published(
        made, monkeypatch):
    tmp, board, _ = made
    from wsss_bench.figures import draw

    def broken(*args, **kwargs):
        raise RuntimeError("no canvas")

    monkeypatch.setattr(draw, "overlays", broken)
    with pytest.warns(UserWarning, match=r"overlays-gradcam-none.png: not drawn "
                                         r"\(RuntimeError: no canvas\)"):
        again = run_and_publish(config_of(tmp, boards="broken"), wsss_bench.load_registry(),
                                QUIET, command=COMMAND)
    assert [r["metrics"] for r in again["rows"]] == [r["metrics"] for r in board["rows"]]
    names = {Path(f).name for f in again["figures"]}
    assert "overlays-gradcam-none.png" not in names and "ranking.png" in names
