"""The command line: errors the user can fix, plugin listing, and end-to-end runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from wsss_bench.cli import main
from wsss_bench.core.metrics import METRIC_NAMES

from .conftest import FIRST, SECOND

SMALL = ["-o", "phantom.n_cases=6", "-o", "phantom.n_slices=8", "--folds", "2", "--epochs", "1",
         "--batch-size", "8", "-q"]
# the end-to-end runs below check names, schemas and merges, which hold for any slice size:
# 4 slices per case (FEW_SLICES, the default 64×64) or 4 slices of 32×32 (TINY) keep them fast
FEW_SLICES = [a.replace("n_slices=8", "n_slices=4") for a in SMALL]
TINY = [*FEW_SLICES, "-o", "phantom.size=32"]


def one_thread(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) with one CPU thread for torch: a run's tiny tensors
    gain nothing from more, and two pytest-xdist workers share the cores."""
    import os

    return {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}


def cli(*args: str, env: dict | None = None, cwd: Path | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wsss_bench.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout, check=False)


def run_main(args: list[str]) -> int:
    """``wsss-bench ARGS`` in this process; the exit status, whether returned or raised."""
    try:
        return main(args)
    except SystemExit as exc:
        return int(exc.code or 0)


def run_captured(args: list[str], capsys) -> tuple[int, str]:
    """``wsss-bench ARGS`` in this process: the exit status and what it wrote to stderr."""
    code = run_main(args)
    return code, capsys.readouterr().err


def assert_one_line_error(done: subprocess.CompletedProcess, *needles: str) -> None:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize(("args", "needles"), [
    (["run", "--dataset", "nope"], ["unknown dataset 'nope'", "phantom"]),
    (["run", "--backbones", "resnet18,resnet999"], ["unknown backbone 'resnet999'", "resnet34"]),
    (["run", "--cams", "gradcamm"], ["unknown CAM method 'gradcamm'", "gradcam"]),
    (["run", "--ensembles", "xor"], ["unknown ensemble 'xor'"]),
    (["run", "--filters", "box"], ["unknown filter 'box'"]),
    (["run", "--folds", "1"], ["--folds 1", "at least 2"]),
    (["run", "--folds", "x"], ["--folds", "invalid int value"]),
    (["run", "--epochs", "0"], ["--epochs", "positive"]),
    (["run", "--threshold-step", "0.3"], ["--threshold-step 0.3"]),
    (["run", "--select-by", "accuracy"], ["--select-by accuracy", "paper_miou"]),
    (["run", "--device", "tpu"], ["--device", "invalid choice"]),
    (["run", "--backbones", "resnet18", "--ensembles", "and"], ["at least 2 --backbones"]),
    (["run", "-o", "phantom.size"], ["PLUGIN.KEY=VALUE"]),
    (["run", "-o", "phantom.colour=red"], ["no option 'colour'", "n_cases"]),
    (["run", "-o", "phantom.size=big"], ["phantom.size=big", "int"]),
    (["run", "-o", "phantom.size=8"], ["size"]),
    (["run", "-o", "phantom.needs_data_dir=true"], ["no option 'needs_data_dir'", "n_cases"]),
    (["run", "--filters", "brain", "-o", "brain.learned=true"], ["no option 'learned'"]),
    (["run", "-o", "resnet50.x=1"], ["no plugin called 'resnet50'"]),
    (["run", "--data-dir", "/nonexistent/dir"], ["/nonexistent/dir", "no such folder"]),
    (["run", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["leaderboard", "--dataset", "phantom", "--leaderboard-dir", "/nonexistent"],
     ["no leaderboard", "/nonexistent/phantom.json"]),
])
def test_user_errors_are_one_line_and_exit_2(args, needles, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    extra = ["--leaderboard-dir", str(tmp_path / "lb"), "--workdir", str(tmp_path / "w")]
    code = run_main([*args, *extra] if args[0] == "run" else args)
    captured = capsys.readouterr()
    assert_one_line_error(subprocess.CompletedProcess(args, code, captured.out, captured.err),
                          *needles)
    assert not (tmp_path / "lb").exists() and not (tmp_path / "w").exists()


def test_console_script_reports_errors_in_one_line(tmp_path):
    done = cli("run", "--dataset", "nope", cwd=tmp_path)
    assert_one_line_error(done, "unknown dataset 'nope'")


def test_corrupt_leaderboard_file_is_named(tmp_path):
    (tmp_path / "phantom.json").write_text("{not json")
    done = cli("leaderboard", "--dataset", "phantom", "--leaderboard-dir", str(tmp_path))
    assert_one_line_error(done, str(tmp_path / "phantom.json"), "delete or restore")


def test_version_and_help():
    import wsss_bench

    done = cli("--version")
    assert done.returncode == 0 and wsss_bench.__version__ in done.stdout
    for sub in ("run", "plugins", "leaderboard"):
        done = cli(sub, "--help")
        assert done.returncode == 0 and "usage: wsss-bench" in done.stdout


def _option_rows(out: str) -> dict[tuple[str, str], list[str]]:
    """(plugin, option) -> the cells of its first line in the `plugins --options` table."""
    rows = {}
    for line in out.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if len(cells) == 6 and cells[1] and cells[2]:
            rows[(cells[1], cells[2])] = cells
    return rows


def test_plugins_options_lists_each_option_with_type_default_and_help(capsys):
    assert run_main(["plugins", "--options"]) == 0
    rows = _option_rows(capsys.readouterr().out)
    assert rows[("phantom", "size")][:5] == ["datasets", "phantom", "size", "int", "64"]
    assert rows[("phantom", "size")][5].startswith("slice side in pixels")
    assert rows[("phantom", "n_cases")][3:5] == ["int", "24"]
    assert rows[("center-box", "side")][3:5] == ["float", "0.5"]
    assert rows[("center-box", "side")][5].startswith("side of the kept centred box")
    assert rows[("smoothgradcam++", "samples")][3:5] == ["int", "8"]
    assert rows[("processes", "workers")][3:5] == ["int", "2"]
    assert rows[("resnet18", "pretrained_tag")][3:5] == ["str", '""']
    assert rows[("gradcam", "-")][5] == "(no options)"
    assert not {k for k in rows if k[1] in {"needs_data_dir", "cache_version", "model_name",
                                            "output_strides", "learned", "symbol", "box"}}


def test_plugins_json_gives_every_plugin_its_options():
    done = cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    entries = {e["name"]: e for e in json.loads(done.stdout)}
    assert all(isinstance(e["options"], list) for e in entries.values())
    phantom = {o["name"]: o for o in entries["phantom"]["options"]}
    assert list(phantom) == ["n_cases", "n_slices", "size", "seed", "noise", "contrast",
                             "channels"]
    assert phantom["size"] == {"name": "size", "type": "int", "default": 64, "value": 64,
                               "help": phantom["size"]["help"]}
    assert phantom["noise"]["default"] == 0.03 and "Rician" in phantom["noise"]["help"]
    assert [o["name"] for o in entries["brats"]["options"]] == [
        "modalities", "crop", "cam_binarize", "cam_value", "cam_modality"]
    assert entries["and"]["options"] == [] and entries["learned-box"]["options"][0]["name"] == \
        "margin"
    for e in entries.values():
        for o in e["options"]:
            assert set(o) == {"name", "type", "default", "value", "help"}
            assert o["help"] and o["help"] != "(no help)", (e["name"], o["name"])


def test_plugins_options_shows_no_help_for_a_third_party_option_without_it(monkeypatch, capsys):
    from dataclasses import dataclass
    from typing import ClassVar

    import wsss_bench
    from wsss_bench import registry

    @dataclass(frozen=True)
    class Threshold:  # a third-party filter whose option has no help text
        name: str = "threshold"
        description: str = "keep pixels above level"
        learned: ClassVar[bool] = False
        level: float = 0.25

        def region(self, images):
            return images[:, 0] > self.level

    class Plugin:
        @staticmethod
        @wsss_bench.hookimpl
        def register_filters(register):
            register(Threshold())

    load = registry.load_registry
    monkeypatch.setattr(registry, "load_registry", lambda: load(extra_plugins={"t": Plugin()}))
    assert run_main(["plugins", "--options"]) == 0
    row = _option_rows(capsys.readouterr().out)[("threshold", "level")]
    assert row == ["filters", "threshold", "level", "float", "0.25", "(no help)"]
    assert run_main(["plugins", "--json"]) == 0
    threshold = [e for e in json.loads(capsys.readouterr().out) if e["name"] == "threshold"]
    assert threshold[0]["options"] == [{"name": "level", "type": "float", "default": 0.25,
                                        "value": 0.25, "help": "(no help)"}]


def _check_row_schema(row: dict, n_folds: int) -> None:
    assert set(row) >= {"method", "backbones", "cam", "ensemble", "filter", "thresholds",
                        "metrics", "source", "run"}
    assert row["source"] == "measured"
    assert set(row["metrics"]) == set(METRIC_NAMES)
    for stat in row["metrics"].values():
        assert set(stat) == {"mean", "std", "folds"}
        assert len(stat["folds"]) == n_folds
        assert stat["mean"] == pytest.approx(sum(stat["folds"]) / n_folds)
        assert all(0.0 <= v <= 1.0 for v in stat["folds"])
    assert len(row["thresholds"]) == n_folds
    if row["method"] == "Empty":
        assert row["backbones"] == [] and row["thresholds"] == [None] * n_folds
    else:
        assert all(len(t) == len(row["backbones"]) for t in row["thresholds"])
        assert all(t in [i / 10 for i in range(11)] for ts in row["thresholds"] for t in ts)
    run = row["run"]
    assert set(run) >= {"date", "git_commit", "device", "torch", "wsss_bench", "seed", "config"}
    assert run["config"]["folds"] == n_folds


@pytest.mark.slow
def test_end_to_end_run_with_a_third_party_plugin(use_dist, tmp_path):
    env = one_thread(use_dist("example"))
    lb = tmp_path / "lb"
    done = cli("run", *TINY, "--cams", "gradcam,activation-mean", "--ensembles", "and,or,first",
               "--workdir", str(tmp_path / "w"), "--leaderboard-dir", str(lb), env=env)
    assert done.returncode == 0, done.stderr
    board = json.loads((lb / "phantom.json").read_text())
    assert board["dataset"] == "phantom"
    methods = {r["method"] for r in board["rows"]}
    expected = {"Empty"} | {
        f"{core} / {cam} / none"
        for cam in ("gradcam", "activation-mean")
        for core in (FIRST, SECOND, f"and({FIRST},{SECOND})", f"or({FIRST},{SECOND})",
                     f"first({FIRST},{SECOND})")}
    assert methods == expected, sorted(methods)
    for row in board["rows"]:
        _check_row_schema(row, n_folds=2)
    rows = {r["method"]: r for r in board["rows"]}
    # 'first' keeps the first backbone's mask: with its own thresholds it matches that backbone
    # alone whenever the calibration picks the same first threshold.
    first, single = rows[f"first({FIRST},{SECOND}) / gradcam / none"], rows[
        f"{FIRST} / gradcam / none"]
    for fold in range(2):
        if first["thresholds"][fold][0] == single["thresholds"][fold][0]:
            assert first["metrics"]["paper_miou"]["folds"][fold] == pytest.approx(
                single["metrics"]["paper_miou"]["folds"][fold], abs=1e-12)
    # the Empty row follows the paper_dsc formula 2(1-g)/(3-g) from its own miou (1-g)/2... :
    empty = rows["Empty"]["metrics"]
    for m, d in zip(empty["paper_miou"]["folds"], empty["paper_dsc"]["folds"], strict=True):
        assert d == pytest.approx(2 * m / (1 + m), abs=1e-12)
    assert (tmp_path / "w" / "phantom" / "folds.json").exists()
    md = (lb / "phantom.md").read_text()
    assert "| Empty |" in md and "2m/(1+m)" in md
    assert (lb / "phantom.md").read_text().count("\n| ") == len(board["rows"]) + 1

    # `leaderboard` prints the stored board; a later run replaces only its own rows.
    shown = cli("leaderboard", "--dataset", "phantom", "--leaderboard-dir", str(lb), "--format",
                "json")
    assert json.loads(shown.stdout) == board
    again = cli("run", *TINY, "--ensembles", "and",
                "--seed", "1", "--workdir", str(tmp_path / "w"), "--leaderboard-dir", str(lb),
                env=env)
    assert again.returncode == 0, again.stderr
    merged = {r["method"]: r for r in json.loads((lb / "phantom.json").read_text())["rows"]}
    assert set(merged) == methods
    assert merged[f"and({FIRST},{SECOND}) / gradcam / none"]["run"]["seed"] == 1
    assert merged[f"or({FIRST},{SECOND}) / gradcam / none"]["run"]["seed"] == 0


@pytest.mark.slow
def test_run_evaluates_each_cam_and_records_plugin_options(tmp_path):
    lb = tmp_path / "lb"
    done = cli("run", *FEW_SLICES, "--backbones", "resnet18,resnet34", "--ensembles", "and",
               "--cams", "gradcam,gradcam++,smoothgradcam++", "-o", "smoothgradcam++.samples=2",
               "-o", "smoothgradcam++.sigma=0.1", "--gate", "--workdir", str(tmp_path / "w"),
               "--leaderboard-dir", str(lb), env=one_thread())
    assert done.returncode == 0, done.stderr
    rows = {r["method"]: r for r in json.loads((lb / "phantom.json").read_text())["rows"]}
    for cam in ("gradcam", "gradcam++", "smoothgradcam++[samples=2,sigma=0.1]"):
        for core in ("resnet18", "resnet34", "and(resnet18,resnet34)"):
            row = rows[f"{core} / {cam} / none"]
            _check_row_schema(row, n_folds=2)
            assert row["options"] == ({"smoothgradcam++": {"samples": 2, "sigma": 0.1}}
                                      if "[" in cam else {})
            config = row["run"]["config"]
            assert config["options"]["smoothgradcam++"] == {"samples": "2", "sigma": "0.1"}
            assert config["gate"] is True and config["cam_target"] == "positive"
            settings = row["run"]["plugins"]
            assert settings["smoothgradcam++"] == {"samples": 2, "sigma": 0.1, "seed": 0,
                                                   "max_batch": 256}
            assert settings["phantom"]["n_cases"] == 6 and settings["phantom"]["size"] == 64


@pytest.mark.slow
def test_run_with_every_ensemble_and_filter(tmp_path):
    lb = tmp_path / "lb"
    done = cli("run", *TINY, "--ensembles", "and,or,smaller,bigger,vote,mean",
               "--filters", "none,center-box,brain,brain-band,learned-box",
               "-o", "center-box.side=0.75", "--select-by", "dice_volume",
               "--workdir", str(tmp_path / "w"), "--leaderboard-dir", str(lb), env=one_thread())
    assert done.returncode == 0, done.stderr
    rows = {r["method"]: r for r in json.loads((lb / "phantom.json").read_text())["rows"]}
    filters = ("none", "center-box", "brain", "brain-band", "learned-box")
    cores = ("and(", "or(", "<(", ">(", "vote(", "mean(")  # the paper's symbols for '<' and '>'
    for f in filters:
        shown = "center-box[side=0.75]" if f == "center-box" else f  # its non-default option
        for core in cores:
            row = rows[f"{core}{FIRST},{SECOND}) / gradcam / {shown}"]
            if core == "mean(":  # one threshold for the fused CAM
                assert all(len(t) == 1 for t in row["thresholds"])
            else:
                _check_row_schema(row, n_folds=2)
            assert row["run"]["config"]["select_by"] == "dice_volume"
    assert rows[f"<({FIRST},{SECOND}) / gradcam / none"]["ensemble"] == "smaller"
    assert rows[f"and({FIRST},{SECOND}) / gradcam / center-box[side=0.75]"]["run"]["plugins"][
        "center-box"]["side"] == 0.75
    md = (lb / "phantom.md").read_text()
    assert f"| <({FIRST},{SECOND}) / gradcam / none |" in md
