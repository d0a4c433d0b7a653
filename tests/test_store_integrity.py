"""Nothing wrong gets into the store: portable locks, checksummed units that are recomputed
when they cannot be trusted, and write faults (a full disk) that store nothing and say so."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from wsss_bench.core import atomic, leaderboard, store
from wsss_bench.core.store import Store
from wsss_bench.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]
POSIX_ONLY = ("fcntl", "pwd", "grp", "resource", "termios")
ENOSPC = OSError(errno.ENOSPC, "No space left on device")


def python(code: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout, check=False)


def test_every_module_imports_without_posix_only_modules():
    done = python(f"""
        import importlib, pkgutil, sys, warnings
        warnings.simplefilter("ignore")
        for name in {POSIX_ONLY!r}:
            sys.modules[name] = None  # as on Windows: importing it fails
        import wsss_bench, wsss_bench_plugins
        names = []
        for package in (wsss_bench, wsss_bench_plugins):
            names.append(package.__name__)
            names += [m.name for m in pkgutil.walk_packages(package.__path__,
                                                             package.__name__ + ".")]
        failed = []
        for name in names:
            try:
                importlib.import_module(name)
            except ImportError as exc:
                failed.append(f"{{name}}: {{exc}}")
        print(len(names), "modules")
        print("\\n".join(failed))
    """)
    assert done.returncode == 0, done.stderr
    count, *failed = done.stdout.strip().splitlines()
    assert int(count.split()[0]) > 20  # the walk found the modules
    assert "wsss_bench.core.atomic" not in "".join(failed)
    assert [f for f in failed if any(m in f for m in POSIX_ONLY)] == [], failed


def test_locked_excludes_another_process(tmp_path):
    lock = tmp_path / "board.lock"
    child = f"""
        import filelock
        from wsss_bench.core import atomic
        try:
            with atomic.locked({str(lock)!r}, timeout=0.5):
                print("acquired")
        except filelock.Timeout:
            print("timeout")
    """
    with atomic.locked(lock):
        held = python(child)
    assert held.stdout.strip() == "timeout", held.stderr
    free = python(child)
    assert free.stdout.strip() == "acquired", free.stderr


def test_pid_alive():
    assert atomic.pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not atomic.pid_alive(proc.pid)


def fill(folder: Path) -> dict:
    (folder / "cams.npy").write_bytes(b"maps" * 100)
    (folder / "sub").mkdir()
    (folder / "sub" / "model.pt").write_bytes(b"weights")
    return {"output_stride": 8}


def test_unit_json_records_size_and_sha256_of_every_file(tmp_path):
    Store(tmp_path).write("cams", "k1", {"d": 1}, fill)
    meta = json.loads((tmp_path / "units" / "cams" / "k1" / "unit.json").read_text())
    assert meta["files"] == {
        "cams.npy": {"bytes": 400, "sha256": hashlib.sha256(b"maps" * 100).hexdigest()},
        "sub/model.pt": {"bytes": 7, "sha256": hashlib.sha256(b"weights").hexdigest()}}
    assert meta["output_stride"] == 8 and meta["description"] == {"d": 1}
    assert Store(tmp_path).ready("cams", "k1")


def truncate(unit: Path) -> None:
    (unit / "cams.npy").write_bytes(b"maps" * 50)


def flip(unit: Path) -> None:
    (unit / "cams.npy").write_bytes(b"mapz" + b"maps" * 99)  # same size


def delete(unit: Path) -> None:
    (unit / "sub" / "model.pt").unlink()


def garble(unit: Path) -> None:
    (unit / "unit.json").write_text('{"stage": "cams", "key": ')


def old_version(unit: Path) -> None:
    meta = json.loads((unit / "unit.json").read_text())
    del meta["files"], meta["meta_sha256"]
    (unit / "unit.json").write_text(json.dumps(meta))


def edit_result(unit: Path) -> None:
    """An evaluate unit's numbers live in unit.json: change one, as a bit flip or a hand would."""
    meta = json.loads((unit / "unit.json").read_text())
    meta["output_stride"] = 16
    (unit / "unit.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(("damage", "reason"), [
    (truncate, "cams.npy has 200 bytes, unit.json records 400"),
    (flip, "cams.npy does not match its sha256"),
    (delete, "sub/model.pt is missing"),
    (garble, "unit.json is unreadable"),
    (old_version, "records no checksums (made by an older wsss-bench)"),
    (edit_result, "unit.json does not match its recorded sha256 (edited or corrupted)"),
])
def test_an_untrusted_unit_is_not_ready_and_is_recomputed(tmp_path, damage, reason):
    Store(tmp_path).write("cams", "k1", {}, fill)
    damage(tmp_path / "units" / "cams" / "k1")
    again = Store(tmp_path)
    assert not again.ready("cams", "k1")
    assert reason in again.rejected["cams/k1"]
    assert again.claim("cams", ["k1"]) == ["k1"]  # this run makes it again
    again.write("cams", "k1", {}, fill)
    assert Store(tmp_path).ready("cams", "k1") and "cams/k1" not in again.rejected
    assert [p.name for p in (tmp_path / "units" / "cams").iterdir()] == ["k1"]


def test_a_unit_is_hashed_once_per_process(tmp_path, monkeypatch):
    Store(tmp_path).write("cams", "k1", {}, fill)
    hashed = []
    real = store.file_sha256
    monkeypatch.setattr(store, "file_sha256", lambda p: hashed.append(p) or real(p))
    reader = Store(tmp_path)
    assert reader.ready("cams", "k1") and reader.ready("cams", "k1")
    assert reader.claim("cams", ["k1"]) == []
    assert len(hashed) == 2  # the two files, once
    flip(tmp_path / "units" / "cams" / "k1")
    old_version(tmp_path / "units" / "cams" / "k1")  # unit.json changed: checked again
    assert not reader.ready("cams", "k1")


def test_a_full_disk_stores_no_unit_and_says_how_to_fix_it(tmp_path):
    work = Store(tmp_path)
    assert work.claim("cams", ["k1"]) == ["k1"]

    def full(folder: Path) -> None:
        (folder / "cams.npy").write_bytes(b"half")
        raise OSError(ENOSPC.errno, ENOSPC.strerror)

    with pytest.raises(UsageError) as caught:
        work.write("cams", "k1", {}, full)
    assert str(caught.value) == (
        f"cannot store unit cams/k1 in {tmp_path / 'units'}: [Errno 28] No space left on "
        f"device; free space or pass --workdir on another disk; nothing was stored")
    assert list((tmp_path / "units" / "cams").iterdir()) == []  # no unit, no temp folder
    assert not work.ready("cams", "k1") and work.used == set()
    assert work._claimed == {} and work._stripes == {}  # the claim went with the failure


def test_a_full_disk_leaves_the_old_leaderboard(tmp_path, monkeypatch):
    board = leaderboard.update(tmp_path, "phantom", [], {"command": "first"})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full(_fd: int) -> None:
        raise OSError(ENOSPC.errno, ENOSPC.strerror)

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(UsageError, match=r"cannot write .*phantom\.json: \[Errno 28\] No space "
                                         r"left on device; free space .* was left as it was"):
        leaderboard.update(tmp_path, "phantom", [], {"command": "second"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert board["command"] == "first"


@pytest.mark.slow
def test_a_full_disk_during_a_run_is_one_line_and_exit_status_2(tmp_path, monkeypatch, capsys):
    from tests.test_cli import run_captured
    from tests.test_concurrency import TINY
    from wsss_bench.pipeline import train

    def full(_result: object, folder: Path) -> None:
        (folder / "model.pt").write_bytes(b"half")
        raise OSError(ENOSPC.errno, ENOSPC.strerror)

    monkeypatch.setattr(train, "store_files", full)
    work = tmp_path / "w"
    code, err = run_captured(["run", *TINY, "-q", "--workdir", str(work), "--leaderboard-dir",
                              str(tmp_path / "b")], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wsss-bench run: error: cannot store unit train/")
    assert lines[0].endswith(f"in {work / 'units'}: [Errno 28] No space left on device; free "
                             f"space or pass --workdir on another disk; nothing was stored")
    assert list((work / "units" / "train").iterdir()) == []
    assert not (tmp_path / "b").exists()
