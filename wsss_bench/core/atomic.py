"""Atomic writes: a file (temp file in the same folder, fsync, rename), a folder (built beside
its final place, renamed into place), and an exclusive lock. Every write of the store, the
slice cache, downloads and leaderboards goes through here."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


@contextmanager
def folder(final: Path, tmp: Path, complete: Callable[[Path], bool], replace: bool = False,
           old: Path | None = None) -> Iterator[Path]:
    """Build a folder in ``tmp`` (beside ``final``; yielded) and rename it to ``final`` when
    the block ends without an error: readers see the whole folder or none, and a failed or
    killed write leaves at most ``tmp`` (removed here, or later by ``wsss-bench clean``).

    ``replace``: an existing ``final`` is moved to ``old`` and deleted first. When another
    process renamed its own ``final`` into place first, theirs is kept if ``complete(final)``.
    """
    final, tmp = Path(final), Path(tmp)
    final.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if replace and final.exists():
            aside = old or final.with_name(f".{final.name}.old-{os.getpid()}")
            with suppress(FileNotFoundError):  # another run replaced it first
                os.replace(final, aside)
            shutil.rmtree(aside, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same folder first: theirs is as good
            if not complete(final):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if needed) for the block."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
