"""The main job: train, make CAMs, calibrate on training folds, score on held-out folds."""

from __future__ import annotations

import dataclasses
import json
import re
import time
import zlib
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench import atomic, calibration, download, leaderboard, options, slice_cache, weights
from wsss_bench.errors import UsageError
from wsss_bench.folds import patient_folds, read_folds_file
from wsss_bench.metrics import METRIC_NAMES, score
from wsss_bench.progress import Reporter
from wsss_bench.provenance import run_info
from wsss_bench.registry import Registry, resolve
from wsss_bench.slices import SliceSet, collect
from wsss_bench.store import STAGES, Store, digest
from wsss_bench.training import (
    TrainConfig,
    autocast,
    on_device,
    resolve_device,
    train_classifier,
)
from wsss_bench.volumes import MissingData

EMPTY = "Empty"
CAM_TARGETS = ("predicted", "positive")
OUTPUT_STRIDES = ("auto", "8", "16", "32")
SWITCHES = ("auto", "on", "off")
ON_OFF = ("on", "off")
CALIBRATIONS = ("per-fold", "across-folds")
FORCE_STAGES = ("prepare", *STAGES)
MIN_CAM_CELLS = 4  # `--output-stride auto`: the CAM grid gets at least this many cells a side


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run's numbers (stored in every leaderboard row)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    backbones: tuple[str, ...] = ("resnet18", "resnet34")
    cams: tuple[str, ...] = ("gradcam",)
    ensembles: tuple[str, ...] = ("and", "or")
    filters: tuple[str, ...] = ("none",)
    folds: int = 3
    epochs: int = 2
    batch_size: int = 16
    image_size: int | None = None
    threshold_step: float = 0.1
    select_by: str = "paper_miou"
    seed: int = 0
    device: str = "auto"
    workdir: str = "runs"
    leaderboard_dir: str = "leaderboards"
    cam_batch_size: int = 64
    cam_target: str = "positive"
    gate: bool = False
    output_stride: str = "auto"
    lr: float = 1e-3
    precise_bn: str = "on"  # recompute BatchNorm statistics after training (off: the authors')
    calibrate: str = "per-fold"  # thresholds per fold, or one tuple for all folds (paper Fig. 6)
    workers: int | None = None  # processes that decode a file dataset; None = CPU cores (≤ 8)
    folds_file: str | None = None  # a published split instead of the seeded one
    seeds: tuple[int, ...] = ()  # training seeds (each × every fold); () = (seed,)
    pretrained: bool = False  # timm hub weights when they can be reached
    weights: str | None = None  # a folder of local checkpoints, one per backbone
    force: tuple[str, ...] = ()  # stages to recompute (and everything after them)
    amp: str = "auto"  # mixed precision: auto = on CUDA only
    channels_last: str = "auto"  # NHWC memory format: auto = on CUDA only
    gpus: int = 0  # > 1: that many CUDA GPUs train (backbone, fold, seed) units side by side
    devices: tuple[str, ...] = ()  # explicit devices for side-by-side units (tests: cpu,cpu)
    leaderboard_name: str | None = None  # <name>.json/.md instead of <dataset>.json/.md
    preset: str | None = None  # recorded only: the preset's values are already applied
    options: dict[str, dict[str, str]] = field(default_factory=dict)

    def validate(self) -> None:
        for opt, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                           ("--cam-batch-size", self.cam_batch_size)):
            if value < 1:
                raise UsageError(f"{opt} {value}: must be at least 1")
        for opt, value, choices in (("--amp", self.amp, SWITCHES),
                                    ("--channels-last", self.channels_last, SWITCHES),
                                    ("--precise-bn", self.precise_bn, ON_OFF),
                                    ("--calibrate", self.calibrate, CALIBRATIONS)):
            if value not in choices:
                raise UsageError(f"{opt} {value}: choose one of {', '.join(choices)}")
        bad = [s for s in self.force if s not in FORCE_STAGES]
        if bad:
            raise UsageError(f"--force {','.join(bad)}: stages are {', '.join(FORCE_STAGES)}")
        if self.gpus < 0:
            raise UsageError(f"--gpus {self.gpus}: must be 0 or more")
        if len(set(self.seeds)) != len(self.seeds):
            raise UsageError(f"--seeds {','.join(map(str, self.seeds))}: a seed is listed twice")
        if self.leaderboard_name is not None and not re.fullmatch(r"[A-Za-z0-9._-]+",
                                                                   self.leaderboard_name):
            raise UsageError(f"--leaderboard-name {self.leaderboard_name!r}: use letters, "
                             f"digits, '.', '_' and '-' only")
        if self.workers is not None and self.workers < 1:
            raise UsageError(f"--workers {self.workers}: must be at least 1")
        if self.folds < 2:
            raise UsageError(f"--folds {self.folds}: cross-validation needs at least 2 folds")
        if self.image_size is not None and self.image_size < 32:
            raise UsageError(f"--image-size {self.image_size}: must be at least 32")
        if not self.backbones:
            raise UsageError("--backbones: name at least one backbone")
        if not self.cams or not self.filters:
            raise UsageError("--cams and --filters: name at least one each")
        if len(set(self.backbones)) != len(self.backbones):
            raise UsageError(f"--backbones {','.join(self.backbones)}: a backbone is listed twice")
        if self.cam_target not in CAM_TARGETS:
            raise UsageError(f"--cam-target {self.cam_target}: choose one of "
                             f"{', '.join(CAM_TARGETS)}")
        if self.output_stride not in OUTPUT_STRIDES:
            raise UsageError(f"--output-stride {self.output_stride}: choose one of "
                             f"{', '.join(OUTPUT_STRIDES)}")
        if not self.lr > 0:
            raise UsageError(f"--lr {self.lr}: must be positive")
        if self.select_by not in METRIC_NAMES:
            raise UsageError(f"--select-by {self.select_by}: choose one of "
                             f"{', '.join(METRIC_NAMES)}")
        try:
            calibration.threshold_grid(self.threshold_step)
        except ValueError as exc:
            raise UsageError(f"--threshold-step {self.threshold_step}: {exc}") from None


@dataclass
class MethodResult:
    """One leaderboard row in the making: per-fold thresholds and metrics."""

    backbones: tuple[str, ...]
    cam: str | None
    ensemble: str | None
    filter: str | None
    symbol: str | None = None  # how the ensemble is shown, e.g. the paper's '<' for smaller
    thresholds: list[list[float] | None] = field(default_factory=list)
    folds: list[dict[str, float]] = field(default_factory=list)

    @property
    def method(self) -> str:
        """The row key: ``ensemble(backbones) / cam / filter`` (the paper's symbol when set)."""
        if not self.backbones:
            return EMPTY
        core = (f"{self.symbol or self.ensemble}({','.join(self.backbones)})" if self.ensemble
                else self.backbones[0])
        return f"{core} / {self.cam} / {self.filter}"


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from the run seed and the unit's identity."""
    return zlib.crc32(json.dumps([str(p) for p in parts]).encode()) & 0x7FFFFFFF


def auto_output_stride(image_size: int) -> int:
    """The largest of 32, 16, 8 that leaves the CAM grid at least MIN_CAM_CELLS a side.

    32 (the plain ResNet) for the paper's 128×128 BraTS crops and 320×320 prostate slices; a
    finer stride only for small images, where a 2×2 grid could not localise anything.
    """
    for stride in (32, 16):
        if image_size // stride >= MIN_CAM_CELLS:
            return stride
    return 8


@dataclass(frozen=True)
class Job:
    """One (seed, fold, backbone) unit of training and CAM generation."""

    seed: int
    fold: int
    backbone: str


def compute_cams(cam, model, target_layer, images: np.ndarray, batch_size: int,
                 device: torch.device, advance, target: str = "predicted",
                 gate: np.ndarray | None = None, amp: bool = False,
                 channels_last: bool = False) -> np.ndarray:
    """CAMs float32[N,H,W] for every slice, in batches on ``device``.

    ``target`` is ``predicted`` (each slice's predicted class, the paper) or ``positive`` (the
    lesion class). ``gate`` bool[N] zeroes the maps of slices predicted negative (WSS-CMER).
    """
    out = np.empty((len(images), *images.shape[2:]), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = on_device(_tensor(images[start : start + batch_size]), device, channels_last)
        classes = None if target == "predicted" else "positive"
        with autocast(device, amp):
            maps = cam.cam(model, target_layer, batch, classes)
        out[start : start + len(batch)] = maps.float().cpu().numpy()
        advance(len(batch))
    if gate is not None:
        out[~gate] = 0.0
    return out


@torch.no_grad()
def predict(model, images: np.ndarray, batch_size: int, device: torch.device,
            amp: bool = False, channels_last: bool = False) -> np.ndarray:
    """Predicted class int64[N] of every slice (eval mode)."""
    out = []
    with autocast(device, amp):
        for s in range(0, len(images), batch_size):
            x = on_device(_tensor(images[s : s + batch_size]), device, channels_last)
            out.append(model(x).argmax(1).cpu())
    return torch.cat(out).numpy()


def _tensor(images: np.ndarray) -> torch.Tensor:
    """A float32 tensor of a (possibly float16, memory-mapped) slice batch."""
    return torch.from_numpy(np.asarray(images, dtype=np.float32))


REGION_CHUNK = 512  # slices per filter call: bounded memory on memory-mapped float16 data


def _regions(filt, data: SliceSet, train: np.ndarray) -> np.ndarray:
    if hasattr(filt, "fit"):  # learned filters see the training slices only
        filt = filt.fit(np.asarray(data.images[train], dtype=np.float32),
                        data.masks[train])  # a fitted copy
    parts = [np.asarray(filt.region(np.asarray(data.images[s : s + REGION_CHUNK],
                                               dtype=np.float32)), dtype=bool)
             for s in range(0, len(data), REGION_CHUNK)]
    return np.concatenate(parts)


class Runner:
    """Runs one configuration over all folds and returns leaderboard rows."""

    def __init__(self, config: RunConfig, registry: Registry, reporter: Reporter | None = None,
                 weights_used: dict[str, str] | None = None):
        config.validate()
        self.config = config
        self.reporter = reporter or Reporter(quiet=True)
        self.dataset = self._plugins(registry, "datasets", (config.dataset,))[config.dataset]
        self.backbones = self._plugins(registry, "backbones", config.backbones)
        self.cams = self._plugins(registry, "cams", config.cams)
        self.ensembles = self._plugins(registry, "ensembles", config.ensembles)
        self.filters = self._plugins(registry, "filters", config.filters)
        used = {config.dataset, *config.backbones, *config.cams, *config.ensembles,
                *config.filters}
        for plugin in config.options:
            if plugin not in used:
                raise UsageError(f"--option {plugin}.…: this run uses no plugin called "
                                 f"{plugin!r}; check the name or add it to the run")
        if self.ensembles and len(self.backbones) < 2:
            raise UsageError("--ensembles needs at least 2 --backbones; pass more backbones or "
                             "--ensembles ''")
        try:
            self.device = resolve_device(config.device)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(str(exc)) from None
        self.devices = self._devices()
        if len(self.devices) > 1:
            self.device = self.devices[0]
        self.amp = self._switch(config.amp)
        self.channels_last = self._switch(config.channels_last)
        self.seeds = config.seeds or (config.seed,)
        self.grid = calibration.threshold_grid(config.threshold_step)
        self.strides: dict[str, int] = {}  # output stride each backbone was built with
        self.weights_used: dict[str, str] = dict(weights_used or {})  # per backbone
        self.n_folds = config.folds
        force = set(config.force)
        for i, stage in enumerate(FORCE_STAGES):  # a forced stage forces every later one
            if stage in force:
                force.update(FORCE_STAGES[i:])
        self.store = Store(Path(config.workdir), force)
        self.versions = plugin_versions(registry, {
            "datasets": (config.dataset,), "backbones": config.backbones, "cams": config.cams,
            "ensembles": config.ensembles, "filters": config.filters})
        for b_name in self.backbones:  # a missing weights file is an error before any work
            self.weights_for(b_name)

    def _devices(self) -> list[torch.device]:
        cfg = self.config
        if cfg.devices:
            return [torch.device(d) for d in cfg.devices]
        if cfg.gpus > 1:
            have = torch.cuda.device_count()
            if cfg.gpus > have:
                raise UsageError(f"--gpus {cfg.gpus}: this machine has {have} CUDA GPU(s); "
                                 f"pass --gpus {have} or fewer")
            return [torch.device(f"cuda:{i}") for i in range(cfg.gpus)]
        return [self.device]

    def _switch(self, value: str) -> bool:
        """``--amp``/``--channels-last``: auto means on CUDA only."""
        return value == "on" or (value == "auto" and self.device.type == "cuda")

    def _plugins(self, registry: Registry, kind: str, names: tuple[str, ...]) -> dict[str, Any]:
        """The named plugin objects of ``kind``, configured with the run's ``--option``s."""
        objs = resolve(registry, kind, list(names))
        return {n: options.configure(o, self.config.options.get(n, {}))
                for n, o in zip(names, objs, strict=True)}

    def plugin_settings(self) -> dict[str, dict[str, Any]]:
        """Every used plugin's option values (its dataclass fields), defaults included."""
        used = {self.config.dataset: self.dataset, **self.backbones, **self.cams,
                **self.ensembles, **self.filters}
        return {name: {k: getattr(obj, k) for k in options.option_fields(obj)}
                for name, obj in used.items()}

    def key_settings(self) -> dict[str, dict[str, Any]]:
        """:meth:`plugin_settings` as unit keys see them: without the values a plugin declares
        neutral (``key_neutral``: an option added later, at the default that behaves as before
        it existed)."""
        used = {self.config.dataset: self.dataset, **self.backbones, **self.cams,
                **self.ensembles, **self.filters}
        out = {}
        for name, values in self.plugin_settings().items():
            neutral = getattr(used[name], "key_neutral", {})
            out[name] = {k: v for k, v in values.items() if k not in neutral or neutral[k] != v}
        return out

    @property
    def data_dir(self) -> Path | None:
        """``--data-dir``, else the default data folder for a dataset that reads files."""
        if self.config.data_dir:
            return Path(self.config.data_dir).expanduser()
        return download.default_data_dir() if hasattr(self.dataset, "sources") else None

    def load_data(self) -> SliceSet:
        """File datasets through the slice cache (downloading missing data where allowed);
        generated datasets directly."""
        cfg = self.config
        if not hasattr(self.dataset, "sources"):
            data = collect(self.dataset, self.data_dir, cfg.image_size)
            settings = self.plugin_settings()[cfg.dataset]
            origin = f"generated/{cfg.dataset}-{digest([settings, cfg.image_size])}"
            return dataclasses.replace(data, origin=origin)
        workers = cfg.workers or slice_cache.default_workers()
        cache_root = Path(cfg.workdir) / "cache"
        args = (self.dataset, self.data_dir, cache_root, workers, cfg.image_size, self.reporter)
        force = "prepare" in self.store.force
        try:
            return slice_cache.prepare(*args, force=force)
        except MissingData:
            archive = getattr(self.dataset, "archive", None)
            if archive is None:
                raise
            self.reporter.summary(f"[bold]download[/] {self.dataset.name}: no data in "
                                  f"{self.data_dir}, fetching {archive.url}")
            download.fetch(archive, self.data_dir, self.reporter)
            return slice_cache.prepare(*args, force=force)

    def summarize_data(self, data: SliceSet, seconds: float) -> None:
        self.reporter.summary(
            f"[bold]data[/] {self.config.dataset}: {len(set(data.case_ids.tolist()))} cases, "
            f"{len(data)} slices of {data.images.shape[1]}×{data.images.shape[2]}×"
            f"{data.images.shape[3]}, {data.labels.mean():.0%} with lesion, lesion pixels "
            f"{data.masks.mean():.2%} ({seconds:.1f} s)")

    def write_folds(self, folds: list[list[str]]) -> None:
        path = Path(self.config.workdir) / self.config.dataset / "folds.json"
        source = ({"file": self.config.folds_file} if self.config.folds_file
                  else {"seed": self.config.seed})
        atomic.write_text(path, json.dumps({**source, "folds": folds}, indent=2))

    def split(self, data: SliceSet) -> list[list[str]]:
        cfg = self.config
        if cfg.folds_file:
            return read_folds_file(cfg.folds_file, data.case_ids, data.labels)
        return patient_folds(data.case_ids, data.labels, cfg.folds, cfg.seed)

    def run(self) -> tuple[list[dict[str, Any]], list[list[str]]]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        data = self.load_data()
        folds = self.split(data)
        self.summarize_data(data, time.perf_counter() - t0)
        self.write_folds(folds)
        self.n_folds = len(folds)
        self.store.start_manifest(self.manifest_name(data), {
            "dataset": cfg.dataset, "cache": data.origin if data.origin.startswith("cache/")
            else None, "config": asdict(cfg)})
        jobs = [Job(seed, fold, b) for seed in self.seeds for fold in range(len(folds))
                for b in self.backbones]
        if len(self.devices) > 1:
            self._run_side_by_side(jobs, data, folds)
        results: dict[str, MethodResult] = {}
        for seed in self.seeds:
            if cfg.calibrate == "across-folds":
                self._run_across_folds(data, folds, seed, results)
                continue
            for fold in range(len(folds)):
                self._run_fold(data, folds, seed, fold, results)
        info = run_info(self.device, cfg.seed, asdict(cfg))
        info["plugins"] = self.plugin_settings()
        info["plugin_versions"] = dict(self.versions)
        info["effective"] = {"image_size": list(data.images.shape[2:]),
                             "data_dir": str(self.data_dir) if self.data_dir else None,
                             "folds": len(folds), "seeds": list(self.seeds),
                             "in_chans": int(data.images.shape[1]),
                             "output_stride": dict(self.strides),
                             "weights": dict(self.weights_used),
                             "amp": self.amp, "channels_last": self.channels_last,
                             "devices": [str(d) for d in self.devices]}
        return [self._row(r, info) for r in results.values()], folds

    def manifest_name(self, data: SliceSet) -> str:
        return f"{self.config.dataset}-{digest([data.origin, asdict(self.config)])}"

    def _run_side_by_side(self, jobs: list[Job], data: SliceSet, folds: list[list[str]]
                          ) -> None:
        """Train and map the (backbone, fold, seed) units on several devices at once: one
        worker process per device, each given every n-th unit. Their results land in the
        store, where the main pass below finds them."""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        todo = [j for j in jobs if not self._job_done(j, data, folds)]
        if not todo:
            return
        n = len(self.devices)
        self.reporter.summary(f"[bold]units[/] {len(todo)} (backbone, fold, seed) units on "
                              f"{n} devices side by side: {', '.join(map(str, self.devices))}")
        from concurrent.futures.process import BrokenProcessPool

        context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
        # workers redo the forced stages once (the main pass then does not); the slice cache
        # is already prepared; they start from the weights resolved here
        config = dataclasses.replace(self.config, force=tuple(self.store.force - {"prepare"}))
        with ProcessPoolExecutor(n, mp_context=context) as pool:
            futures = [pool.submit(_device_worker, config, str(device), todo[i::n], folds,
                                   dict(self.weights_used))
                       for i, device in enumerate(self.devices) if todo[i::n]]
            try:
                for future in futures:
                    future.result()
            except BrokenProcessPool:
                raise UsageError("a side-by-side worker process died (out of memory?); "
                                 "finished units are kept: run the same command again to "
                                 "resume, with fewer --gpus or a smaller --batch-size"
                                 ) from None
        for job in todo:  # made (or remade under --force) by the workers: not to be redone here
            key, _ = self.train_key(data, folds, job)
            self.store.redone.update([f"train/{key}", *(f"cams/{self.cam_key(key, c)[0]}"
                                                        for c in self.cams)])

    def _job_done(self, job: Job, data: SliceSet, folds: list[list[str]]) -> bool:
        key, _ = self.train_key(data, folds, job)
        return self.store.ready("train", key) and all(
            self.store.ready("cams", self.cam_key(key, c)[0]) for c in self.cams)

    def _split(self, data: SliceSet, folds: list[list[str]], fold: int
               ) -> tuple[np.ndarray, np.ndarray]:
        """The training and validation slice indices of ``fold``."""
        val_mask = np.isin(data.case_ids, folds[fold])
        return np.flatnonzero(~val_mask), np.flatnonzero(val_mask)

    def _fold_cams(self, data: SliceSet, folds: list[list[str]], seed: int, fold: int
                   ) -> dict[str, dict[str, str]]:
        """Train and map every backbone of one fold; the CAM unit keys by CAM and backbone."""
        cam_keys: dict[str, dict[str, str]] = {c: {} for c in self.cams}
        for b_name in self.backbones:
            for c_name, key in self.train_and_map(data, folds, Job(seed, fold, b_name)).items():
                cam_keys[c_name][b_name] = key
        return cam_keys

    def _eval_units(self) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
        """(CAM, filter, ensemble or None, backbones) of every evaluated method."""
        return [(c, f, e, group) for c in self.cams for f in self.filters
                for e in [None, *self.ensembles]
                for group in ([(b,) for b in self.backbones] if e is None
                              else [tuple(self.backbones)])]

    def _stack(self, data: SliceSet, train: np.ndarray, unit, cam_keys: dict[str, dict[str, str]],
               regions: dict[str, np.ndarray], loaded: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, np.ndarray]:
        """The unit's CAMs float32[M,N,H,W] and its filter's region bool[N,H,W] (a learned
        filter fitted on ``train``), cached per fold in ``regions`` and ``loaded``."""
        c_name, f_name, _, group = unit
        if f_name not in regions:
            regions[f_name] = _regions(self.filters[f_name], data, train)
        stack = np.stack([self._cams(cam_keys[c_name][b], loaded) for b in group])
        return stack, regions[f_name]

    def _grid(self, data: SliceSet, train: np.ndarray, unit, stack: np.ndarray,
              region: np.ndarray) -> calibration.GridResult:
        """Every grid point scored on the fold's training slices."""
        e_name = unit[2]
        return calibration.grid_search(
            stack[:, train], data.masks[train], ensemble=self.ensembles[e_name] if e_name else None,
            thresholds=self.grid, metric=self.config.select_by, case_ids=data.case_ids[train],
            region=region[train])

    def _apply(self, data: SliceSet, val: np.ndarray, unit, stack: np.ndarray,
               region: np.ndarray, thresholds: tuple[float, ...]) -> dict[str, Any]:
        """The unit's thresholds applied to the validation slices, scored."""
        e_name = unit[2]
        pred = calibration.binarize(stack[:, val], thresholds,
                                    self.ensembles[e_name] if e_name else None, region[val])
        return {"thresholds": [float(t) for t in thresholds],
                "metrics": score(pred, data.masks[val], data.case_ids[val])}

    def _record(self, results: dict[str, MethodResult], unit, found: dict[str, Any]) -> None:
        c_name, f_name, e_name, group = unit
        ensemble = self.ensembles[e_name] if e_name else None
        symbol = getattr(ensemble, "symbol", None) if ensemble else None
        res = MethodResult(group, c_name, e_name, f_name, symbol)
        res = results.setdefault(res.method, res)
        res.thresholds.append(found["thresholds"])
        res.folds.append(found["metrics"])

    def _record_empty(self, results: dict[str, MethodResult], data: SliceSet,
                      val: np.ndarray) -> MethodResult:
        empty = results.setdefault(EMPTY, MethodResult((), None, None, None))
        empty.thresholds.append(None)
        gt = data.masks[val]
        empty.folds.append(score(np.zeros_like(gt), gt, data.case_ids[val]))
        return empty

    def _run_fold(self, data: SliceSet, folds: list[list[str]], seed: int, fold: int,
                  results: dict[str, MethodResult]) -> None:
        """Per-fold calibration: train and map the fold, then pick each method's thresholds on
        its training slices and score them on its validation slices."""
        label = self.label(seed, fold)
        train, val = self._split(data, folds, fold)
        cam_keys = self._fold_cams(data, folds, seed, fold)
        empty = self._record_empty(results, data, val)
        units = self._eval_units()
        t0 = time.perf_counter()
        regions: dict[str, np.ndarray] = {}
        loaded: dict[str, np.ndarray] = {}
        reused = 0
        with self.reporter.task(f"evaluate {label}", total=len(units)) as advance:
            for unit in units:
                c_name, f_name, e_name, group = unit
                keys = [cam_keys[c_name][b] for b in group]
                key, description = self.evaluate_key(keys, e_name, f_name, folds[fold])
                if self.store.ready("evaluate", key):
                    found = self.store.info("evaluate", key)["result"]
                    self.store.use("evaluate", key)
                    reused += 1
                else:
                    stack, region = self._stack(data, train, unit, cam_keys, regions, loaded)
                    search = self._grid(data, train, unit, stack, region)
                    found = self._apply(data, val, unit, stack, region, search.thresholds)
                    self.store.write("evaluate", key, description,
                                     lambda _folder, r=found: {"result": r})
                self._record(results, unit, found)
                advance(1)
        self._summarize_evaluation(label, len(units), reused, t0, results, empty)

    def _summarize_evaluation(self, label: str, n_units: int, reused: int, t0: float,
                              results: dict[str, MethodResult], empty: MethodResult) -> None:
        best = max((r for r in results.values() if r.folds), key=lambda r: r.folds[-1]["paper_dsc"])
        self.reporter.summary(
            f"[bold]evaluate[/] {label}: {n_units} (cam, filter, ensemble) units "
            f"({reused} reused) in {time.perf_counter() - t0:.1f} s; best on validation: "
            f"{best.method} paper_dsc {best.folds[-1]['paper_dsc']:.4f} (Empty "
            f"{empty.folds[-1]['paper_dsc']:.4f})")

    def _run_across_folds(self, data: SliceSet, folds: list[list[str]], seed: int,
                          results: dict[str, MethodResult]) -> None:
        """Across-folds calibration (the paper's Fig. 6): train and map every fold, score each
        method's threshold grid on every fold's training slices, pick the one tuple with the
        best mean over the folds, and score it on every fold's validation slices."""
        n = len(folds)
        splits = [self._split(data, folds, k) for k in range(n)]
        cam_keys = [self._fold_cams(data, folds, seed, k) for k in range(n)]
        units = self._eval_units()
        t0 = time.perf_counter()
        keys: dict[Any, list[tuple[str, dict[str, Any]]]] = {}
        found: dict[Any, list[dict[str, Any]]] = {}
        for unit in units:
            c_name, f_name, e_name, group = unit
            per_fold = [[cam_keys[k][c_name][b] for b in group] for k in range(n)]
            keys[unit] = [self.evaluate_key(per_fold[k], e_name, f_name, folds[k],
                                            across=(per_fold, folds)) for k in range(n)]
            if all(self.store.ready("evaluate", key) for key, _ in keys[unit]):
                for key, _ in keys[unit]:
                    self.store.use("evaluate", key)
                found[unit] = [self.store.info("evaluate", key)["result"]
                               for key, _ in keys[unit]]
        todo = [u for u in units if u not in found]
        label = f"all {n} folds" + ("" if len(self.seeds) == 1 else f" seed {seed}")
        if todo:
            grids: dict[Any, list[np.ndarray]] = {u: [] for u in todo}
            with self.reporter.task(f"calibrate {label}", total=2 * n * len(todo)) as advance:
                for k, (train, _) in enumerate(splits):  # pass 1: every fold's training grid
                    regions: dict[str, np.ndarray] = {}
                    loaded: dict[str, np.ndarray] = {}
                    for unit in todo:
                        stack, region = self._stack(data, train, unit, cam_keys[k], regions,
                                                    loaded)
                        grids[unit].append(self._grid(data, train, unit, stack, region).scores)
                        advance(1)
                chosen = {u: calibration.choose_across_folds(grids[u], self.grid).thresholds
                          for u in todo}
                for k, (train, val) in enumerate(splits):  # pass 2: score the chosen tuple
                    regions, loaded = {}, {}
                    for unit in todo:
                        stack, region = self._stack(data, train, unit, cam_keys[k], regions,
                                                    loaded)
                        result = self._apply(data, val, unit, stack, region, chosen[unit])
                        key, description = keys[unit][k]
                        self.store.write("evaluate", key, description,
                                         lambda _folder, r=result: {"result": r})
                        found.setdefault(unit, []).append(result)
                        advance(1)
        for k, (_, val) in enumerate(splits):
            empty = self._record_empty(results, data, val)
            for unit in units:
                self._record(results, unit, found[unit][k])
            self._summarize_evaluation(f"{self.label(seed, k)} (across folds)", len(units),
                                       len(units) - len(todo), t0, results, empty)

    def _cams(self, key: str, loaded: dict[str, np.ndarray]) -> np.ndarray:
        """The CAMs of a unit as float32 (exact conversion of the stored float16)."""
        if key not in loaded:
            stored = np.load(self.store.path("cams", key) / "cams.npy", mmap_mode="r")
            loaded[key] = np.asarray(stored, dtype=np.float32)
        return loaded[key]

    def label(self, seed: int, fold: int) -> str:
        text = f"fold {fold + 1}/{self.n_folds}"
        return text if len(self.seeds) == 1 else f"{text} seed {seed}"

    # --- unit keys -------------------------------------------------------------------------
    def train_key(self, data: SliceSet, folds: list[list[str]], job: Job
                  ) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        train_cases = sorted(set(data.case_ids.tolist()) - set(folds[job.fold]))
        description = {
            "data": data.origin,
            "train_cases": train_cases,
            "backbone": job.backbone,
            "plugin": self.versions.get(job.backbone),
            "dataset_plugin": self.versions.get(cfg.dataset),
            "device_type": self.device.type,
            "settings": self.key_settings()[job.backbone],
            "in_chans": int(data.images.shape[1]),
            "output_stride": self.config.output_stride,
            "training": self.training_settings(),
            "seed": self.unit_seed(job),
            "weights": weights.key_of(self.weights_for(job.backbone)),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "predict_batch": cfg.cam_batch_size,
        }
        return digest(["train", description]), description

    def training_settings(self) -> dict[str, Any]:
        """The training settings of a train unit's key. Precise-BN is named only when off, so
        the keys of units made before the switch existed (always on) stay valid."""
        cfg = self.config
        out: dict[str, Any] = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
        if cfg.precise_bn == "off":
            out["precise_bn"] = False
        return out

    def cam_key(self, train_key: str, c_name: str) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        description = {"train": train_key, "cam": c_name, "plugin": self.versions.get(c_name),
                       "device_type": self.device.type,
                       "settings": self.key_settings()[c_name], "target": cfg.cam_target,
                       "gate": cfg.gate, "amp": self.amp}
        return digest(["cams", description]), description

    def evaluate_key(self, cam_keys: list[str], e_name: str | None, f_name: str,
                     val_cases: list[str],
                     across: tuple[list[list[str]], list[list[str]]] | None = None
                     ) -> tuple[str, dict[str, Any]]:
        """The key of one fold's evaluate unit. ``across`` (every fold's CAM unit keys and the
        folds) marks across-folds calibration, whose thresholds depend on every fold; a
        per-fold unit's description is as it was before that option existed."""
        settings = self.key_settings()
        description = {"cams": cam_keys, "ensemble": e_name,
                       "ensemble_settings": settings.get(e_name) if e_name else None,
                       "filter": f_name, "filter_settings": settings[f_name],
                       "plugins": [self.versions.get(e_name), self.versions.get(f_name)],
                       "validation": sorted(val_cases), "step": self.config.threshold_step,
                       "select_by": self.config.select_by}
        if across is not None:
            all_cams, folds = across
            description["calibrate"] = {"mode": "across-folds", "cams": all_cams,
                                        "folds": [sorted(f) for f in folds]}
        return digest(["evaluate", description]), description

    def unit_seed(self, job: Job) -> int:
        return derived_seed(job.seed, self.config.dataset, job.fold, job.backbone)

    # --- train and map one (backbone, fold, seed) ------------------------------------------
    def train_and_map(self, data: SliceSet, folds: list[list[str]], job: Job) -> dict[str, str]:
        """Make (or reuse) the training unit and the CAM units of ``job``; their keys by CAM."""
        label = f"{job.backbone} {self.label(job.seed, job.fold)}"
        t_key, t_description = self.train_key(data, folds, job)
        model = None
        if self.store.ready("train", t_key):
            self.store.use("train", t_key)
            info = self.store.info("train", t_key)
            self.strides[job.backbone] = info["output_stride"]
            self.reporter.summary(f"[bold]train[/] {label}: reused (unit {t_key}, made "
                                  f"{_when(info['made'])})")
        else:
            model = self._train_unit(data, folds, job, t_key, t_description, label)
        keys: dict[str, str] = {}
        for c_name, cam in self.cams.items():
            c_key, c_description = self.cam_key(t_key, c_name)
            keys[c_name] = c_key
            if self.store.ready("cams", c_key):
                self.store.use("cams", c_key)
                self.reporter.summary(f"[bold]cams[/] {c_name} {label}: reused (unit {c_key})")
                continue
            if model is None:
                model = self._load_model(t_key, job, data)
            predicted = np.load(self.store.path("train", t_key) / "predicted.npy")
            t0 = time.perf_counter()
            with self.reporter.task(f"{c_name} {label}", total=len(data)) as advance:
                target_layer = self.backbones[job.backbone].target_layer(model)
                maps = compute_cams(cam, model, target_layer, data.cam_input,
                                    self.config.cam_batch_size, self.device, advance,
                                    self.config.cam_target,
                                    predicted == 1 if self.config.gate else None,
                                    amp=self.amp, channels_last=self.channels_last)
            self.store.write("cams", c_key, c_description,
                             lambda folder, m=maps: np.save(folder / "cams.npy",
                                                            m.astype(np.float16)))
            self.reporter.summary(f"[bold]cams[/] {c_name} {label}: {len(data)} maps "
                                  f"({time.perf_counter() - t0:.1f} s)")
        return keys

    def _train_unit(self, data: SliceSet, folds: list[list[str]], job: Job, key: str,
                    description: dict[str, Any], label: str):
        cfg = self.config
        val_mask = np.isin(data.case_ids, folds[job.fold])
        train, val = np.flatnonzero(~val_mask), np.flatnonzero(val_mask)
        seed = self.unit_seed(job)
        torch.manual_seed(seed)
        model = self._build(self.backbones[job.backbone], data)
        tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed,
                           amp=self.amp, channels_last=self.channels_last,
                           precise_bn=cfg.precise_bn == "on")
        steps = cfg.epochs * -(-len(train) // cfg.batch_size)
        t0 = time.perf_counter()
        with self.reporter.task(f"train {label}", total=steps) as advance:
            result = train_classifier(model, data.images[train], data.labels[train], tcfg,
                                      self.device, on_step=lambda _e, _l: advance(1))
        predicted = predict(result.model, data.images, cfg.cam_batch_size, self.device,
                            amp=self.amp, channels_last=self.channels_last)
        val_accuracy = float((predicted[val] == data.labels[val]).mean())
        seconds = time.perf_counter() - t0

        def fill(folder: Path) -> dict[str, Any]:
            torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                       folder / "model.pt")
            np.save(folder / "predicted.npy", predicted.astype(np.int8))
            return {"losses": result.losses, "val_accuracy": val_accuracy,
                    "output_stride": self.strides[job.backbone], "seconds": seconds,
                    "weights": self.weights_used.get(job.backbone)}

        self.store.write("train", key, description, fill)
        self.reporter.summary(
            f"[bold]train[/] {label}: {cfg.epochs} epochs, loss {result.losses[0]:.3f} → "
            f"{result.losses[-1]:.3f}, validation accuracy {val_accuracy:.2f} ({seconds:.1f} s)")
        return model

    def _load_model(self, key: str, job: Job, data: SliceSet):
        """The trained classifier of a stored unit (eval mode, on the run's device)."""
        info = self.store.info("train", key)
        backbone = self.backbones[job.backbone]
        kwargs = {} if info["output_stride"] == 32 else {"output_stride": info["output_stride"]}
        model = backbone.build(in_chans=int(data.images.shape[1]), num_classes=2,
                               pretrained=False, **kwargs)
        state = torch.load(self.store.path("train", key) / "model.pt", map_location="cpu",
                           weights_only=True)
        model.load_state_dict(state)
        model.to(self.device).eval()
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    def _build(self, backbone, data: SliceSet):
        """An untrained classifier at the run's output stride; in auto mode, stride 32 for a
        backbone that cannot change its stride. The stride used is kept per backbone. Its
        initial weights: a local file (``--weights``), timm's hub (``--pretrained``) or
        random."""
        in_chans = data.images.shape[1]
        stride = self.output_stride(data.images.shape[-1])
        pretrained = self.pretrained_arg(backbone.name)
        if stride != 32:
            try:
                model = backbone.build(in_chans=in_chans, num_classes=2, pretrained=pretrained,
                                       output_stride=stride)
                self.strides[backbone.name] = stride
                return model
            except (TypeError, ValueError) as exc:  # TypeError: build() has no output_stride
                if self.config.output_stride != "auto":
                    raise UsageError(f"backbone {backbone.name!r}: {exc}; pass "
                                     f"--output-stride 32 or auto") from None
                self.reporter.summary(f"[bold]backbone[/] {backbone.name}: output stride 32 "
                                      f"({exc})")
        self.strides[backbone.name] = 32
        return backbone.build(in_chans=in_chans, num_classes=2, pretrained=pretrained)

    # --- initial weights -------------------------------------------------------------------
    def weights_for(self, b_name: str) -> str:
        """What the backbone starts from: ``random``, ``timm-hub`` or a local file's path
        (with its size), resolved once per run; recorded in the unit key and the rows."""
        if b_name not in self.weights_used:
            failed = [w for w in self.weights_used.values() if w.startswith("random (hub")]
            if failed and self.config.pretrained and not self.config.weights:
                self.weights_used[b_name] = failed[0]  # the hub is down: do not wait again
            else:
                self.weights_used[b_name] = weights.resolve(
                    self.backbones[b_name], self.config.weights, self.config.pretrained)
        return self.weights_used[b_name]

    def pretrained_arg(self, b_name: str) -> bool | Path:
        return weights.build_argument(self.backbones[b_name], self.weights_for(b_name),
                                      self.config.weights)

    def output_stride(self, image_size: int) -> int:
        if self.config.output_stride == "auto":
            return auto_output_stride(image_size)
        return int(self.config.output_stride)

    def _row(self, res: MethodResult, info: dict[str, Any]) -> dict[str, Any]:
        metrics = {}
        for name in METRIC_NAMES:
            values = [f[name] for f in res.folds]
            metrics[name] = {"mean": float(np.mean(values)), "std": float(np.std(values)),
                             "folds": values}
        return {
            "method": res.method,
            "seeds": list(self.seeds),
            "backbones": list(res.backbones),
            "cam": res.cam,
            "ensemble": res.ensemble,
            "filter": res.filter,
            "thresholds": res.thresholds,
            "metrics": metrics,
            "source": "measured",
            "run": info,
        }


def run_and_publish(config: RunConfig, registry: Registry, reporter: Reporter,
                    command: str | None = None) -> dict[str, Any]:
    """Run ``config`` and merge its rows into ``<leaderboard_dir>/<dataset>.json`` and ``.md``."""
    rows, folds = Runner(config, registry, reporter).run()
    for row in rows:
        row["run"]["command"] = command
    header = {"split": folds, "split_seed": None if config.folds_file else config.seed,
              "split_file": config.folds_file, "command": command}
    if config.preset:  # what still differs from the paper, and what this run changed
        from wsss_bench import deviations, presets

        header["deviations"] = [dataclasses.asdict(d)
                                for d in deviations.for_run(config.dataset)]
        header["preset_overrides"] = presets.overrides(config, registry)
    return leaderboard.update(Path(config.leaderboard_dir), config.dataset, rows, header,
                              name=config.leaderboard_name)


def plugin_versions(registry: Registry, used: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``{plugin name: "<distribution> <version>"}``: part of every unit key, so a plugin
    release that changes results never reuses units of the old release."""
    from importlib import metadata

    out: dict[str, str] = {}
    for kind, names in used.items():
        for name in names:
            try:
                source = registry.kind(kind).get_entry(name).source
            except Exception:  # noqa: BLE001 (a plugin object not from the registry)
                source = "unknown"
            try:
                version = metadata.version(source)
            except (metadata.PackageNotFoundError, ValueError):
                version = "?"
            out[name] = f"{source} {version}"
    return out


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp).isoformat(timespec="seconds")


def _device_worker(config: RunConfig, device: str, jobs: list[Job], folds: list[list[str]],
                   weights_used: dict[str, str]) -> None:
    """A side-by-side worker: train and map ``jobs`` on ``device``."""
    from wsss_bench.registry import load_registry

    if device.startswith("cuda"):
        torch.cuda.set_device(torch.device(device))  # pinned memory etc. on this GPU
    runner = Runner(dataclasses.replace(config, device=device, devices=(), gpus=0),
                    load_registry(), Reporter(quiet=True), weights_used=weights_used)
    data = runner.load_data()
    for job in jobs:
        runner.train_and_map(data, folds, job)
