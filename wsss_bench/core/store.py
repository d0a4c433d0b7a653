"""The artifact store: each stage's result is a unit keyed by a hash of what it depends on.

A unit lives in ``<workdir>/units/<stage>/<key>/``: its files plus ``unit.json`` (the stage,
the JSON description its key hashes, and when it was made). A unit is written into a hidden
temporary folder and renamed into place when complete, so a unit that exists is whole: a run
killed at any moment leaves either the finished unit or nothing (a stale temporary folder is
removed by the next write or by ``wsss-bench clean``). Each run records the units it used in
``<workdir>/manifests/``; ``clean`` removes the units no manifest names.
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

from wsss_bench.core import atomic
from wsss_bench.errors import UsageError

STAGES = ("train", "cams", "evaluate")
UNIT_FILE = "unit.json"


def digest(description: Any) -> str:
    """A stable 20-hex-digit key of a JSON-able description."""
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:20]


class Store:
    """Units under ``<workdir>/units``; ``force`` names stages to recompute in this run."""

    def __init__(self, workdir: Path, force: Iterable[str] = ()) -> None:
        self.workdir = Path(workdir)
        self.root = self.workdir / "units"
        self.force = set(force)
        self.used: set[str] = set()  # "<stage>/<key>" of every unit this run touched
        self.redone: set[str] = set()  # units recomputed under --force in this run
        self.manifest: Path | None = None  # rewritten whenever a unit is used
        self.manifest_extra: dict[str, Any] = {}

    def path(self, stage: str, key: str) -> Path:
        return self.root / stage / key

    def ready(self, stage: str, key: str) -> bool:
        """Whether the unit exists (and is not to be recomputed under ``--force``)."""
        done = (self.path(stage, key) / UNIT_FILE).is_file()
        if done and stage in self.force and f"{stage}/{key}" not in self.redone:
            return False
        return done

    def info(self, stage: str, key: str) -> dict[str, Any]:
        return json.loads((self.path(stage, key) / UNIT_FILE).read_text())

    def write(self, stage: str, key: str, description: Any,
              fill: Callable[[Path], dict[str, Any] | None]) -> Path:
        """Make the unit: ``fill(folder)`` writes its files (and may return extra metadata)."""
        final = self.path(stage, key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=final.parent))
        with atomic.folder(final, tmp, complete=lambda f: (f / UNIT_FILE).is_file(),
                           replace=True, old=final.with_name(f".{key}.old-{os.getpid()}")):
            extra = fill(tmp) or {}
            meta = {"stage": stage, "key": key, "made": time.time(), "pid": os.getpid(),
                    "description": description, **extra}
            (tmp / UNIT_FILE).write_text(json.dumps(meta, indent=1, default=str))
        self.redone.add(f"{stage}/{key}")
        self.use(stage, key)
        return final

    def use(self, stage: str, key: str) -> None:
        name = f"{stage}/{key}"
        if name not in self.used:
            self.used.add(name)
            self._save_manifest()

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
    keep = referenced(workdir)
    removed: list[Path] = []
    freed = 0
    candidates = [p for stage in STAGES for p in sorted((workdir / "units" / stage).glob("*"))]
    candidates += sorted((workdir / "cache").glob("*"))
    for path in candidates:
        if path.name.startswith(".tmp-"):  # a slice-cache pass in progress or killed
            pid = path.name.rsplit("-", 1)[-1]
            if pid.isdigit() and _alive(int(pid)):
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
