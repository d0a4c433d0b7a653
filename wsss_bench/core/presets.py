"""Presets and ``--config run.toml``: how a run's settings are put together.

Precedence, lowest first: the defaults, the preset (``--preset``), the config file
(``--config``), the flags on the command line. The effective settings are stored in every
leaderboard row (``run.config``).

``--preset paper`` is the authors' pipeline for the dataset, as the paper (Ostrowski,
Prabakaran, Shafique, "A Novel Weakly Supervised Semantic Segmentation Ensemble Framework for
Medical Imaging", Section IV) and their public code (ErikOstrowski/Automated_Ensemble) do it:
ResNet-34 and ResNet-50, Grad-CAM of the predicted class, the four ensembles ('and', 'or',
'<', '>'), with and without the dataset's filter, threshold grid step 0.1, 3 folds, BatchNorm's
running averages (no precise-BN), and one threshold tuple for all folds chosen on the mean of
the folds' training grids (the paper's Fig. 6; its code uses one fixed pair for every fold).
brats and msd-brain: [FLAIR, T1ce, T2] training input, the CAM of FLAIR binarised at 0.8 to
0/255 (the authors' Grad-CAM input), 128×128 crops, 10 epochs, batch 32, from scratch, the
brain-and-central-band filter. decathlon: ADC slices at 320×320, 5 epochs, batch 4, ImageNet
weights with torchvision's tags (``tv_in1k``: the weights of torchvision's ``pretrained=True``)
when ``--pretrained`` can reach them. Where wsss-bench still differs is listed in
:mod:`wsss_bench.core.deviations` and the README's "Deviations from the paper".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import tomllib

from wsss_bench.errors import UsageError

_COMMON: dict[str, Any] = {
    "backbones": ("resnet34", "resnet50"),
    "cams": ("gradcam",),
    "ensembles": ("and", "or", "smaller", "bigger"),
    "threshold_step": 0.1,
    "lr": 1e-3,  # SGD, momentum 0.9 (the authors' train.py)
    "folds": 3,
    "cam_target": "predicted",
    "gate": False,
    "precise_bn": "off",
    "calibrate": "across-folds",
    "amp": "off",  # the authors' code runs in float32, on a GPU too
}
_BRAIN_OPTIONS = {"modalities": "flair,t1ce,t2", "crop": "56:184,56:184,13:141",
                  "cam_binarize": "0.8", "cam_value": "255", "cam_modality": "flair"}
_BRAIN: dict[str, Any] = {**_COMMON, "filters": ("none", "brain-band"), "epochs": 10,
                          "batch_size": 32, "pretrained": False}
TORCHVISION_WEIGHTS = {"pretrained_tag": "tv_in1k"}
PRESETS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {
        "decathlon": {**_COMMON, "filters": ("none", "center-box"), "epochs": 5,
                      "batch_size": 4, "pretrained": True,
                      "options": {"decathlon": {"modality": "adc", "size": "320"},
                                  "resnet34": dict(TORCHVISION_WEIGHTS),
                                  "resnet50": dict(TORCHVISION_WEIGHTS)}},
        "brats": {**_BRAIN, "options": {"brats": dict(_BRAIN_OPTIONS)}},
        "msd-brain": {**_BRAIN, "options": {"msd-brain": dict(_BRAIN_OPTIONS)}},
    },
}


def preset(name: str, dataset: str) -> dict[str, Any]:
    """The settings of preset ``name`` for ``dataset``; unknown names are a UsageError."""
    if name not in PRESETS:
        raise UsageError(f"--preset {name}: unknown preset; choose one of {', '.join(PRESETS)}")
    per_dataset = PRESETS[name]
    if dataset not in per_dataset:
        raise UsageError(f"--preset {name}: no settings for dataset {dataset!r}; it has "
                         f"{', '.join(per_dataset)}")
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in per_dataset[dataset].items()}


def read_config(path: Path, known: set[str]) -> dict[str, Any]:
    """The settings of a TOML config file: keys are the ``run`` options (``batch-size`` or
    ``batch_size``), lists or comma-separated strings for lists, and a table ``[options.NAME]``
    for plugin options. An unknown key or unreadable file is a UsageError naming it."""
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise UsageError(f"--config {path}: not readable TOML ({exc})") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        name = key.replace("-", "_")
        if name == "options":
            if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
                raise UsageError(f"--config {path}: 'options' must be tables [options.PLUGIN]")
            out["options"] = {p: {k: _text(v) for k, v in kv.items()} for p, kv in value.items()}
        elif name in known:
            out[name] = value
        else:
            raise UsageError(f"--config {path}: unknown setting {key!r}; use the names of "
                             f"`wsss-bench run --help` (e.g. batch-size)")
    return out


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def merge_options(*layers: dict[str, dict[str, str]] | None) -> dict[str, dict[str, str]]:
    """Plugin options of several layers; later layers win key by key."""
    out: dict[str, dict[str, str]] = {}
    for layer in layers:
        for plugin, values in (layer or {}).items():
            out.setdefault(plugin, {}).update(values)
    return out


def options_for_used(options: dict[str, dict[str, str]] | None, config: Any
                     ) -> dict[str, dict[str, str]]:
    """A preset's plugin options, without those of plugins the run does not use (e.g. the
    ResNet-50 weight tag when ``--backbones`` replaces the preset's backbones)."""
    used = {config.dataset, *config.backbones, *config.cams, *config.ensembles,
            *config.filters, *config.methods}
    return {p: dict(v) for p, v in (options or {}).items() if p in used}


# RunConfig fields that decide where and how fast a run goes, or where it writes, not its
# numbers (and the dataset, which picks the preset); every other field is compared by
# `overrides`
def _not_compared() -> frozenset[str]:
    from wsss_bench.pipeline.settings import EXECUTION_FIELDS as RUN_EXECUTION

    return frozenset(RUN_EXECUTION) | {"dataset", "data_dir", "cam_batch_size", "preset",
                                       "options"}


EXECUTION_FIELDS = _not_compared()


def overrides(config: Any, registry: Any) -> list[str]:
    """Where a preset run's effective settings differ from its preset, one line each
    (``epochs 2 (preset: 10)``, ``-o brats.modalities=flair,t1ce (preset: flair,t1ce,t2)``):
    every setting that changes results, the preset's value or else the default, and every
    option of every plugin the run uses, compared as the plugin parses it; [] without a
    preset."""
    from dataclasses import fields

    from wsss_bench import options
    from wsss_bench.registry import resolve

    if not config.preset:
        return []
    wanted = preset(config.preset, config.dataset)
    out = []
    for f in fields(config):
        if f.name in EXECUTION_FIELDS:
            continue
        want = wanted.get(f.name, f.default)
        have = getattr(config, f.name)
        if have != want:
            out.append(f"{f.name} {_show(have)} (preset: {_show(want)})")
    preset_options = wanted.get("options", {})
    for kind, names in (("datasets", (config.dataset,)), ("backbones", config.backbones),
                        ("cams", config.cams), ("ensembles", config.ensembles),
                        ("filters", config.filters), ("methods", config.methods)):
        for name, obj in zip(names, resolve(registry, kind, list(names)), strict=True):
            want_obj = options.configure(obj, preset_options.get(name, {}))
            have_obj = options.configure(obj, config.options.get(name, {}))
            for key in options.option_fields(obj):
                have, want = getattr(have_obj, key), getattr(want_obj, key)
                if have != want:
                    out.append(f"-o {name}.{key}={_show(have)} (preset: {_show(want)})")
    return out


def _show(value: Any) -> str:
    if isinstance(value, tuple | list):
        return ",".join(map(str, value))
    return str(value)
