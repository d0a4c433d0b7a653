"""Atomic writes: a file (temp file in the same folder, fsync, rename), a folder (built beside
its final place, renamed into place), and an exclusive lock (``filelock``: POSIX and Windows).
Every write of the store, the slice cache, downloads and leaderboards goes through here."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from filelock import FileLock

from wsss_bench.errors import UsageError


def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never half.
    A failed write (disk full, no permission) leaves the old file and raises a UsageError."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc}; free space or choose a writable folder; "
                         f"{path} was left as it was") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


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
        place(tmp, final, complete, replace, old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def place(tmp: Path, final: Path, complete: Callable[[Path], bool], replace: bool = False,
          old: Path | None = None) -> None:
    """Rename the finished folder ``tmp`` to ``final`` (see :func:`folder`)."""
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


@contextmanager
def locked(path: Path, timeout: float = -1) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if needed) for the block; other processes
    (and other lock objects of this one) wait. ``timeout`` seconds (-1: forever) then
    ``filelock.Timeout``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path), timeout=timeout):
        yield


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists. POSIX: signal 0; Windows (where ``os.kill`` would end
    the process): OpenProcess and its exit code."""
    if sys.platform == "win32":
        return _alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive_windows(pid: int) -> bool:  # pragma: no cover - Windows only
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # access denied: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
