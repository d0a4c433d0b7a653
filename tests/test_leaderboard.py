"""Leaderboard storage: merge by method key, markdown rendering, atomic and locked writes."""

from __future__ import annotations

import json
import threading

import pytest

from wsss_bench.core import atomic, leaderboard
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.errors import UsageError


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
    with pytest.raises(UsageError, match=f"cannot write {target}: disk full; .* was left as"):
        atomic.write_text(target, "new")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def rounding_allows(dsc: float, miou: float) -> bool:
    """Whether some true mIoU that rounds (to 0.1 %) to ``miou`` gives a DSC = 2m/(1+m) that
    rounds to ``dsc``: the intervals [f(m - h), f(m + h)] and [dsc - h, dsc + h] meet, h =
    0.0005 (f is increasing). The slack is h·(1 + f'(m)) = h·(1 + 2/(1+m)²), 0.0008-0.0010 here."""
    h, eps = 0.0005, 1e-12

    def f(m: float) -> float:
        return 2 * m / (1 + m)

    return f(miou - h) <= dsc + h + eps and f(miou + h) >= dsc - h - eps


def test_reported_paper_rows_follow_the_dsc_formula_and_stay_distinct(tmp_path):
    from wsss_bench.core import reported

    for dataset in ("brats", "decathlon"):
        rows = reported.rows(dataset)
        assert len(rows) == len(reported.TABLES[dataset][1]) and len(
            {r["method"] for r in rows}) == len(rows)
        for r in rows:
            m, d = r["metrics"]["paper_miou"]["mean"], r["metrics"]["paper_dsc"]["mean"]
            # their DSC is 2m/(1+m); a row that rounding cannot explain must carry a note
            assert rounding_allows(d, m) == ("note" not in r), r["method"]
            assert r["source"] == "reported" and r["method"].startswith("paper: ")
    assert reported.rows("phantom") == []
    assert rounding_allows(0.779, 0.638) and not rounding_allows(0.781, 0.638)
    noted = [(ds, r["method"], r["note"]) for ds in ("brats", "decathlon")
             for r in reported.rows(ds) if "note" in r]
    assert noted == [("decathlon", "paper: ResNet-34-GradCAM",
                      "paper's rounding or typo: 2·63.8/163.8 = 77.9")]
    assert reported.PAPER == ("A Novel Weakly Supervised Semantic Segmentation Ensemble "
                              "Framework for Medical Imaging")
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


def test_reported_note_is_shown_beside_its_row(tmp_path):
    board = leaderboard.update(tmp_path, "decathlon", [row("a", 0.9)], {})
    md = (tmp_path / "decathlon.md").read_text()
    [line] = [ln for ln in md.splitlines() if "*paper: ResNet-34-GradCAM*" in ln]
    assert line.endswith("| reported, Table III; note: paper's rounding or typo: "
                         "2·63.8/163.8 = 77.9 |")
    assert md.count("note:") == 1
    [noted] = [r for r in board["rows"] if "note" in r]  # stored in the JSON too
    assert leaderboard._cells(noted, board)[-1] == "reported, Table III"  # terminal table: narrow


def test_header_renders_deviations_and_preset_overrides(tmp_path):
    import dataclasses

    from wsss_bench.core import deviations

    # as the runner stores them; JSON turns the datasets tuples into lists
    entries = json.loads(json.dumps([dataclasses.asdict(d) for d in deviations.for_run("brats")]))
    header = {"command": "wsss-bench run --preset paper --dataset brats --epochs 2",
              "deviations": entries,
              "preset_overrides": ["epochs 2 (preset: 10)",
                                   "-o brats.modalities=flair,t1ce (preset: flair,t1ce,t2)"]}
    board = leaderboard.update(tmp_path, "brats", [row("a", 0.9)], header)
    assert board["deviations"] == entries
    md = (tmp_path / "brats.md").read_text()
    assert ("\nThis run overrides the preset:\n\n- epochs 2 (preset: 10)\n"
            "- -o brats.modalities=flair,t1ce (preset: flair,t1ce,t2)\n\nMetrics:") in md
    assert "- Where this run differs from the paper" in md
    tail = md.split("\nDeviations from the paper (those that concern this dataset", 1)[1]
    assert tail.split("\n\n", 1)[1] == deviations.render_markdown(deviations.for_run("brats"))
    assert md.index("| # |") < md.index("Deviations from the paper (those")
    assert "**CAM input (BraTS)**" in md and "**Prostate data and split**" not in md

    # a later update without them keeps both (like `command`) ...
    again = leaderboard.update(tmp_path, "brats", [row("b", 0.8)], {})
    assert again["deviations"] == entries and again["preset_overrides"] == header[
        "preset_overrides"] and again["command"] == header["command"]
    # ... a run that brings its own replaces them ...
    fewer = leaderboard.update(tmp_path, "brats", [], {**header, "preset_overrides": [],
                                                       "deviations": entries[:1]})
    assert fewer["preset_overrides"] == [] and fewer["deviations"] == entries[:1]
    md = (tmp_path / "brats.md").read_text()
    assert "This run overrides the preset" not in md and md.count("\n- **") == 1
    # ... and a new command without a preset drops both, which described the old one
    leaderboard.update(tmp_path, "brats", [], {**header, "preset_overrides": ["epochs 3 "
                                                                              "(preset: 10)"]})
    plain = leaderboard.update(tmp_path, "brats", [], {"command": "wsss-bench run --dataset "
                                                                  "brats"})
    assert "preset_overrides" not in plain and "deviations" not in plain
    assert "Deviations from the paper" not in (tmp_path / "brats.md").read_text()


def test_board_without_deviations_renders_as_before(tmp_path):
    board = leaderboard.update(tmp_path, "phantom", [row("a", 0.9)], {"command": "x"})
    md = leaderboard.render_markdown(board)
    assert "Deviations" not in md and "overrides the preset" not in md
    assert leaderboard.render_markdown({**board, "deviations": [],
                                        "preset_overrides": []}) == md
