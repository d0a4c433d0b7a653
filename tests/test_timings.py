"""Stage timings: each unit stores its seconds, every row lists the seconds of the units behind
it (reused units with the time they took when made), the run prints a one-line breakdown."""

from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

import wsss_bench
from tests.conftest import FIRST, SECOND
from tests.test_pipeline import SMALL
from wsss_bench.core.progress import Reporter
from wsss_bench.pipeline import timings
from wsss_bench.pipeline.publish import run_and_publish
from wsss_bench.pipeline.settings import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_stage_clock_adds_up_and_names_every_stage(monkeypatch):
    ticks = iter([0.0, 1.0, 2.0, 2.0, 5.0, 10.0, 16.0, 20.0])
    monkeypatch.setattr(timings, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    clock = timings.StageClock()  # started at 0
    with clock.stage("prepare"):
        pass
    with clock.stage("train"):
        pass
    with clock.stage("prepare"):  # a stage timed in two parts adds up
        pass
    assert clock.as_dict() == {"prepare": 7.0, "train": 3.0}
    assert clock.breakdown() == ("time: prepare 7.0 s (35%), train 3.0 s (15%), other 10.0 s "
                                 "(50%); total 20.0 s")
    with pytest.raises(ValueError, match="unknown stage 'plot'"), clock.stage("plot"):
        pass


def test_evaluate_seconds_split_evenly_and_stored_seconds_read_both_layouts():
    out = timings.evaluate_seconds(3.0, [{"a": 1}, {"a": 2}, {"a": 3}])
    assert [r["seconds"] for r in out] == [1.0, 1.0, 1.0] and out[1]["a"] == 2
    assert timings.stored_seconds({"seconds": 2}) == 2.0
    assert timings.stored_seconds({"result": {"seconds": 0.5}}) == 0.5
    assert timings.stored_seconds({"result": {"metrics": {}}}) is None


def _run(tmp_path, capsys) -> tuple[dict, str]:
    config = RunConfig(**{**SMALL, "cams": ("gradcam",)}, backbones=(FIRST, SECOND),
                       workdir=str(tmp_path / "work"), leaderboard_dir=str(tmp_path / "lb"),
                       figures=False)
    board = run_and_publish(config, wsss_bench.load_registry(), Reporter())
    return board, capsys.readouterr()


def _stored(tmp_path, stage: str) -> dict[str, float]:
    out = {}
    for path in (tmp_path / "work" / "units" / stage).glob("*/unit.json"):
        meta = json.loads(path.read_text())
        out[meta["key"]] = timings.stored_seconds(meta)
    return out


def test_rows_list_their_units_seconds_and_the_run_prints_the_breakdown(tmp_path, capsys):
    board, out = _run(tmp_path, capsys)
    printed = out.out + out.err
    line = re.search(r"time: prepare [\d.]+ s \(\d+%\), train [\d.]+ s \(\d+%\), cams [\d.]+ s "
                     r"\(\d+%\), evaluate [\d.]+ s \(\d+%\), publish [\d.]+ s \(\d+%\), "
                     r"other [\d.]+ s \(\d+%\); total [\d.]+ s", printed)
    assert line, printed
    rows = {r["method"]: r for r in board["rows"]}
    ensemble = next(r for m, r in rows.items() if m.startswith("and("))
    t = ensemble["run"]["timings"]
    stored = {stage: _stored(tmp_path, stage) for stage in ("train", "cams", "evaluate")}
    # the and row: 2 backbones × 2 folds of train and CAM units, its 2 evaluate units
    assert {stage: len(keys) for stage, keys in t["units"].items()} == {
        "evaluate": 2, "cams": 4, "train": 4}
    for stage, keys in t["units"].items():
        assert keys == {k: stored[stage][k] for k in keys}
        assert all(v > 0 for v in keys.values())
        assert t["unit_seconds"][stage] == pytest.approx(sum(keys.values()), abs=2e-3)
    assert len(t["made_by_this_run"]) == 10
    assert set(t["run_stage_seconds"]) == {"prepare", "train", "cams", "evaluate"}
    single = rows[f"{FIRST} / gradcam / none"]["run"]["timings"]
    assert {stage: len(keys) for stage, keys in single["units"].items()} == {
        "evaluate": 2, "cams": 2, "train": 2}
    assert set(single["units"]["train"]) < set(t["units"]["train"])
    assert rows["Empty"]["run"]["timings"]["units"] == {}

    again, _ = _run(tmp_path, capsys)  # everything reused: the stored seconds, nothing made
    t2 = next(r for r in again["rows"] if r["method"] == ensemble["method"])["run"]["timings"]
    assert t2["units"] == t["units"] and t2["made_by_this_run"] == []
