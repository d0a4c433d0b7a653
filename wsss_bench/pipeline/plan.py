"""The plan: every unit of a run listed up front, as plain picklable data with its key.

(Over 300 lines because every unit key's description is built here, in one place, exactly as
the store has always had it.)

:meth:`Plan.build` validates the settings and resolves everything once (plugins and their
options, versions, initial weights, device, precision). The prepare unit (the slice cache) comes
first; once its data and the fold split are known, :meth:`Plan.with_data` lists the train units
(backbone, fold, seed), the CAM units (the CAMs of one classifier) and the evaluate units
(CAM, filter, ensemble or backbone, fold or all folds, seed). A unit's key hashes its
description (:func:`wsss_bench.core.store.digest`); the descriptions are exactly those the store has
always used, so workdirs made by earlier versions are reused.
"""

from __future__ import annotations

import dataclasses
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wsss_bench import options
from wsss_bench.core import calibration, weights
from wsss_bench.core.store import digest
from wsss_bench.core.training import resolve_device
from wsss_bench.errors import UsageError
from wsss_bench.pipeline.settings import FORCE_STAGES, MIN_CAM_CELLS, RunConfig, settings_of
from wsss_bench.registry import Registry, resolve

PLUGIN_KINDS = ("datasets", "backbones", "cams", "ensembles", "filters", "methods")


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
class PrepareUnit:
    """The slices of the dataset: the slice cache (``<workdir>/cache/<key>``, keyed by the
    dataset, its options, the image size and every listed file's path, size and mtime) for a
    dataset that reads files; a generated dataset is identified by its settings."""

    dataset: str
    data_dir: str | None  # None: generated data (or the default data folder, resolved then)
    cache_root: str
    image_size: int | None
    workers: int | None
    force: bool

    def describe(self) -> str:
        return f"prepare {self.dataset}"


@dataclass(frozen=True)
class TrainUnit:
    """Train one classifier: ``backbone`` on every case outside fold ``fold``, seed ``seed``;
    with ``kind`` ``"methods"``, train the end-to-end method of that name instead."""

    backbone: str
    fold: int
    seed: int
    key: str
    description: dict[str, Any]
    label: str  # "resnet18 fold 1/3" (with the seed when there are several)
    validation: tuple[str, ...]  # the held-out cases (the complement of train_cases)
    kind: str = "backbones"  # or "methods"

    def describe(self) -> str:
        return f"train {self.label} ({self.key})"

    def portable(self) -> TrainUnit:
        return self


@dataclass(frozen=True)
class CamUnit:
    """The CAMs of one classifier, one store unit per CAM method (``keys`` by method); for a
    method's train unit, one store unit per named output of the method (and per CAM method
    when its model has a CAM head)."""

    train: TrainUnit
    keys: dict[str, tuple[str, dict[str, Any]]]  # CAM method -> (key, description)
    todo: tuple[str, ...] = ()  # the methods to make (the rest are stored)
    model_path: str = ""  # the stored checkpoint (model.pt), set by the driver
    model: bytes | None = None  # its bytes, attached by :meth:`portable`
    output_stride: int = 32
    predicted: Any = None  # int8[N] predicted class of every slice (for the gate)

    def portable(self) -> CamUnit:
        """The unit with its checkpoint's bytes, for a worker without the store."""
        if self.model is not None or not self.model_path:
            return self
        return dataclasses.replace(self, model=Path(self.model_path).read_bytes())

    def checkpoint(self) -> bytes:
        return self.model if self.model is not None else Path(self.model_path).read_bytes()

    def describe(self) -> str:
        return f"cams {','.join(self.todo or self.keys)} {self.train.label}"


@dataclass(frozen=True)
class EvalUnit:
    """Calibrate and score one method on one fold (or, across folds, on every fold)."""

    cam: str
    filter: str
    ensemble: str | None
    group: tuple[str, ...]  # its backbones
    seed: int
    folds: tuple[int, ...]  # one fold, or every fold for across-folds calibration
    keys: tuple[tuple[str, dict[str, Any]], ...]  # per fold: (key, description)
    cam_keys: tuple[tuple[str, ...], ...]  # per fold: the CAM unit keys of ``group``

    @property
    def method(self) -> tuple[str, str, str | None, tuple[str, ...]]:
        return (self.cam, self.filter, self.ensemble, self.group)

    def describe(self) -> str:
        core = f"{self.ensemble}({','.join(self.group)})" if self.ensemble else self.group[0]
        folds = ",".join(str(k + 1) for k in self.folds)
        return (f"evaluate {core} / {self.cam} / {self.filter} fold {folds} seed {self.seed} "
                f"({self.keys[0][0]})")

    def portable(self) -> EvalUnit:
        return self


@dataclass(frozen=True)
class Plan:
    """One run's settings resolved and its units listed (see the module)."""

    config: RunConfig
    device: str  # where the driver and the local executor compute ("cpu", "cuda", "cuda:1")
    amp: bool
    channels_last: bool
    seeds: tuple[int, ...]
    grid: tuple[float, ...]
    plugin_settings: dict[str, dict[str, Any]]  # every used plugin's option values
    key_settings: dict[str, dict[str, Any]]  # the same without declared-neutral values
    # per plugin, the options set to other values than the registered object's (part of the
    # leaderboard row's identity: rows made with other options are other rows)
    row_options: dict[str, dict[str, Any]]
    versions: dict[str, str]  # plugin name -> "<distribution> <version>"
    weights: dict[str, str]  # backbone -> its initial weights (random, timm-hub, file ...)
    reads_files: bool  # the dataset reads files (through the slice cache)
    executor: str
    executor_options: dict[str, str]
    devices: tuple[str, ...]  # the processes executor's devices
    force: frozenset[str]
    prepare: PrepareUnit
    # known once the data is prepared and split (:meth:`with_data`)
    data_origin: str = ""
    in_chans: int = 0
    image_size: int = 0
    folds: tuple[tuple[str, ...], ...] = ()
    train: tuple[TrainUnit, ...] = ()
    cams: tuple[CamUnit, ...] = ()
    evaluate: tuple[EvalUnit, ...] = ()
    options: dict[str, dict[str, str]] = field(default_factory=dict)
    # end-to-end methods: the declared input channels they need and whether --cams run on them
    min_channels: dict[str, int] = field(default_factory=dict)
    cam_heads: frozenset[str] = frozenset()
    outputs: dict[str, tuple[str, ...]] = field(default_factory=dict)  # known with the data

    @property
    def settings(self) -> dict[str, Any]:
        """What determines the numbers, as recorded in rows and the manifest name."""
        return settings_of(self.config, (self.executor,))

    # --- building ---------------------------------------------------------------------------
    @classmethod
    def build(cls, config: RunConfig, registry: Registry) -> Plan:
        """Validate ``config`` against ``registry`` and resolve everything but the data."""
        config.validate()
        names = {"datasets": (config.dataset,), "backbones": config.backbones,
                 "cams": config.cams, "ensembles": config.ensembles, "filters": config.filters,
                 "methods": config.methods}
        executor, devices = _executor_of(config)
        objs = {kind: dict(zip(names[kind], resolve(registry, kind, list(names[kind])),
                               strict=True)) for kind in PLUGIN_KINDS}
        executor_obj = resolve(registry, "executors", [executor])[0]
        used = {n for kind in PLUGIN_KINDS for n in names[kind]}
        for plugin in config.options:
            if plugin not in used and plugin != executor:
                raise UsageError(f"--option {plugin}.…: this run uses no plugin called "
                                 f"{plugin!r}; check the name or add it to the run")
        configured = {n: options.configure(o, config.options.get(n, {}))
                      for kind in PLUGIN_KINDS for n, o in objs[kind].items()}
        options.configure(executor_obj, config.options.get(executor, {}))  # checks them
        if config.ensembles and len(config.backbones) < 2:
            raise UsageError("--ensembles needs at least 2 --backbones; pass more backbones or "
                             "--ensembles ''")
        try:
            device = resolve_device(devices[0] if devices else config.device)
            for other in devices:
                _check_device(other, device.type)
        except (ValueError, RuntimeError) as exc:
            raise UsageError(f"--devices/--device: {exc}") from None
        if config.output_stride != "auto":
            for name in config.backbones:
                strides = configured[name].output_strides
                if int(config.output_stride) not in strides:
                    raise UsageError(f"--output-stride {config.output_stride}: backbone "
                                     f"{name!r} declares only {strides}; pass --output-stride "
                                     f"auto or one of those")
        force = set(config.force)
        for i, stage in enumerate(FORCE_STAGES):  # a forced stage forces every later one
            if stage in force:
                force.update(FORCE_STAGES[i:])
        plugin_settings = {n: {k: getattr(o, k) for k in options.keyed_fields(o)}
                           for n, o in configured.items()}
        key_settings = {}
        for n, values in plugin_settings.items():
            neutral = getattr(configured[n], "key_neutral", {})
            key_settings[n] = {k: v for k, v in values.items()
                               if k not in neutral or neutral[k] != v}
        for n in config.ensembles:  # declared since, options before: kept in the keys
            key_settings[n] = {**_ensemble_declared(configured[n]), **key_settings[n]}
        registered = {n: o for kind in PLUGIN_KINDS for n, o in objs[kind].items()}
        row_options = {n: {k: v for k, v in key_settings[n].items()
                           if k in options.option_fields(configured[n])
                           and v != getattr(registered[n], k, v)} for n in configured}
        return cls(
            config=config, device=str(device),
            amp=_switch(config.amp, device.type), channels_last=_switch(config.channels_last,
                                                                         device.type),
            seeds=config.seeds or (config.seed,),
            grid=tuple(float(t) for t in calibration.threshold_grid(config.threshold_step)),
            plugin_settings=plugin_settings, key_settings=key_settings,
            row_options={n: v for n, v in row_options.items() if v},
            versions=plugin_versions(registry, names),
            weights=_resolve_weights(config, {n: configured[n] for n in config.backbones}),
            reads_files=configured[config.dataset].reads_files,
            executor=executor, executor_options=dict(config.options.get(executor, {})),
            devices=devices, force=frozenset(force),
            prepare=PrepareUnit(config.dataset, config.data_dir,
                                str(Path(config.workdir) / "cache"), config.image_size,
                                config.workers, "prepare" in force),
            options={k: dict(v) for k, v in config.options.items()},
            min_channels={n: int(o.min_channels) for n, o in objs["methods"].items()},
            cam_heads=frozenset(n for n, o in objs["methods"].items() if o.cam_head))

    def with_data(self, origin: str, shape: tuple[int, ...], case_ids: list[str],
                  folds: list[list[str]],
                  outputs: dict[str, tuple[str, ...]] | None = None) -> Plan:
        """The plan with its data identity and split, and every unit listed; ``outputs``:
        each method's named outputs for the data's channels (``Method.outputs``)."""
        plan = dataclasses.replace(self, data_origin=origin, in_chans=int(shape[1]),
                                   image_size=int(shape[-1]),
                                   folds=tuple(tuple(f) for f in folds),
                                   outputs=dict(outputs or {}))
        plan._check_methods()
        plan = dataclasses.replace(plan, outputs={m: tuple(o) for m, o in plan.outputs.items()})
        cases = sorted(set(case_ids))
        train = tuple(plan._train_unit(cases, seed, fold, b) for seed in plan.seeds
                      for fold in range(len(folds)) for b in plan.config.backbones)
        cams = tuple(CamUnit(t, {c: plan.cam_key(t.key, c) for c in plan.config.cams})
                     for t in train)
        method_train = tuple(plan._method_unit(cases, seed, fold, m) for seed in plan.seeds
                             for fold in range(len(folds)) for m in plan.config.methods)
        method_maps = tuple(CamUnit(t, {**{o: plan.output_key(t.key, t.backbone, o)
                                           for o in plan.outputs[t.backbone]},
                                        **{c: plan.cam_key(t.key, c) for c in plan.config.cams
                                           if t.backbone in plan.cam_heads}})
                            for t in method_train)
        plan = dataclasses.replace(plan, train=train + method_train, cams=cams + method_maps)
        return dataclasses.replace(plan, evaluate=plan._eval_units())

    def _check_methods(self) -> None:
        """Every method gets the channels it declares, and one name per map it makes."""
        for name in self.config.methods:
            need = self.min_channels[name]
            if self.in_chans < need:
                raise UsageError(
                    f"--methods {name}: needs at least {need} input channels, and dataset "
                    f"{self.config.dataset!r} gives {self.in_chans}; choose a dataset with "
                    f"more modalities (e.g. -o phantom.channels=2 or -o brats.modalities="
                    f"flair,t1ce) or drop {name}")
            names = self.outputs.get(name, ())
            if (not isinstance(names, tuple | list) or not names
                    or not all(isinstance(o, str) and o and "/" not in o for o in names)
                    or len(set(names)) != len(names)):
                raise UsageError(f"method {name!r}: outputs() returned {names!r}; expected "
                                 f"distinct non-empty names without '/'; fix the method plugin")
            if name in self.cam_heads and (clash := set(names) & set(self.config.cams)):
                raise UsageError(f"method {name!r}: output(s) {sorted(clash)} have the names "
                                 f"of CAM methods of this run; drop them from --cams")

    def label(self, seed: int, fold: int) -> str:
        text = f"fold {fold + 1}/{len(self.folds)}"
        return text if len(self.seeds) == 1 else f"{text} seed {seed}"

    def methods(self) -> list[tuple[str, str, str | None, tuple[str, ...]]]:
        """(CAM, filter, ensemble or None, backbones) of every evaluated method; an end-to-end
        method's rows are (output or CAM, filter, None, (method,)), one per output (and per
        CAM method when its model has a CAM head)."""
        cfg = self.config
        out = [(c, f, e, group) for c in cfg.cams for f in cfg.filters
               for e in [None, *cfg.ensembles]
               for group in ([(b,) for b in cfg.backbones] if e is None
                             else [tuple(cfg.backbones)])]
        for m in cfg.methods:
            maps = [*self.outputs.get(m, ()), *(cfg.cams if m in self.cam_heads else ())]
            out += [(o, f, None, (m,)) for o in maps for f in cfg.filters]
        return out

    def output_stride(self) -> int:
        if self.config.output_stride == "auto":
            return auto_output_stride(self.image_size)
        return int(self.config.output_stride)

    # --- unit keys (descriptions exactly as the store has always had them) ------------------
    def _train_unit(self, cases: list[str], seed: int, fold: int, backbone: str) -> TrainUnit:
        cfg = self.config
        description = {
            "data": self.data_origin,
            "train_cases": sorted(set(cases) - set(self.folds[fold])),
            "backbone": backbone,
            "plugin": self.versions.get(backbone),
            "dataset_plugin": self.versions.get(cfg.dataset),
            "device_type": self.device.split(":")[0],
            "settings": self.key_settings[backbone],
            "in_chans": self.in_chans,
            "output_stride": cfg.output_stride,
            "training": self.training_settings(),
            "seed": derived_seed(seed, cfg.dataset, fold, backbone),
            "weights": weights.key_of(self.weights[backbone]),
            "amp": self.amp,
            "channels_last": self.channels_last,
            "predict_batch": cfg.cam_batch_size,
        }
        return TrainUnit(backbone, fold, seed, digest(["train", description]), description,
                         f"{backbone} {self.label(seed, fold)}", tuple(self.folds[fold]))

    def _method_unit(self, cases: list[str], seed: int, fold: int, method: str) -> TrainUnit:
        """Train end-to-end method ``method`` on fold ``fold``'s training cases."""
        cfg = self.config
        description = {
            "data": self.data_origin,
            "train_cases": sorted(set(cases) - set(self.folds[fold])),
            "method": method,
            "plugin": self.versions.get(method),
            "dataset_plugin": self.versions.get(cfg.dataset),
            "device_type": self.device.split(":")[0],
            "settings": self.key_settings[method],
            "in_chans": self.in_chans,
            "training": self.training_settings(),
            "seed": derived_seed(seed, cfg.dataset, fold, "method", method),
            "amp": self.amp,
            "predict_batch": cfg.cam_batch_size,
        }
        return TrainUnit(method, fold, seed, digest(["train", description]), description,
                         f"{method} {self.label(seed, fold)}", tuple(self.folds[fold]),
                         kind="methods")

    def output_key(self, train_key: str, method: str, output: str
                   ) -> tuple[str, dict[str, Any]]:
        """The store unit of one named output of a trained method (its maps of every slice)."""
        description = {"train": train_key, "method": method, "output": output,
                       "plugin": self.versions.get(method),
                       "device_type": self.device.split(":")[0],
                       "settings": self.key_settings[method], "gate": self.config.gate,
                       "amp": self.amp}
        return digest(["cams", description]), description

    def training_settings(self) -> dict[str, Any]:
        """Precise-BN is named only when off, so the keys of units made before the switch
        existed (always on) stay valid."""
        cfg = self.config
        out: dict[str, Any] = {"epochs": cfg.epochs, "batch_size": cfg.batch_size, "lr": cfg.lr}
        if cfg.precise_bn == "off":
            out["precise_bn"] = False
        return out

    def cam_key(self, train_key: str, cam: str) -> tuple[str, dict[str, Any]]:
        cfg = self.config
        description = {"train": train_key, "cam": cam, "plugin": self.versions.get(cam),
                       "device_type": self.device.split(":")[0],
                       "settings": self.key_settings[cam], "target": cfg.cam_target,
                       "gate": cfg.gate, "amp": self.amp}
        return digest(["cams", description]), description

    def evaluate_key(self, cam_keys: list[str], ensemble: str | None, filter_: str,
                     val_cases: list[str] | tuple[str, ...],
                     across: tuple[list[list[str]], list[list[str]]] | None = None
                     ) -> tuple[str, dict[str, Any]]:
        """``across`` (every fold's CAM unit keys and the folds) marks across-folds
        calibration, whose thresholds depend on every fold."""
        settings = self.key_settings
        description: dict[str, Any] = {
            "cams": list(cam_keys), "ensemble": ensemble,
            "ensemble_settings": settings.get(ensemble) if ensemble else None,
            "filter": filter_, "filter_settings": settings[filter_],
            "plugins": [self.versions.get(ensemble), self.versions.get(filter_)],
            "validation": sorted(val_cases), "step": self.config.threshold_step,
            "select_by": self.config.select_by}
        if across is not None:
            all_cams, folds = across
            description["calibrate"] = {"mode": "across-folds", "cams": all_cams,
                                        "folds": [sorted(f) for f in folds]}
        return digest(["evaluate", description]), description

    def _eval_units(self) -> tuple[EvalUnit, ...]:
        cam_of = {(c.train.seed, c.train.fold, c.train.backbone): c for c in self.cams}
        n = len(self.folds)
        folds = [list(f) for f in self.folds]
        units = []
        for seed in self.seeds:
            def keys_of(fold: int, cam: str, group: tuple[str, ...], seed: int = seed
                        ) -> tuple[str, ...]:
                return tuple(cam_of[(seed, fold, b)].keys[cam][0] for b in group)

            across = self.config.calibrate == "across-folds"
            for fold_set in ([tuple(range(n))] if across else [(k,) for k in range(n)]):
                for c, f, e, group in self.methods():
                    per_fold = [list(keys_of(k, c, group)) for k in range(n)]
                    keys = tuple(self.evaluate_key(per_fold[k], e, f, folds[k],
                                                   across=(per_fold, folds) if across else None)
                                 for k in fold_set)
                    units.append(EvalUnit(c, f, e, group, seed, fold_set, keys,
                                          tuple(keys_of(k, c, group) for k in fold_set)))
        return tuple(units)


def _ensemble_declared(ensemble: Any) -> dict[str, Any]:
    """An ensemble's ``symbol`` and ``slice_rule`` as its evaluate units' keys have always
    held them (they were options before they became declared attributes; an ensemble that
    declares neither, like one that had no such options, adds nothing)."""
    out = {} if ensemble.symbol is None else {"symbol": ensemble.symbol}
    if ensemble.slice_rule is not None:
        out["slice_rule"] = ensemble.slice_rule
    return out


def _check_device(text: str, device_type: str) -> None:
    """One of ``--devices``: a device this machine has, of the same type as the first."""
    import torch

    device = torch.device(text)  # RuntimeError for a name torch does not know
    if device.type != device_type:
        raise ValueError(f"{text}: every device must be of one type ({device_type}), since "
                         f"the device type is part of every unit key")
    if device.type == "cuda" and device.index is not None and (
            device.index >= torch.cuda.device_count()):
        raise ValueError(f"{text}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def _switch(value: str, device_type: str) -> bool:
    """``--amp``/``--channels-last``: auto means on CUDA only."""
    return value == "on" or (value == "auto" and device_type == "cuda")


def _executor_of(config: RunConfig) -> tuple[str, tuple[str, ...]]:
    """The executor's name and the processes executor's devices (``--gpus N`` is the
    processes executor on ``cuda:0`` … ``cuda:N-1``)."""
    if config.devices:
        name = "processes" if config.executor == "local" else config.executor
        return name, tuple(config.devices)
    if config.gpus > 1:
        import torch

        have = torch.cuda.device_count()
        if config.gpus > have:
            raise UsageError(f"--gpus {config.gpus}: this machine has {have} CUDA GPU(s); "
                             f"pass --gpus {have} or fewer")
        name = "processes" if config.executor == "local" else config.executor
        return name, tuple(f"cuda:{i}" for i in range(config.gpus))
    return config.executor, ()


def _resolve_weights(config: RunConfig, backbones: dict[str, Any]) -> dict[str, str]:
    """Each backbone's initial weights, resolved once (an unreachable hub is tried once)."""
    out: dict[str, str] = {}
    for name, backbone in backbones.items():
        failed = [w for w in out.values() if w.startswith("random (hub")]
        if failed and config.pretrained and not config.weights:
            out[name] = failed[0]
        else:
            out[name] = weights.resolve(backbone, config.weights, config.pretrained)
    return out


def plugin_versions(registry: Registry, used: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """``{plugin name: "<distribution> <version>"}``: part of every unit key, so a plugin
    release that changes results never reuses units of the old release. A third-party
    distribution installed for development (editable, or without a wheel's RECORD) adds
    ``source <hash>`` of its plugin's package, so that editing the code makes new units."""
    from importlib import metadata

    out: dict[str, str] = {}
    for kind, names in used.items():
        for name in names:
            try:
                entry = registry.kind(kind).get_entry(name)
                source = entry.source
            except Exception:  # noqa: BLE001 (a plugin object not from the registry)
                entry, source = None, "unknown"
            try:
                version = metadata.version(source)
            except (metadata.PackageNotFoundError, ValueError):
                version = "?"
            out[name] = f"{source} {version}"
            if entry is not None and version != "?" and in_development(source):
                out[name] += f" source {source_hash(entry.obj)}"
    return out


def in_development(distribution: str) -> bool:
    """Whether ``distribution`` (not wsss-bench itself, whose built-ins are versioned with
    the core) is installed editable or without a wheel's RECORD: its code can change under
    the same version."""
    from importlib import metadata

    if distribution.replace("_", "-").lower() == "wsss-bench":
        return False
    dist = metadata.distribution(distribution)
    if dist.read_text("RECORD") is None:
        return True
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
    except json.JSONDecodeError:
        return True
    return bool(direct.get("dir_info", {}).get("editable", False))


def source_hash(obj: Any) -> str:
    """A 12-hex-digit hash of the Python source of the top-level package (or module) that
    defines ``obj``'s class: every ``.py`` file under it, by relative path and content."""
    import hashlib
    import sys

    top = sys.modules.get(type(obj).__module__.split(".")[0])
    where = Path(getattr(top, "__file__", "") or "")
    if not where.is_file():
        return "unknown"
    files = sorted(where.parent.rglob("*.py")) if where.name == "__init__.py" else [where]
    digest_ = hashlib.sha256()
    for path in files:
        digest_.update(str(path.relative_to(where.parent)).encode() + b"\0")
        digest_.update(path.read_bytes() + b"\0")
    return digest_.hexdigest()[:12]


def weights_argument(plan: Plan, backbone: Any) -> bool | Path:
    """What ``backbone.build(pretrained=…)`` gets: a local file, True (the hub) or False."""
    return weights.build_argument(backbone, plan.weights[backbone.name], plan.config.weights)
