"""Classifier backbones from timm; the CAM target layer comes from timm's ``feature_info``.

Named built-ins (ResNet-18/34/50/101, VGG-19) and the family ``timm:<model_name>``, which makes
any timm model a backbone (``--backbones timm:convnext_atto,resnet18``).
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.errors import UsageError
from wsss_bench.options import option

POOLS = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveMaxPool2d, nn.AdaptiveAvgPool2d)
LIST_MODELS = 'python -c "import timm; print(timm.list_models())"'


def _architecture(model: nn.Module) -> str:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return str(cfg.get("architecture") or type(model).__name__)


def _stem_keys(model: nn.Module, own: dict[str, torch.Tensor]) -> set[str]:
    """The weight key(s) of the first conv: timm's ``pretrained_cfg["first_conv"]``."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    first = cfg.get("first_conv")
    names = [first] if isinstance(first, str) else list(first or [])
    keys = {f"{n}.weight" for n in names if f"{n}.weight" in own}
    if not keys:  # no timm config: the first 4-D weight in registration order
        keys = {next((k for k, v in own.items() if k.endswith("weight") and v.ndim == 4), "")}
    return keys - {""}


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model"):
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")
    state = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):  # saved from DataParallel/DDP
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint (safetensors, or a .pth/.pt read with ``weights_only=True``).

    Tensors are matched by name and shape. A stem conv saved for another number of input
    channels is adapted with timm's ``adapt_input_conv`` (3 → 1: the sum over the input
    channels); other mismatching layers (the classifier head) keep their initialisation. A
    file of which fewer than half the tensors match is a ValueError naming it.
    """
    state = _read_state(path)
    own = model.state_dict()
    stems = _stem_keys(model, own)
    usable: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            continue
        mine = own[key]
        if mine.shape == value.shape:
            usable[key] = value
        elif (key in stems and value.ndim == 4 and mine.ndim == 4
              and mine.shape[:1] + mine.shape[2:] == value.shape[:1] + value.shape[2:]):
            try:
                usable[key] = adapt_input_conv(mine.shape[1], value, base_chans=value.shape[1])
            except (NotImplementedError, ValueError, AssertionError):
                continue
    if not usable or 2 * len(usable) < len(state):
        missing = [k for k in state if k not in usable][:5]
        raise ValueError(
            f"{path}: only {len(usable)} of its {len(state)} tensors match "
            f"{_architecture(model)} by name and shape (e.g. not {', '.join(missing)}); "
            f"is it a checkpoint of this architecture?")
    model.load_state_dict(usable, strict=False)


def _target_entry(model: nn.Module) -> dict[str, Any]:
    """The ``feature_info`` entry of the CAM target: the last one, or the one before it when
    the last is a bare pooling layer with the same channels (VGG's final max-pool)."""
    info = list(getattr(model, "feature_info", None) or [])
    if not info:
        raise ValueError(f"{_architecture(model)} has no feature_info: cannot choose a CAM "
                         f"target layer")
    last = info[-1]
    if (len(info) > 1 and isinstance(model.get_submodule(last["module"]), POOLS)
            and info[-2].get("num_chs") == last.get("num_chs")):
        return info[-2]
    return last


def _restoring_rng(create: Callable[[], nn.Module]) -> nn.Module:
    """``create()``; if it raises, the CPU RNG is put back so a retry builds the same weights."""
    state = torch.random.get_rng_state()
    try:
        return create()
    except BaseException:
        torch.random.set_rng_state(state)
        raise


@dataclass(frozen=True)
class TimmBackbone:
    """A timm model with ``in_chans`` input channels; CAMs at its last feature stage."""

    name: str
    # the name fixes the model; output_strides follows from the model
    fixed_fields: ClassVar[tuple[str, ...]] = ("model_name", "output_strides")
    model_name: str  # declared (wsss_bench.contracts.Backbone): timm's model name
    description: str
    weights_url: str = option("", "with --pretrained: download the weights from this URL "
                                  "instead of timm's hub (\"\" = the hub)")
    pretrained_tag: str = option("", "with --pretrained: timm's weight tag, e.g. tv_in1k for "
                                     "torchvision's ImageNet weights (\"\" = timm's default)")
    # option values left out of unit keys while they hold them: an option added later stays
    # out of the keys at its neutral default, so stores made before it existed stay valid
    key_neutral: ClassVar[dict[str, Any]] = {"pretrained_tag": ""}
    # declared: the strides build() accepts (timm_output_strides(model_name) for any model)
    output_strides: tuple[int, ...] = (32,)

    def build(self, in_chans: int, num_classes: int, pretrained: bool | str | Path = False,
              output_stride: int = 32) -> nn.Module:
        """The classifier; ``pretrained`` is False, True (timm's hub) or a local weights file.

        ``output_stride`` 16 or 8 dilates the last stages (finer CAMs, same parameters); a
        model that cannot do that (VGG, ViTs, …) raises a ValueError and leaves the RNG as it
        was, so that building again at 32 gives the same weights as building at 32 directly.
        """
        local = pretrained if isinstance(pretrained, str | Path) else None
        kwargs: dict[str, Any] = {"pretrained": bool(pretrained) and local is None,
                                  "in_chans": in_chans, "num_classes": num_classes}
        if kwargs["pretrained"] and self.weights_url:  # timm then fetches it with torch.hub
            kwargs["pretrained_cfg_overlay"] = {"url": self.weights_url, "hf_hub_id": None,
                                                "source": ""}
        if output_stride == 32:
            model = timm.create_model(self._hub_name(kwargs["pretrained"]), **kwargs)
        else:
            model = _restoring_rng(lambda: self._create_strided(kwargs, output_stride))
        if local is not None:
            load_local_weights(model, Path(local))
        return model

    def _hub_name(self, from_hub: bool) -> str:
        """``model.tag`` when hub weights with a chosen tag are wanted, else the model name
        (the architecture does not depend on the tag)."""
        return f"{self.model_name}.{self.pretrained_tag}" if from_hub and self.pretrained_tag \
            else self.model_name

    def _create_strided(self, kwargs: dict[str, Any], output_stride: int) -> nn.Module:
        cannot = f"{self.model_name} cannot change its output stride to {output_stride}"
        try:
            model = timm.create_model(self._hub_name(kwargs["pretrained"]),
                                      output_stride=output_stride, **kwargs)
        except (TypeError, ValueError, NotImplementedError) as exc:
            if "output_stride" not in str(exc):
                raise
            raise ValueError(f"{cannot} (timm: {exc}); use output stride 32") from exc
        except AssertionError as exc:  # timm's models assert `output_stride == 32`
            detail = f": {exc}" if str(exc) else ""
            raise ValueError(f"{cannot} (timm: AssertionError{detail}); use output stride 32"
                             ) from exc
        reduction = _target_entry(model).get("reduction")
        if isinstance(reduction, int) and reduction > output_stride:  # silently ignored
            raise ValueError(f"{cannot} (its CAM target stays at stride {reduction}); use "
                             f"output stride 32")
        return model

    def target_layer(self, model: nn.Module) -> nn.Module:
        """The output of the last feature stage (for VGG: the ReLU before the last max-pool)."""
        return model.get_submodule(_target_entry(model)["module"])


STRIDES = (8, 16, 32)


@functools.cache
def timm_output_strides(model_name: str) -> tuple[int, ...]:
    """The output strides of ``STRIDES`` at which ``model_name`` can be built: each finer
    stride is tried once on the meta device (no memory, no weights, the RNG left as it was)."""
    probe = TimmBackbone(name=model_name, model_name=model_name, description="")
    kwargs = {"pretrained": False, "in_chans": 1, "num_classes": 2}
    ok = []
    for stride in STRIDES[:-1]:
        try:
            with torch.device("meta"):
                _restoring_rng(lambda s=stride: probe._create_strided(kwargs, s))
        except Exception:  # the model cannot be built at this stride
            continue
        ok.append(stride)
    return (*ok, 32)


@dataclass(frozen=True)
class TimmFamily:
    """``timm:<model_name>``: any model of ``timm.list_models()`` as a backbone."""

    name: str = "timm:"
    description: str = ("any timm model: timm:<model_name> (see timm.list_models()); CAM "
                        "target: its last feature stage")

    def resolve(self, suffix: str) -> TimmBackbone:
        """The backbone ``timm:<suffix>``; an unknown model is a UsageError with suggestions."""
        if not timm.is_model(suffix):
            close = difflib.get_close_matches(suffix, timm.list_models(), n=5, cutoff=0.6)
            hint = f"did you mean {', '.join(close)}? " if close else ""
            raise UsageError(f"unknown timm model {suffix!r} in backbone '{self.name}{suffix}'; "
                             f"{hint}list timm's models with {LIST_MODELS} (or "
                             f"timm.list_models('*pattern*'))")
        return TimmBackbone(name=f"{self.name}{suffix}", model_name=suffix,
                            description=f"{suffix} from timm, CAM target: its last feature stage",
                            output_strides=timm_output_strides(suffix))


# output strides of the built-ins: what timm_output_strides finds, written out (no probing at
# every registry load)
BUILTIN_STRIDES = {"resnet18": STRIDES, "resnet34": STRIDES, "resnet50": STRIDES,
                   "resnet101": STRIDES, "vgg19": (32,)}
BUILTINS = {
    "resnet18": "ResNet-18 (timm), Grad-CAM target: layer4",
    "resnet34": "ResNet-34 (timm), Grad-CAM target: layer4",
    "resnet50": "ResNet-50 (timm), Grad-CAM target: layer4",
    "resnet101": "ResNet-101 (timm), Grad-CAM target: layer4",
    "vgg19": ("VGG-19 (timm), Grad-CAM target: features.35, the ReLU after conv5_4 (512 "
              "channels, stride 16); timm's last feature_info entry is the max-pool after it "
              "(stride 32), skipped as Grad-CAM takes the last conv layer; input at least 32×32, "
              "output stride fixed"),
}


@hookimpl
def register_backbones(register: Callable[[object], None]) -> None:
    for name, description in BUILTINS.items():
        register(TimmBackbone(name=name, model_name=name, description=description,
                              output_strides=BUILTIN_STRIDES[name]))
    register(TimmFamily())
