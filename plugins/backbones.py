"""Classifier backbones from timm; the CAM target layer comes from timm's ``feature_info``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from wsss_bench import hookimpl


def load_local_weights(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint (safetensors, or a .pth/.pt read with ``weights_only=True``).

    Layers whose shapes differ (the classifier head, a 1-channel stem) are left as initialised.
    """
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state) if isinstance(state, dict) else state
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)


@dataclass(frozen=True)
class TimmBackbone:
    """A timm model with ``in_chans`` input channels; CAMs at its last feature stage."""

    name: str
    model_name: str
    description: str

    def build(self, in_chans: int, num_classes: int, pretrained: bool | str | Path = False,
              output_stride: int = 32) -> nn.Module:
        """The classifier; ``pretrained`` is False, True (timm's hub) or a local weights file.

        ``output_stride`` 16 or 8 dilates the last stages (finer CAMs, same parameters).
        """
        local = pretrained if isinstance(pretrained, str | Path) else None
        extra = {} if output_stride == 32 else {"output_stride": output_stride}
        model = timm.create_model(
            self.model_name,
            pretrained=bool(pretrained) and local is None,
            in_chans=in_chans,
            num_classes=num_classes,
            **extra,
        )
        if local is not None:
            load_local_weights(model, Path(local))
        return model

    def target_layer(self, model: nn.Module) -> nn.Module:
        return model.get_submodule(model.feature_info[-1]["module"])


RESNETS = {
    "resnet18": "ResNet-18 (timm), Grad-CAM target: layer4",
    "resnet34": "ResNet-34 (timm), Grad-CAM target: layer4",
    "resnet50": "ResNet-50 (timm), Grad-CAM target: layer4",
}


@hookimpl
def register_backbones(register) -> None:
    for name, description in RESNETS.items():
        register(TimmBackbone(name=name, model_name=name, description=description))
