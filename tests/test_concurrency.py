"""Runs at once on one workdir and leaderboard: each unit is made once (a unit one run is
making is waited for by the other, then reused), no row is lost, ``clean`` never removes a
unit a running run has just made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from wsss_bench.core import store
from wsss_bench.core.store import LOCK_STRIPES, Store

ROOT = Path(__file__).resolve().parents[1]
TINY = ["-o", "phantom.n_cases=6", "-o", "phantom.n_slices=4", "-o", "phantom.size=32",
        "--backbones", "resnet18", "--epochs", "1", "--folds", "2", "--batch-size", "8",
        "--cams", "gradcam", "--ensembles", ""]


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def child(code: str) -> subprocess.Popen:
    """A Python process running ``code``; it prints "ready" when about to do the thing."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def await_ready(proc: subprocess.Popen) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", line + proc.communicate()[1]


def one_file(folder: Path) -> None:
    (folder / "model.pt").write_bytes(b"weights")


def test_claim_waits_for_the_run_making_the_unit_then_reuses_it(tmp_path):
    maker = Store(tmp_path)
    assert maker.claim("cams", ["k2", "k1"]) == ["k1", "k2"]
    waiter = child(f"""
        import json, time
        from wsss_bench.core.store import Store
        store = Store({str(tmp_path)!r})
        print("ready", flush=True)
        start = time.monotonic()
        said = []
        mine = store.claim("cams", ["k1", "k2", "k3"], said.append)
        print(json.dumps([mine, time.monotonic() - start, sorted(store.used), said]))
    """)
    await_ready(waiter)
    time.sleep(1.0)
    assert waiter.poll() is None  # still waiting for k1 and k2
    maker.write("cams", "k1", {}, one_file)
    maker.write("cams", "k2", {}, one_file)
    out, err = waiter.communicate(timeout=60)
    mine, waited, used, said = json.loads(out)
    assert mine == ["k3"] and waited >= 0.9, err  # k1, k2 waited for and reused
    assert used == ["cams/k1", "cams/k2"]
    assert said and all("another run is making it" in line for line in said)


def test_claim_holds_a_bounded_number_of_lock_files(tmp_path):
    work = Store(tmp_path)
    keys = [f"{i:020x}" for i in range(300)]
    assert work.claim("evaluate", keys) == keys
    assert 1 < len(work._stripes) <= LOCK_STRIPES
    assert len(list((tmp_path / "locks").glob("evaluate-*.lock"))) <= LOCK_STRIPES
    for key in keys[:-1]:
        work.write("evaluate", key, {}, lambda _f: {"result": 1})
    assert len(work._stripes) == 1  # the last unit's lock is still held
    work.release("evaluate", keys[-1])
    assert work._stripes == {} and work._claimed == {}


def test_clean_never_removes_a_unit_a_run_is_putting_in_place(tmp_path, monkeypatch):
    work = Store(tmp_path)
    work.start_manifest("run", {})
    cleaners: list[subprocess.Popen] = []
    real_use = Store.use

    def slow_use(self: Store, stage: str, key: str) -> None:
        """Between "renamed into place" and "named in the manifest", clean starts."""
        cleaners.append(child(f"""
            from wsss_bench.core import store
            print("ready", flush=True)
            print(len(store.clean({str(tmp_path)!r})[0]))
        """))
        await_ready(cleaners[-1])
        time.sleep(0.7)  # an unlocked clean would now remove the unit, in no manifest yet
        real_use(self, stage, key)

    monkeypatch.setattr(Store, "use", slow_use)
    work.write("train", "k1", {}, one_file)
    out, err = cleaners[0].communicate(timeout=60)
    assert out.strip() == "0", err  # clean waited for the lock, then found k1 in the manifest
    assert Store(tmp_path).ready("train", "k1")
    assert store.referenced(tmp_path) == {"train/k1"}


def start_run(work: Path, boards: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "wsss_bench.cli", "run", *TINY, *extra, "--workdir", str(work),
         "--leaderboard-dir", str(boards)], env=env(), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_two_runs_at_once_make_each_unit_once_and_lose_no_row(tmp_path):
    work, boards = tmp_path / "w", tmp_path / "b"
    # the same classifiers and CAMs; different filters, so each run adds its own row
    runs = [start_run(work, boards, "--filters", "none"),
            start_run(work, boards, "--filters", "center-box")]
    logs = [proc.communicate(timeout=600)[1] for proc in runs]
    assert [proc.returncode for proc in runs] == [0, 0], logs
    both = "".join(logs)
    assert both.count("epochs, loss") == 2 and both.count(" maps (") == 2  # made once...
    assert both.count(": reused (unit") == 2 + 2  # ...and reused by the other run
    pids = {proc.pid for proc in runs}
    for stage, count in (("train", 2), ("cams", 2), ("evaluate", 4)):
        made = [json.loads(p.read_text()) for p in (work / "units" / stage).glob("*/unit.json")]
        assert len(made) == count and {m["pid"] for m in made} <= pids
        assert all(store.problem(work / "units" / stage / m["key"], m["key"]) is None
                   for m in made)
    assert [p.name for s in store.STAGES for p in (work / "units" / s).glob(".*")] == []
    board = json.loads((boards / "phantom.json").read_text())
    methods = sorted(r["method"] for r in board["rows"])
    assert methods == ["Empty", "resnet18 / gradcam / center-box", "resnet18 / gradcam / none"]
    assert [p.name for p in boards.iterdir() if p.name.endswith(".tmp")] == []
