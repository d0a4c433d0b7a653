"""The main job: train, make CAMs, calibrate on training folds, score on held-out folds."""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsss_bench import atomic, calibration, download, leaderboard, options, slice_cache
from wsss_bench.errors import UsageError
from wsss_bench.folds import patient_folds, read_folds_file
from wsss_bench.metrics import METRIC_NAMES, score
from wsss_bench.progress import Reporter
from wsss_bench.provenance import run_info
from wsss_bench.registry import Registry, resolve
from wsss_bench.slices import SliceSet, collect
from wsss_bench.training import TrainConfig, resolve_device, train_classifier
from wsss_bench.volumes import MissingData

EMPTY = "Empty"
CAM_TARGETS = ("predicted", "positive")
OUTPUT_STRIDES = ("auto", "8", "16", "32")
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
    workers: int | None = None  # processes that decode a file dataset; None = CPU cores (≤ 8)
    folds_file: str | None = None  # a published split instead of the seeded one
    options: dict[str, dict[str, str]] = field(default_factory=dict)

    def validate(self) -> None:
        for opt, value in (("--epochs", self.epochs), ("--batch-size", self.batch_size),
                           ("--cam-batch-size", self.cam_batch_size)):
            if value < 1:
                raise UsageError(f"{opt} {value}: must be at least 1")
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


def compute_cams(cam, model, target_layer, images: np.ndarray, batch_size: int,
                 device: torch.device, advance, target: str = "predicted",
                 gate: np.ndarray | None = None) -> np.ndarray:
    """CAMs float32[N,H,W] for every slice, in batches on ``device``.

    ``target`` is ``predicted`` (each slice's predicted class, the paper) or ``positive`` (the
    lesion class). ``gate`` bool[N] zeroes the maps of slices predicted negative (WSS-CMER).
    """
    out = np.empty((len(images), *images.shape[2:]), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = _tensor(images[start : start + batch_size]).to(device)
        classes = None if target == "predicted" else "positive"
        out[start : start + len(batch)] = (
            cam.cam(model, target_layer, batch, classes).float().cpu().numpy())
        advance(len(batch))
    if gate is not None:
        out[~gate] = 0.0
    return out


@torch.no_grad()
def predict(model, images: np.ndarray, batch_size: int, device: torch.device) -> np.ndarray:
    """Predicted class int64[N] of every slice (eval mode)."""
    out = [model(_tensor(images[s : s + batch_size]).to(device)).argmax(1).cpu()
           for s in range(0, len(images), batch_size)]
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

    def __init__(self, config: RunConfig, registry: Registry, reporter: Reporter | None = None):
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
        self.grid = calibration.threshold_grid(config.threshold_step)
        self.strides: dict[str, int] = {}  # output stride each backbone was built with
        self.n_folds = config.folds

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
            return collect(self.dataset, self.data_dir, cfg.image_size)
        workers = cfg.workers or slice_cache.default_workers()
        cache_root = Path(cfg.workdir) / "cache"
        args = (self.dataset, self.data_dir, cache_root, workers, cfg.image_size, self.reporter)
        try:
            return slice_cache.prepare(*args)
        except MissingData:
            archive = getattr(self.dataset, "archive", None)
            if archive is None:
                raise
            self.reporter.summary(f"[bold]download[/] {self.dataset.name}: no data in "
                                  f"{self.data_dir}, fetching {archive.url}")
            download.fetch(archive, self.data_dir, self.reporter)
            return slice_cache.prepare(*args)

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

    def run(self) -> tuple[list[dict[str, Any]], list[list[str]]]:
        cfg = self.config
        torch.manual_seed(cfg.seed)
        t0 = time.perf_counter()
        data = self.load_data()
        if cfg.folds_file:
            folds = read_folds_file(cfg.folds_file, data.case_ids, data.labels)
        else:
            folds = patient_folds(data.case_ids, data.labels, cfg.folds, cfg.seed)
        self.summarize_data(data, time.perf_counter() - t0)
        self.write_folds(folds)
        results: dict[str, MethodResult] = {}
        self.n_folds = len(folds)
        for fold, val_cases in enumerate(folds):
            val = np.isin(data.case_ids, val_cases)
            self._run_fold(data, fold, np.flatnonzero(~val), np.flatnonzero(val), results)
        info = run_info(self.device, cfg.seed, asdict(cfg))
        info["plugins"] = self.plugin_settings()
        info["effective"] = {"image_size": list(data.images.shape[2:]),
                             "data_dir": str(self.data_dir) if self.data_dir else None,
                             "folds": len(folds),
                             "in_chans": int(data.images.shape[1]),
                             "output_stride": dict(self.strides)}
        return [self._row(r, info) for r in results.values()], folds

    def _run_fold(self, data: SliceSet, fold: int, train: np.ndarray, val: np.ndarray,
                  results: dict[str, MethodResult]) -> None:
        cfg = self.config
        label = f"fold {fold + 1}/{self.n_folds}"
        cams: dict[str, dict[str, np.ndarray]] = {c: {} for c in self.cams}
        for b_name, backbone in self.backbones.items():
            cams_for_backbone = self._train_and_map(data, fold, train, val, b_name, backbone, label)
            for c_name, maps in cams_for_backbone.items():
                cams[c_name][b_name] = maps
        gt_train, gt_val = data.masks[train], data.masks[val]
        ids_train, ids_val = data.case_ids[train], data.case_ids[val]
        empty = results.setdefault(EMPTY, MethodResult((), None, None, None))
        empty.thresholds.append(None)
        empty.folds.append(score(np.zeros_like(gt_val), gt_val, ids_val))
        units = [(c, f, e) for c in self.cams for f in self.filters
                 for e in [None, *self.ensembles]]
        t0 = time.perf_counter()
        regions = {f_name: _regions(filt, data, train) for f_name, filt in self.filters.items()}
        with self.reporter.task(f"calibrate {label}", total=len(units)) as advance:
            for c_name, f_name, e_name in units:
                region = regions[f_name]
                groups = ([(b,) for b in self.backbones] if e_name is None
                          else [tuple(self.backbones)])
                for group in groups:
                    stack = np.stack([cams[c_name][b] for b in group])
                    ensemble = self.ensembles[e_name] if e_name else None
                    found = calibration.grid_search(
                        stack[:, train], gt_train, ensemble=ensemble, thresholds=self.grid,
                        metric=cfg.select_by, case_ids=ids_train, region=region[train])
                    pred = calibration.binarize(stack[:, val], found.thresholds, ensemble,
                                                region[val])
                    symbol = getattr(ensemble, "symbol", None) if ensemble else None
                    res = MethodResult(group, c_name, e_name, f_name, symbol)
                    res = results.setdefault(res.method, res)
                    res.thresholds.append([float(t) for t in found.thresholds])
                    res.folds.append(score(pred, gt_val, ids_val))
                advance(1)
        best = max((r for r in results.values() if r.folds), key=lambda r: r.folds[-1]["paper_dsc"])
        self.reporter.summary(
            f"[bold]calibrate[/] {label}: {len(units)} (cam, filter, ensemble) units in "
            f"{time.perf_counter() - t0:.1f} s; best on validation: {best.method} paper_dsc "
            f"{best.folds[-1]['paper_dsc']:.4f} (Empty {empty.folds[-1]['paper_dsc']:.4f})")

    def _train_and_map(self, data: SliceSet, fold: int, train: np.ndarray, val: np.ndarray,
                       b_name: str, backbone, label: str) -> dict[str, np.ndarray]:
        cfg = self.config
        seed = derived_seed(cfg.seed, cfg.dataset, fold, b_name)
        torch.manual_seed(seed)
        model = self._build(backbone, data)
        tcfg = TrainConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, seed=seed)
        steps = cfg.epochs * -(-len(train) // cfg.batch_size)
        t0 = time.perf_counter()
        with self.reporter.task(f"train {b_name} {label}", total=steps) as advance:
            result = train_classifier(model, data.images[train], data.labels[train], tcfg,
                                      self.device, on_step=lambda _e, _l: advance(1))
        # predictions of every slice are needed for the gate; otherwise only for the summary
        seen = np.arange(len(data)) if cfg.gate else val
        predicted = np.zeros(len(data), dtype=np.int64)
        predicted[seen] = predict(result.model, data.images[seen], cfg.cam_batch_size,
                                  self.device)
        val_accuracy = float((predicted[val] == data.labels[val]).mean())
        self.reporter.summary(
            f"[bold]train[/] {b_name} {label}: {cfg.epochs} epochs, loss "
            f"{result.losses[0]:.3f} → {result.losses[-1]:.3f}, validation accuracy "
            f"{val_accuracy:.2f} ({time.perf_counter() - t0:.1f} s)")
        target_layer = backbone.target_layer(model)
        maps: dict[str, np.ndarray] = {}
        for c_name, cam in self.cams.items():
            t0 = time.perf_counter()
            with self.reporter.task(f"{c_name} {b_name} {label}", total=len(data)) as advance:
                maps[c_name] = compute_cams(
                    cam, model, target_layer, data.images, cfg.cam_batch_size, self.device,
                    advance, cfg.cam_target, predicted == 1 if cfg.gate else None)
            self.reporter.summary(f"[bold]cams[/] {c_name} {b_name} {label}: {len(data)} maps "
                                  f"({time.perf_counter() - t0:.1f} s)")
        return maps

    def _build(self, backbone, data: SliceSet):
        """An untrained classifier at the run's output stride; in auto mode, stride 32 for a
        backbone that cannot change its stride. The stride used is kept per backbone."""
        in_chans = data.images.shape[1]
        stride = self.output_stride(data.images.shape[-1])
        if stride != 32:
            try:
                model = backbone.build(in_chans=in_chans, num_classes=2, pretrained=False,
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
        return backbone.build(in_chans=in_chans, num_classes=2, pretrained=False)

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
    header = {"split": folds, "split_seed": None if config.folds_file else config.seed,
              "split_file": config.folds_file, "command": command}
    return leaderboard.update(Path(config.leaderboard_dir), config.dataset, rows, header)
