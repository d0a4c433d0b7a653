"""Stage ``cams``: the class activation maps of one classifier, one array per CAM method."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsss_bench import guards
from wsss_bench.core.training import autocast, on_device
from wsss_bench.errors import PluginOutputError
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.plan import CamUnit
from wsss_bench.pipeline.train import as_tensor, load_model


@dataclass(frozen=True)
class Mapped:
    """A CAM unit's result: float16[N,H,W] maps by CAM method, and seconds by method;
    ``failed``: the methods whose plugin broke its contract, with the one-line reason (their
    maps are not stored; the other methods' are)."""

    maps: dict[str, np.ndarray]
    seconds: dict[str, float]
    failed: dict[str, str] = field(default_factory=dict)


def make_cams(unit: CamUnit, ctx: Context) -> Mapped:
    """The CAMs of every slice's CAM view for the methods ``unit.todo`` (the stage function);
    a trained method's unit makes its maps (:func:`wsss_bench.pipeline.methods.make_maps`)."""
    if unit.train.kind == "methods":
        from wsss_bench.pipeline.methods import make_maps

        return make_maps(unit, ctx)
    plan = ctx.plan
    backbone = ctx.plugin("backbones", unit.train.backbone)
    who = guards.label("backbones", backbone, plan.versions)
    model = load_model(ctx, unit.train.backbone, unit.checkpoint(), unit.output_stride)
    layer = guards.call(who, backbone.target_layer, model)
    gate = np.asarray(unit.predicted) == 1 if plan.config.gate else None
    images = ctx.data.cam_input
    maps, seconds, failed = {}, {}, {}
    for name in unit.todo:
        t0 = time.perf_counter()
        out = np.empty((len(images), *images.shape[2:]), dtype=np.float16)  # what is stored
        try:
            maps[name] = compute_cams(ctx.plugin("cams", name), model, layer, images,
                                      plan.config.cam_batch_size, ctx.torch_device,
                                      target=plan.config.cam_target, gate=gate, amp=plan.amp,
                                      channels_last=plan.channels_last, out=out)
        except PluginOutputError as exc:  # this method fails; the others go on
            failed[name] = str(exc)
            continue
        seconds[name] = time.perf_counter() - t0
    return Mapped(maps, seconds, failed)


def compute_cams(cam, model, target_layer, images: np.ndarray, batch_size: int,
                 device: torch.device, advance=None, target: str = "predicted",
                 gate: np.ndarray | None = None, amp: bool = False,
                 channels_last: bool = False, out: np.ndarray | None = None) -> np.ndarray:
    """CAMs float32[N,H,W] for every slice, in batches on ``device``.

    ``target`` is ``predicted`` (each slice's predicted class, the paper: the CAM method gets
    ``None``) or ``positive`` (the lesion class: it gets a tensor of ones). ``gate`` bool[N]
    zeroes the maps of slices predicted negative (WSS-CMER). ``out`` (e.g. float16[N,H,W],
    or a memory-mapped array) receives each batch's float32 maps converted to its dtype, and
    is returned: the same values as converting the whole float32 result, without it.
    """
    if out is None:
        out = np.empty((len(images), *images.shape[2:]), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        batch = on_device(as_tensor(images[start : start + batch_size]), device, channels_last)
        classes = (None if target == "predicted"
                   else torch.ones(len(batch), dtype=torch.long, device=batch.device))
        with autocast(device, amp):
            maps = cam.cam(model, target_layer, batch, classes)
        out[start : start + len(batch)] = maps.float().cpu().numpy()
        if advance is not None:
            advance(len(batch))
    if gate is not None:
        out[~gate] = 0.0
    return out


def store_files(maps: np.ndarray, folder: Path, seconds: float | None = None
                ) -> dict[str, float]:
    """Write one CAM method's maps (float16) into its store unit's folder; the unit's metadata
    (the seconds the maps took)."""
    np.save(folder / "cams.npy", np.asarray(maps, dtype=np.float16))  # no copy if float16
    return {} if seconds is None else {"seconds": seconds}
