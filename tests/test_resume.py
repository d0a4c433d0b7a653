"""A run killed at any moment resumes: same leaderboard, finished units never redone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_store import measured, units

pytestmark = pytest.mark.slow

# smoothgradcam++ with 2 noisy copies (3 passes with its clean one) makes each CAM unit take
# seconds, so a kill sent when one CAM unit is reported lands in the next (the next is
# resnet34's, the slower backbone); more copies would only make every run of this module slower
# ResNets, not the default's small models: their units take long enough for the kills to land
ARGS = ["--backbones", "resnet18,resnet34", "-o", "phantom.n_cases=6", "-o", "phantom.n_slices=8",
        "--folds", "2", "--epochs", "1",
        "--batch-size", "8", "--cams", "smoothgradcam++", "-o", "smoothgradcam++.samples=2",
        "--ensembles", "and"]


def env() -> dict[str, str]:
    """Every run of this module computes on one CPU thread: the interrupted runs, the resumed
    one and the uninterrupted one alike (tiny tensors; more threads per pytest-xdist worker
    only contend for the cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def start(workdir: Path, boards: Path) -> subprocess.Popen:
    """The run as a user starts it: Ctrl-C (SIGINT) at its default, even when this process
    ignores it (a pytest-xdist worker does, and a child would inherit that)."""
    return subprocess.Popen(
        [sys.executable, "-m", "wsss_bench.cli", "run", *ARGS, "--workdir", str(workdir),
         "--leaderboard-dir", str(boards)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
        text=True, env=env(), preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def run_until(workdir: Path, boards: Path, line_start: str, sig: int) -> tuple[int, list[str]]:
    """Start a run, send ``sig`` as soon as a stderr line starts with ``line_start``."""
    proc = start(workdir, boards)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith(line_start):
            proc.send_signal(sig)
            break
    else:
        proc.wait()
        pytest.fail(f"never saw {line_start!r}: {lines}")
    lines += [line.rstrip("\n") for line in proc.stderr]
    return proc.wait(timeout=120), lines


def test_killed_during_cams_and_during_training_then_resumed(tmp_path):
    work, boards = tmp_path / "w", tmp_path / "b"
    # 1. killed while training the second classifier (the first one's training has finished)
    code, log1 = run_until(work, boards, "train resnet18 fold 1/2:", signal.SIGKILL)
    assert code == -signal.SIGKILL
    trained = units(work, "train")
    assert len(trained) == 1 and units(work, "cams") == {}
    assert not (boards / "phantom.json").exists()

    # 2. resumed (the 3 other classifiers trained, the stored one reused), then killed while
    #    making the CAMs of the second classifier
    code, log2 = run_until(work, boards, "cams smoothgradcam++ resnet18 fold 1/2:",
                           signal.SIGKILL)
    assert code == -signal.SIGKILL
    assert any(line.startswith("train resnet18 fold 1/2: reused") for line in log2)
    assert sum("epochs, loss" in line for line in log2) == 3  # only the 3 unfinished units
    all_trained = units(work, "train")
    assert len(all_trained) == 4 and all(all_trained[k] == v for k, v in trained.items())
    mapped = units(work, "cams")
    assert len(mapped) == 1

    # 3. resumed to the end: nothing trained again, the finished CAM unit reused
    done = subprocess.run([sys.executable, "-m", "wsss_bench.cli", "run", *ARGS, "--workdir",
                           str(work), "--leaderboard-dir", str(boards)], capture_output=True,
                          text=True, env=env(), check=False)
    assert done.returncode == 0, done.stderr
    log3 = done.stderr.splitlines()
    assert sum(": reused (unit" in line and line.startswith("train") for line in log3) == 4
    assert any(line.startswith("cams smoothgradcam++ resnet18 fold 1/2: reused")
               for line in log3)
    assert sum("epochs, loss" in line for line in log3) == 0
    assert units(work, "train") == all_trained
    assert all(units(work, "cams")[k] == v for k, v in mapped.items())
    assert len(units(work, "cams")) == 4

    # the same leaderboard as an uninterrupted run
    clean = subprocess.run([sys.executable, "-m", "wsss_bench.cli", "run", *ARGS, "-q",
                            "--workdir", str(tmp_path / "w2"), "--leaderboard-dir",
                            str(tmp_path / "b2")], capture_output=True, text=True, env=env(),
                           check=False)
    assert clean.returncode == 0, clean.stderr
    assert measured(boards) == measured(tmp_path / "b2")


def test_sigint_stops_cleanly_and_says_how_to_resume(tmp_path):
    work, boards = tmp_path / "w", tmp_path / "b"
    code, log = run_until(work, boards, "train resnet18 fold 1/2:", signal.SIGINT)
    assert code == 130, log
    assert "Traceback" not in "\n".join(log)
    assert log[-1] == (f"wsss-bench run: interrupted; finished units are kept in {work}/units: "
                       f"run the same command again to resume")
    assert not (boards / "phantom.json").exists()
    leftovers = [p for p in (work / "units").rglob(".*")] if (work / "units").exists() else []
    assert leftovers == []
    # the run's manifest names exactly the finished units, so `clean` keeps them for a resume
    (manifest,) = (work / "manifests").glob("*.json")
    named = json.loads(manifest.read_text())["units"]
    assert any(u.startswith("train/") for u in named)
    for unit in named:
        assert (work / "units" / unit / "unit.json").is_file()
    # whatever unit directories exist are whole (the interrupted one was never renamed in)
    for unit in (work / "units").glob("*/*") if (work / "units").exists() else []:
        assert (unit / "unit.json").is_file()
