"""Downloading and unpacking a dataset archive: resumable, verified, safely and atomically.

``fetch(archive, data_dir)``:

1. ``<data_dir>/<folder>`` exists → nothing to do (only a finished extraction has that name).
2. Otherwise the tar is downloaded to ``<data_dir>/<file>.part``; an interrupted download is
   resumed with an HTTP ``Range`` request (also within one call: a cut connection is retried),
   then renamed to ``<data_dir>/<file>``. A tar the user put there by hand is used as is.
3. Its md5 must match; a mismatch deletes the file and is an error.
4. Every member is checked before anything is written: no absolute path, no ``..`` that leaves
   the target, no link that points out of it, no device or FIFO, everything under ``<folder>/``.
   The members are extracted into a hidden temporary folder beside the target, which is renamed
   to ``<folder>`` only when complete, so a half-extracted tree is never taken for data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import urlparse

from wsss_bench.core import atomic
from wsss_bench.core.progress import Reporter
from wsss_bench.errors import UsageError

CHUNK = 1 << 20
ATTEMPTS = 5
TIMEOUT_S = 60


class DownloadError(UsageError):
    """The archive cannot be downloaded, verified or unpacked."""


@dataclass(frozen=True)
class Archive:
    """A dataset archive: where to get it, its md5, and the folder it unpacks to."""

    url: str
    md5: str
    folder: str

    @property
    def filename(self) -> str:
        return PurePosixPath(urlparse(self.url).path).name or f"{self.folder}.tar"


def md5sum(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(archive: Archive, data_dir: Path, reporter: Reporter | None = None) -> Path:
    """``<data_dir>/<archive.folder>``, downloading and unpacking the archive if needed."""
    reporter = reporter or Reporter(quiet=True)
    data_dir = Path(data_dir)
    target = data_dir / archive.folder
    if target.is_dir():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    tar_path = data_dir / archive.filename
    if not tar_path.is_file():
        download(archive.url, tar_path, reporter)
    actual = md5sum(tar_path)
    if actual != archive.md5:
        tar_path.unlink()
        raise DownloadError(f"{tar_path}: md5 {actual} does not match the expected "
                            f"{archive.md5}; the file was deleted, run again to download it "
                            f"afresh from {archive.url}")
    reporter.summary(f"[bold]download[/] {tar_path.name}: md5 verified, extracting")
    extract(tar_path, data_dir, archive.folder)
    reporter.summary(f"[bold]download[/] {archive.folder} ready in {data_dir} (you may delete "
                     f"{tar_path.name})")
    return target


def download(url: str, dest: Path, reporter: Reporter, attempts: int = ATTEMPTS) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming after cut connections."""
    part = dest.with_name(dest.name + ".part")
    failure = ""
    for _ in range(attempts):
        try:
            if _download_once(url, part, reporter):
                os.replace(part, dest)
                return
            failure = "the connection closed before the end of the file"
        except urllib.error.HTTPError as exc:
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; "
                                f"download it by hand and put it at {dest}") from None
        except ValueError as exc:  # not a URL urllib can open
            raise DownloadError(f"cannot download {url!r}: {exc}; check the dataset's url "
                                f"option") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(exc, urllib.error.URLError) and not part.exists():
                raise DownloadError(f"cannot download {url} ({reason}); without internet, "
                                    f"download it elsewhere and put it at {dest}") from None
            failure = str(reason)
    raise DownloadError(f"cannot download {url}: {failure} ({attempts} attempts; "
                        f"{_size(part)} bytes kept in {part}, run again to resume, or put the "
                        f"whole file at {dest})")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _download_once(url: str, part: Path, reporter: Reporter) -> bool:
    """One request, appending to ``part`` from its current size; True when the file is whole."""
    have = _size(part)
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)  # noqa: S310 (http/https)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the part file is complete
            return True
        raise
    with response:
        if have and response.status != 206:  # the server ignored Range: start again
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with open(part, "ab" if have else "wb") as fh, \
                reporter.task(f"download {part.name[:-5]}", total=total or 0) as advance:
            advance(have)
            while True:
                try:
                    block = response.read(CHUNK)
                except Exception as exc:  # http.client.IncompleteRead and friends
                    raise OSError(f"connection lost: {exc}") from None
                if not block:
                    break
                fh.write(block)
                advance(len(block))
            fh.flush()
            os.fsync(fh.fileno())
    return total is None or _size(part) >= total


def _checked_members(tar: tarfile.TarFile, tar_path: Path, folder: str) -> list[tarfile.TarInfo]:
    """The archive's members, each proved safe to extract under the target folder."""
    members = tar.getmembers()
    for m in members:
        name = PurePosixPath(m.name)
        where = f"{tar_path}: member {m.name!r}"
        if name.is_absolute() or ".." in name.parts:
            raise DownloadError(f"{where} has an absolute or '..' path that would escape the "
                                f"target folder; refusing to extract this archive")
        if not name.parts or name.parts[0] != folder:
            raise DownloadError(f"{where} lies outside {folder}/; refusing to extract this "
                                f"archive")
        if m.isdev():
            raise DownloadError(f"{where} is a device or FIFO; refusing to extract this archive")
        if m.issym() or m.islnk():
            link = PurePosixPath(m.linkname)
            resolved = (name.parent / link) if m.issym() else link
            if link.is_absolute() or not _inside(resolved, folder):
                raise DownloadError(f"{where} is a link to {m.linkname!r} outside {folder}/; "
                                    f"refusing to extract this archive")
        elif not (m.isfile() or m.isdir()):
            raise DownloadError(f"{where} is neither a file, a folder nor a link; refusing to "
                                f"extract this archive")
    return members


def _inside(path: PurePosixPath, folder: str) -> bool:
    """Whether ``path`` (relative, possibly with '..') stays inside ``folder/`` lexically."""
    parts: list[str] = []
    for part in path.parts:
        if part == "..":
            if not parts:
                return False
            parts.pop()
        elif part not in ("", "."):
            parts.append(part)
    return bool(parts) and parts[0] == folder


def extract(tar_path: Path, data_dir: Path, folder: str) -> Path:
    """Extract ``tar_path`` (checked member by member) to ``data_dir/folder``, atomically."""
    target = data_dir / folder
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.extracting-", dir=data_dir))
    try:  # the archive's members all sit under folder/: extract into staging/folder
        with atomic.folder(target, staging / folder, complete=lambda _f: False) as tmp:
            try:
                with tarfile.open(tar_path) as tar:
                    members = _checked_members(tar, tar_path, folder)
                    tar.extractall(staging, members=members, filter="data")
            except (tarfile.TarError, EOFError, OSError) as exc:
                raise DownloadError(f"{tar_path}: cannot unpack ({exc}); delete it and "
                                    f"download again") from None
            if not any(tmp.iterdir()):
                raise DownloadError(f"{tar_path}: the archive holds no {folder}/ folder; is "
                                    f"this the right file?")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def default_data_dir() -> Path:
    """``$WSSS_BENCH_DATA``, else ``$XDG_CACHE_HOME/wsss-bench/data`` (``~/.cache/…``)."""
    env = os.environ.get("WSSS_BENCH_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "wsss-bench" / "data"
