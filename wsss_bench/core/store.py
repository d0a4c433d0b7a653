"""The artifact store: each stage's result is a unit keyed by a hash of what it depends on.

A unit lives in ``<workdir>/units/<stage>/<key>/``: its files plus ``unit.json`` (the stage,
the JSON description its key hashes, when it was made, and each file's size and sha256). A
unit is written into a hidden temporary folder and renamed into place when complete, so a run
killed at any moment leaves either the finished unit or nothing (a stale temporary folder is
removed by the next write or by ``wsss-bench clean``). A unit is reused only when every file
it records is there with its size and digest; any other unit is recomputed. Each run records
the units it used in ``<workdir>/manifests/``; ``clean`` removes the units no manifest names.

Concurrent runs on one workdir: :meth:`Store.claim` locks the units a run is to make (lock
files under ``<workdir>/locks/``, taken in sorted order), so another run waits for them and
then reuses them; ``<workdir>/.store.lock`` is held by ``clean`` and around each unit's
"put in place (or found ready) + named in the manifest", so clean never removes a unit a
running run has just made or chosen to reuse.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from wsss_bench.core import atomic
from wsss_bench.errors import UsageError

STAGES = ("train", "cams", "evaluate")
UNIT_FILE = "unit.json"
STORE_LOCK = ".store.lock"
LOCK_STRIPES = 64  # lock files per stage: units share them by a hash of their key


def digest(description: Any) -> str:
    """A stable 20-hex-digit key of a JSON-able description."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


def file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file under ``folder`` but unit.json."""
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size,
                                               "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != UNIT_FILE}


def meta_sha256(meta: dict[str, Any]) -> str:
    """The sha256 of a unit's metadata (its results too, for an evaluate unit) without the
    field that records it."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def problem(folder: Path, key: str) -> str | None:
    """Why the unit in ``folder`` cannot be trusted (one phrase), or None when it is whole."""
    try:
        return _problem(folder, key)
    except OSError as exc:  # replaced or removed by another run while it was read
        return f"it could not be read ({exc})"


def _problem(folder: Path, key: str) -> str | None:
    try:
        meta = json.loads((folder / UNIT_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{UNIT_FILE} is unreadable ({exc})"
    if not isinstance(meta, dict) or meta.get("key") != key:
        return f"{UNIT_FILE} does not describe unit {key}"
    files = meta.get("files")
    if not isinstance(files, dict) or "meta_sha256" not in meta:
        return f"{UNIT_FILE} records no checksums (made by an older wsss-bench)"
    if meta_sha256(meta) != meta["meta_sha256"]:
        return f"{UNIT_FILE} does not match its recorded sha256 (edited or corrupted)"
    for name, want in sorted(files.items()):
        path = folder / name
        if not isinstance(want, dict) or ".." in Path(name).parts or Path(name).is_absolute():
            return f"{UNIT_FILE} has a malformed entry for {name!r}"
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != want.get("bytes"):
            return f"{name} has {size} bytes, {UNIT_FILE} records {want.get('bytes')}"
        if file_sha256(path) != want.get("sha256"):
            return f"{name} does not match its sha256 in {UNIT_FILE} (corrupted)"
    return None


class Store:
    """Units under ``<workdir>/units``; ``force`` names stages to recompute in this run."""

    def __init__(self, workdir: Path, force: Iterable[str] = (),
                 checks: dict[str, Callable[[dict[str, Any]], str | None]] | None = None
                 ) -> None:
        self.workdir = Path(workdir)
        # per stage: why a whole unit's metadata is still not usable (made before its stage
        # stored what this version needs), or None; such a unit is remade
        self.checks = dict(checks or {})
        self.root = self.workdir / "units"
        self.force = set(force)
        self.used: set[str] = set()  # "<stage>/<key>" of every unit this run touched
        self.redone: set[str] = set()  # units recomputed under --force in this run
        self.rejected: dict[str, str] = {}  # "<stage>/<key>" found untrusted: why
        self.manifest: Path | None = None  # rewritten whenever a unit is used
        self.manifest_extra: dict[str, Any] = {}
        self._verified: dict[str, tuple[tuple[int, int, int], str | None]] = {}
        self._claimed: dict[str, FileLock] = {}  # "<stage>/<key>" → its stripe's lock
        self._stripes: dict[str, FileLock] = {}  # lock file → lock held by this run
        self._lock = FileLock(str(self.workdir / STORE_LOCK), thread_local=False)

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def ready(self, stage: str, key: str) -> bool:
        """Whether the unit exists whole (checked once per process, again if its unit.json
        changes) and is not to be recomputed under ``--force``. An untrusted unit is not ready
        and ``rejected`` says why."""
        name = f"{stage}/{key}"
        folder = self.path(stage, key)
        try:
            stat = (folder / UNIT_FILE).stat()
        except OSError:
            if folder.is_dir():
                self.rejected[name] = f"{UNIT_FILE} is missing"
            return False
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        cached = self._verified.get(name)
        if cached is None or cached[0] != signature:
            cached = self._verified[name] = (signature, problem(folder, key)
                                             or self._outdated(stage, key))
        if cached[1] is not None:
            self.rejected[name] = cached[1]
            return False
        return not (stage in self.force and name not in self.redone)

    def _outdated(self, stage: str, key: str) -> str | None:
        check = self.checks.get(stage)
        return None if check is None else check(self.info(stage, key))

    def info(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / UNIT_FILE).read_text())

    def write(self, stage: str, key: str, description: Any,
              fill: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Make the unit: ``fill(folder)`` writes its files (and may return extra metadata);
        then it is put in place (replacing an old one) and this run's claim on it released.
        A failed write (disk full) stores nothing and raises a UsageError."""
        final = self.path(stage, key)
        tmp: Path | None = None
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
            extra = fill(tmp) or {}
            meta = {"stage": stage, "key": key, "made": time.time(), "pid": os.getpid(),
                    "description": description, **extra, "files": checksums(tmp)}
            meta = json.loads(json.dumps(meta, default=str))  # exactly what is read back
            meta["meta_sha256"] = meta_sha256(meta)
            (tmp / UNIT_FILE).write_text(json.dumps(meta, indent=1, default=str))
            with self._lock:
                atomic.place(tmp, final, complete=lambda f: problem(f, key) is None,
                             replace=True, old=final.with_name(f".{key}.old-{os.getpid()}"))
                self.redone.add(f"{stage}/{key}")
                self.rejected.pop(f"{stage}/{key}", None)
                self.use(stage, key)
        except OSError as exc:
            raise UsageError(f"cannot store unit {stage}/{key} in {self.root}: {exc}; free "
                             f"space or pass --workdir on another disk; nothing was stored"
                             ) from None
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            self.release(stage, key)
        return final

    def use(self, stage: str, key: str) -> None:
        name = f"{stage}/{key}"
        if name not in self.used:
            self.used.add(name)
            self._save_manifest()

    def reuse(self, stage: str, key: str) -> bool:
        """If the unit is ready, name it in the manifest (under the store lock, so ``clean``
        cannot remove it in between) and return True."""
        if not self.ready(stage, key):  # hash outside the lock; checked again (cached) inside
            return False
        with self._lock:
            if not self.ready(stage, key):
                return False
            self.use(stage, key)
        return True

    def claim(self, stage: str, keys: Iterable[str],
              waiting: Callable[[str], None] | None = None) -> list[str]:
        """The keys of ``stage`` this run must make, locked so that another run waits for
        them; the others (ready, or finished by another run while this one waited) are reused
        (see :meth:`reuse`). Call once per stage with all its keys: the locks are taken in
        sorted order, so runs never deadlock. ``write`` or ``release`` frees each claim.
        ``waiting(line)`` is told when another run holds a lock this one waits for."""
        todo = [key for key in sorted(set(keys)) if not self.reuse(stage, key)]
        stripes: dict[Path, list[str]] = {}
        for key in todo:
            stripes.setdefault(self._stripe(stage, key), []).append(key)
        mine = []
        for lock_path in sorted(stripes):
            lock = self._stripes.get(str(lock_path))
            if lock is None:
                lock_path.parent.mkdir(parents=True, exist_ok=True)
                lock = FileLock(str(lock_path), thread_local=False)
                try:
                    lock.acquire(timeout=0)
                except Timeout:
                    if waiting is not None:
                        waiting(f"unit {stage}/{stripes[lock_path][0]}: another run is making "
                                f"it (or a unit sharing its lock {lock_path.name}); waiting")
                    lock.acquire()
                self._stripes[str(lock_path)] = lock
            for key in stripes[lock_path]:
                if not self.reuse(stage, key):
                    self._claimed[f"{stage}/{key}"] = lock
                    mine.append(key)
            self._drop_unclaimed()
        return sorted(mine)

    def release(self, stage: str, key: str) -> None:
        """Give up this run's claim on a unit (it failed); no-op when not claimed."""
        if self._claimed.pop(f"{stage}/{key}", None) is not None:
            self._drop_unclaimed()

    def release_all(self) -> None:
        """Give up every claim (the run ends, finished or not)."""
        self._claimed.clear()
        self._drop_unclaimed()

    def _stripe(self, stage: str, key: str) -> Path:
        index = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % LOCK_STRIPES
        return self.workdir / "locks" / f"{stage}-{index:02d}.lock"

    def _drop_unclaimed(self) -> None:
        """Release the lock files no claimed unit needs any more."""
        needed = {id(lock) for lock in self._claimed.values()}
        for path, lock in list(self._stripes.items()):
            if id(lock) not in needed:
                lock.release(force=True)
                del self._stripes[path]

    def start_manifest(self, name: str, extra: dict[str, Any]) -> Path:
        """Record, from now on and after every new unit, the units this run uses: ``clean``
        keeps exactly the recorded ones, also those of a run that was killed."""
        self.manifest = self.workdir / "manifests" / f"{name}.json"
        self.manifest_extra = extra
        self._save_manifest()
        return self.manifest

    def _save_manifest(self) -> None:
        if self.manifest is not None:
            atomic.write_text(self.manifest, json.dumps(
                {"units": sorted(self.used), **self.manifest_extra}, indent=1, default=str))


def referenced(workdir: Path) -> set[str]:
    """``<stage>/<key>`` of every unit some manifest names, and the slice caches they name."""
    keep: set[str] = set()
    for manifest in sorted((Path(workdir) / "manifests").glob("*.json")):
        try:
            data = json.loads(manifest.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UsageError(f"{manifest}: unreadable run manifest ({exc}); nothing was "
                             f"removed: fix or delete it, then clean again") from None
        if not isinstance(data, dict) or not isinstance(data.get("units", []), list):
            raise UsageError(f"{manifest}: not a wsss-bench run manifest; nothing was removed: "
                             f"fix or delete it, then clean again")
        keep.update(data.get("units", []))
        if data.get("cache"):
            keep.add(f"cache/{Path(data['cache']).name}")
    return keep


def clean(workdir: Path, dry_run: bool = False) -> tuple[list[Path], int]:
    """Remove units (and slice caches) that no manifest references, and temporary folders
    left by killed runs. Returns the removed paths and the bytes freed."""
    workdir = Path(workdir)
    if not workdir.is_dir():
        return [], 0
    with atomic.locked(workdir / STORE_LOCK):  # no run puts a unit in place meanwhile
        return _clean(workdir, dry_run)


def _clean(workdir: Path, dry_run: bool) -> tuple[list[Path], int]:
    keep = referenced(workdir)
    removed: list[Path] = []
    freed = 0
    candidates = [p for stage in STAGES for p in sorted((workdir / "units" / stage).glob("*"))]
    candidates += sorted((workdir / "cache").glob("*"))
    for path in candidates:
        if path.name.startswith(".tmp-"):  # a slice-cache pass in progress or killed
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and atomic.pid_alive(int(pid)):
                continue
        elif path.name.startswith("."):  # a unit being written, or left by a killed run
            if path.stat().st_mtime > time.time() - 3600 and not path.name.count(".old-"):
                continue  # maybe still being written: leave it for an hour
        elif f"{path.parent.name}/{path.name}" in keep:
            continue
        freed += sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        removed.append(path)
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
    return removed, freed

