"""Leaderboard storage: merge by method key, markdown rendering, atomic and locked writes."""

from __future__ import annotations

import json
import threading

import pytest

from wsss_bench import atomic, leaderboard
from wsss_bench.errors import UsageError
from wsss_bench.metrics import METRIC_NAMES


def row(method: str, dsc: float, seed: int = 0) -> dict:
    metrics = {m: {"mean": dsc, "std": 0.01, "folds": [dsc - 0.01, dsc + 0.01]}
               for m in METRIC_NAMES}
    return {"method": method, "backbones": ["resnet18"], "cam": "gradcam", "ensemble": None,
            "filter": "none", "thresholds": [[0.5], [0.6]], "metrics": metrics,
            "source": "measured", "run": {"seed": seed, "date": "2026-01-01"}}


def test_merge_replaces_same_method_and_keeps_others_sorted_by_paper_dsc():
    old = [row("a", 0.5), row("b", 0.7)]
    merged = leaderboard.merge(old, [row("a", 0.9, seed=3), row("c", 0.6)])
    assert [r["method"] for r in merged] == ["a", "b", "c"]
    assert merged[0]["run"]["seed"] == 3 and len(merged) == 3


def test_update_writes_json_and_markdown_and_merges(tmp_path):
    leaderboard.update(tmp_path, "phantom", [row("x", 0.6), row("Empty", 0.65)],
                       {"split": [["c1"], ["c2"]], "split_seed": 0, "command": "wsss-bench run"})
    board = leaderboard.update(tmp_path, "phantom", [row("x", 0.7)], {"split": [["c1"], ["c2"]]})
    stored = json.loads((tmp_path / "phantom.json").read_text())
    assert stored == board
    assert [r["method"] for r in stored["rows"]] == ["x", "Empty"]
    md = (tmp_path / "phantom.md").read_text()
    assert md.index("| 1 | x |") < md.index("| 2 | Empty |")
    assert "0.7000 ± 0.0100" in md and "fold 0: c1" in md
    assert not list(tmp_path.glob(".*.tmp"))


def test_concurrent_updates_lose_no_row(tmp_path):
    def write(i: int) -> None:
        leaderboard.update(tmp_path, "phantom", [row(f"m{i}", i / 100)], {})

    threads = [threading.Thread(target=write, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rows = leaderboard.load(tmp_path / "phantom.json")["rows"]
    assert {r["method"] for r in rows} == {f"m{i}" for i in range(12)}


def test_load_names_the_file_on_bad_content(tmp_path):
    bad = tmp_path / "phantom.json"
    bad.write_text('{"dataset": "phantom"}')
    with pytest.raises(UsageError, match="no 'rows' list"):
        leaderboard.load(bad)
    with pytest.raises(UsageError, match="no leaderboard"):
        leaderboard.load(tmp_path / "missing.json")


def test_atomic_write_leaves_old_file_when_writing_fails(tmp_path, monkeypatch):
    target = tmp_path / "f.txt"
    atomic.write_text(target, "old")

    def broken_replace(*_args):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", broken_replace)
    with pytest.raises(OSError):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_reported_paper_rows_follow_the_dsc_formula_and_stay_distinct(tmp_path):
    from wsss_bench import reported

    for dataset in ("brats", "decathlon"):
        rows = reported.rows(dataset)
        assert len(rows) == len(reported.TABLES[dataset][1]) and len(
            {r["method"] for r in rows}) == len(rows)
        for r in rows:
            m, d = r["metrics"]["paper_miou"]["mean"], r["metrics"]["paper_dsc"]["mean"]
            assert d == pytest.approx(2 * m / (1 + m), abs=0.0011)  # their DSC is 2m/(1+m)
            assert r["source"] == "reported" and r["method"].startswith("paper: ")
    assert reported.rows("phantom") == []
    board = leaderboard.update(tmp_path, "brats", [row("resnet34 / gradcam / none", 0.66)],
                               {"command": "wsss-bench run --dataset brats"}, name="sample")
    assert (tmp_path / "sample.json").exists() and board["name"] == "sample"
    assert {r["source"] for r in board["rows"]} == {"measured", "reported"}
    again = leaderboard.update(tmp_path, "brats", [], {}, name="sample")
    assert len(again["rows"]) == len(board["rows"])  # reported rows are not duplicated
    md = (tmp_path / "sample.md").read_text()
    assert "| *paper: ResNet-34x50 'and' + Box* | 0.5680 | 0.7240 | — | — | — |" in md
    assert "reported, Table II" in md and "- Reproduce: `wsss-bench run --dataset brats`" in md
    assert "*Italic* rows" in md


def test_csv_format(tmp_path):
    import csv
    import io

    board = leaderboard.update(tmp_path, "decathlon", [row("a", 0.9), row("Empty", 0.65)], {})
    lines = list(csv.DictReader(io.StringIO(leaderboard.render_csv(board))))
    assert lines[0]["method"] == "a" and lines[0]["rank"] == "1"
    assert float(lines[0]["paper_dsc_mean"]) == 0.9 and float(lines[0]["paper_dsc_std"]) == 0.01
    paper = [r for r in lines if r["source"] == "reported"]
    assert len(paper) == 21 and all(r["dice_pooled_mean"] == "" for r in paper)
    assert [float(r["paper_dsc_mean"]) for r in lines] == sorted(
        (float(r["paper_dsc_mean"]) for r in lines), reverse=True)


def test_leaderboard_command_prints_csv_md_json(tmp_path, capsys):
    from tests.test_cli import run_main

    leaderboard.update(tmp_path, "brats", [row("a", 0.9)], {"command": "wsss-bench run"},
                       name="sample")
    capsys.readouterr()
    for fmt, check in (("csv", lambda out: out.splitlines()[1].startswith("1,a,measured,")),
                       ("md", lambda out: out.startswith("# wsss-bench leaderboard: `sample`")),
                       ("json", lambda out: json.loads(out)["name"] == "sample")):
        assert run_main(["leaderboard", "--dataset", "sample", "--leaderboard-dir",
                         str(tmp_path), "--format", fmt]) == 0
        assert check(capsys.readouterr().out), fmt
