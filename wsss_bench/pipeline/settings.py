"""Run settings: what determines a run's numbers, apart from how it is executed.

:class:`RunConfig` is the flat form the CLI, presets and TOML files fill in. Its
:data:`EXECUTION_FIELDS` say where and how fast a run goes (executor, devices, workers, folders)
and never enter a unit key, a manifest name or a leaderboard row; :func:`settings_of` is the
rest, recorded in every row as ``run.config``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from wsss_bench.core import calibration
from wsss_bench.core.metrics import METRIC_NAMES
from wsss_bench.core.statistics import EMPTY  # noqa: F401 (re-exported)
from wsss_bench.core.store import STAGES
from wsss_bench.errors import UsageError

CAM_TARGETS = ("predicted", "positive")
OUTPUT_STRIDES = ("auto", "8", "16", "32")
SWITCHES = ("auto", "on", "off")
ON_OFF = ("on", "off")
CALIBRATIONS = ("per-fold", "across-folds")
FORCE_STAGES = ("prepare", *STAGES)
MIN_CAM_CELLS = 4  # `--output-stride auto`: the CAM grid gets at least this many cells a side


@dataclass(frozen=True)
class RunConfig:
    """Every setting of a run: its numbers' settings and its execution (see the module)."""

    dataset: str = "phantom"
    data_dir: str | None = None
    # the default run is a quick demo (under a minute on 2 CPU cores): timm's two smallest
    # CNNs, trained well; `--preset paper` is the authors' recipe (ResNet-34/50, lr 1e-3)
    backbones: tuple[str, ...] = ("timm:test_resnet", "timm:test_byobnet")
    cams: tuple[str, ...] = ("gradcam",)
    ensembles: tuple[str, ...] = ("and", "or")
    filters: tuple[str, ...] = ("none",)
    methods: tuple[str, ...] = ()  # end-to-end methods (seam, wss-cmer) evaluated beside CAMs
    folds: int = 3
    epochs: int = 3
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
    lr: float = 0.02
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
    executor: str = "local"  # how units run: local, processes, ray or a plugin's
    gpus: int = 0  # > 1: shorthand for the processes executor on that many CUDA GPUs
    devices: tuple[str, ...] = ()  # the processes executor's devices (tests: cpu,cpu)
    leaderboard_name: str | None = None  # <name>.json/.md instead of <dataset>.json/.md
    preset: str | None = None  # recorded only: the preset's values are already applied
    bootstrap: int = 1000  # resamples of the leaderboard's statistics; 0 = none
    figures: bool = True  # draw the run's figures beside its leaderboard
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
        if self.bootstrap < 0:
            raise UsageError(f"--bootstrap {self.bootstrap}: must be 0 (no statistics) or more")
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
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"--methods {','.join(self.methods)}: a method is listed twice")
        if clash := sorted(set(self.methods) & set(self.backbones)):
            raise UsageError(f"--methods {','.join(clash)}: also named in --backbones; a "
                             f"method and a backbone of one run need different names")
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


# where and how fast a run goes, or where it writes: not its numbers (the bootstrap's
# resamples make the leaderboard's statistics, recorded in its header, not any row's numbers;
# figures are drawn from the numbers)
EXECUTION_FIELDS = ("device", "gpus", "devices", "executor", "workers", "workdir",
                    "leaderboard_dir", "leaderboard_name", "force", "bootstrap", "figures")


def settings_of(config: RunConfig, executor_options: tuple[str, ...] = ()) -> dict[str, Any]:
    """The settings that determine the numbers: every field but :data:`EXECUTION_FIELDS`,
    and plugin options without those of ``executor_options`` (the executor's name)."""
    out = {k: v for k, v in asdict(config).items() if k not in EXECUTION_FIELDS}
    out["options"] = {k: v for k, v in config.options.items() if k not in executor_options}
    if not out["methods"]:  # named only when set: runs without methods keep their settings
        del out["methods"]
    return out
