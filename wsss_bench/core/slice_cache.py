"""The slice cache: one preprocessing pass per (dataset, options, file set), reused afterwards.

A file dataset's cases are decoded in parallel worker processes (``workers``) and stored as
memory-mappable ``.npy`` arrays under ``<cache_root>/<dataset>-<key>/``: ``images.npy``
float16[N,C,H,W] (the training view), ``cam_images.npy`` float16[N,C,H,W] (the CAM view, only
for a dataset that gives one), ``masks.npy`` bool[N,H,W], ``case_ids.npy`` str[N],
``slice_index.npy`` int64[N], and ``meta.json`` (what the key was made of). The key hashes
the dataset's name, ``cache_version`` and option values, the requested image size and every
source file's path, size and modification time, so any change to an option or a file makes a
new pass. The arrays are written into a hidden temporary folder that is renamed into place only
when complete: a failed or interrupted pass leaves no cache behind. Each case is appended to the
files as soon as it is decoded (at most ``2 × workers`` decoded cases wait in memory), so the
memory a pass needs does not grow with the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import multiprocessing
import os
import shutil
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wsss_bench import options
from wsss_bench.contracts import CaseFiles
from wsss_bench.core import atomic
from wsss_bench.core.progress import Reporter
from wsss_bench.core.slices import SliceSet, join_cam_views, resize_case
from wsss_bench.errors import UsageError
from wsss_bench.guards import call, check_case, check_stored_case, label

CACHE_FORMAT = 1
FILES = ("images.npy", "masks.npy", "case_ids.npy", "slice_index.npy")


def default_workers() -> int:
    """The CPU cores this process may use, at most 8 (decoding is I/O- and gzip-bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def cache_key(dataset: Any, sources: list[CaseFiles], image_size: int | None
              ) -> tuple[str, dict[str, Any]]:
    """``(hex key, the JSON-able description it hashes)``."""
    files = []
    for source in sources:
        for role, path in sorted(source.files.items()):
            st = Path(path).stat()
            files.append([source.case_id, role, str(Path(path).resolve()), st.st_size,
                          st.st_mtime_ns])
    description = {
        "format": CACHE_FORMAT,
        "dataset": dataset.name,
        "cache_version": dataset.cache_version,
        "settings": {k: getattr(dataset, k) for k in options.keyed_fields(dataset)},
        "image_size": image_size,
        "files": files,
    }
    blob = json.dumps(description, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16], description


def _init_worker() -> None:
    import torch

    torch.set_num_threads(1)  # one case per process; cores are shared across processes


Decoded = tuple[str, np.ndarray, np.ndarray, np.ndarray | None]


def _decode(job: tuple[Any, CaseFiles, int | None]) -> Decoded:
    """Decode one case (in a worker): ``(case_id, images float16, masks bool, CAM view float16
    or None)``."""
    dataset, source, image_size = job
    case = check_case(dataset, call(label("datasets", dataset), dataset.load, source,
                                    keep_usage=True))
    if image_size is not None:
        case = resize_case(case, image_size)
    cam = None if case.cam_images is None else case.cam_images.astype(np.float16)
    images = case.images.astype(np.float16)
    check_stored_case(dataset, case.case_id, {"images": images, "CAM view": cam})
    return (case.case_id, images, case.masks.astype(bool, copy=False), cam)


def _decode_all(dataset: Any, sources: list[CaseFiles], image_size: int | None, workers: int,
                advance) -> Iterator[Decoded]:
    """The decoded cases in order, one at a time: at most ``2 × workers`` decoded cases wait
    in memory for the writer."""
    jobs = [(dataset, s, image_size) for s in sources]
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _decode(job)
            advance(1)
        return
    # fork, as torch's DataLoader does on Linux: workers start at once with everything
    # imported; each uses one thread and no CUDA (decoding is NumPy, nibabel and CPU torch)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    workers = min(workers, len(jobs))
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
        pending = deque(pool.submit(_decode, job) for job in jobs[:2 * workers])
        following = iter(jobs[2 * workers:])
        try:
            while pending:
                result = pending.popleft().result()
                for job in itertools.islice(following, 1):
                    pending.append(pool.submit(_decode, job))
                yield result
                del result
                advance(1)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _remove_stale(cache_root: Path) -> None:
    """Temporary folders of passes whose process is gone (killed) are removed."""
    for tmp in cache_root.glob(".tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and atomic.pid_alive(int(pid))):
            shutil.rmtree(tmp, ignore_errors=True)


def load(folder: Path) -> SliceSet:
    """The cached SliceSet in ``folder``; images stay memory-mapped (float16)."""
    cam = folder / "cam_images.npy"
    return SliceSet(
        np.load(folder / "images.npy", mmap_mode="r"),
        np.load(folder / "masks.npy", mmap_mode="r"),
        np.load(folder / "case_ids.npy"),
        np.load(folder / "slice_index.npy"),
        origin=f"cache/{folder.name}",
        cam_images=np.load(cam, mmap_mode="r") if cam.is_file() else None,
    )


class _Appender:
    """One ``.npy`` file written a case at a time: the raw values go to ``<name>.part``;
    ``finish`` writes the header (as ``np.save`` does) and copies them after it in blocks."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.part = path.with_name(path.name + ".part")
        self.file = open(self.part, "wb")  # noqa: SIM115 (closed by finish)
        self.rows = 0
        self.dtype: np.dtype | None = None
        self.tail: tuple[int, ...] = ()

    def append(self, array: np.ndarray) -> None:
        if self.dtype is None:
            self.dtype, self.tail = array.dtype, array.shape[1:]
        if array.dtype != self.dtype or array.shape[1:] != self.tail:
            raise ValueError(f"{self.path.name}: a case of {array.dtype} {array.shape[1:]} "
                             f"after {self.dtype} {self.tail}")
        array.tofile(self.file)
        self.rows += len(array)

    def finish(self) -> None:
        self.file.close()
        header = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                  "shape": (self.rows, *self.tail)}
        with open(self.path, "wb") as out, open(self.part, "rb") as raw:
            np.lib.format.write_array_header_1_0(out, header)
            shutil.copyfileobj(raw, out, 16 * 2**20)
        self.part.unlink()

    def discard(self) -> None:
        self.file.close()
        self.part.unlink()


def _write(folder: Path, cases: Iterable[Decoded], description: dict[str, Any],
           dataset: Any) -> int:
    """Write the cases into the cache folder as they come (none is kept once written);
    the number of slices."""
    images, masks = _Appender(folder / "images.npy"), _Appender(folder / "masks.npy")
    cams = _Appender(folder / "cam_images.npy")
    case_ids: list[str] = []
    slice_index: list[int] = []
    present: list[bool] = []
    for case_id, case_images, case_masks, cam in cases:
        if images.dtype is not None and case_images.shape[1:] != images.tail:
            shapes = sorted({images.tail, case_images.shape[1:]})
            raise UsageError(f"dataset {dataset.name!r} yields slices of several shapes "
                             f"{shapes}; pass --image-size N to resize them to N×N")
        images.append(case_images)
        masks.append(case_masks)
        present.append(cam is not None)
        if cam is not None:
            cams.append(cam)
        case_ids += [case_id] * len(case_images)
        slice_index += range(len(case_images))
    images.finish()
    masks.finish()
    if join_cam_views(dataset.name, [np.zeros(0) if p else None for p in present],
                      dataset.cam_view) is not None:
        cams.finish()
    else:
        cams.discard()
    np.save(folder / "case_ids.npy", np.asarray(case_ids))
    np.save(folder / "slice_index.npy", np.asarray(slice_index, dtype=np.int64))
    (folder / "meta.json").write_text(json.dumps(description, indent=1, default=str))
    return len(case_ids)


def prepare(dataset: Any, data_dir: Path, cache_root: Path, workers: int,
            image_size: int | None = None, reporter: Reporter | None = None,
            force: bool = False) -> SliceSet:
    """The dataset's slices from the cache, making the cache first if needed (or anew when
    ``force``)."""
    reporter = reporter or Reporter(quiet=True)
    t0 = time.perf_counter()
    sources = call(label("datasets", dataset), dataset.sources, Path(data_dir), keep_usage=True)
    if not sources:
        raise UsageError(f"dataset {dataset.name!r} found no cases under {data_dir}")
    key, description = cache_key(dataset, sources, image_size)
    folder = Path(cache_root) / f"{dataset.name}-{key}"
    if (folder / "meta.json").is_file() and not force:
        data = load(folder)
        reporter.summary(f"[bold]prepare[/] {dataset.name}: slice cache reused ({folder})")
        return data
    cache_root = Path(cache_root)
    made_root = not cache_root.exists()
    cache_root.mkdir(parents=True, exist_ok=True)
    _remove_stale(cache_root)
    tmp = cache_root / f".tmp-{dataset.name}-{key}-{os.getpid()}"
    # each case is written as soon as it is decoded (bounded memory: the cache's arrays are
    # never all in memory); a failure anywhere leaves no cache behind
    try:
        with (atomic.folder(folder, tmp, complete=lambda f: (f / "meta.json").is_file(),
                            replace=force, old=cache_root / f".tmp-old-{key}-{os.getpid()}"),
              reporter.task(f"prepare {dataset.name}", total=len(sources)) as advance):
            n = _write(tmp, _decode_all(dataset, sources, image_size, workers, advance),
                       description, dataset)
    except BaseException:
        if made_root:  # not even an empty cache folder stays behind
            with contextlib.suppress(OSError):
                cache_root.rmdir()
        raise
    reporter.summary(f"[bold]prepare[/] {dataset.name}: {len(sources)} cases, {n} slices decoded "
                     f"with {workers} worker(s) in {time.perf_counter() - t0:.1f} s, cached in "
                     f"{folder}")
    return load(folder)

