"""``seam``: SEAM (Wang et al., CVPR 2020, "Self-supervised Equivariant Attention Mechanism").

A CAM network with a pixel correlation module (PCM) trained on two views of each slice (the
slice and a rescaled copy): classification on the CAM's global average, an equivariance loss
(ER) between the two views' CAMs, an equivariant cross regularisation (ECR) between one view's
CAM and the other's PCM-refined CAM, and the PCM's min-pooling loss. Its output ``refined`` is
the PCM-refined lesion map, summed over scales × horizontal flips. Port of the reference
implementation (github.com/YudeWang/SEAM: ``network/resnet38_SEAM.py``, ``train_SEAM.py``,
``infer_SEAM.py``) with its bugs fixed. Deviations from the reference, one a line:

- SGD has real momentum 0.9 (the reference's PolyOptimizer puts weight decay in momentum's slot).
- BatchNorm is trained (the reference freezes it: no use from random initialisation).
- ECR's top-k counts the actual channels: int(2·h·w·0.2) (reference: 21 hard-coded, crashes at 2).
- Second view at scale 0.5, ``view_scale`` (the reference's 0.3 gives 2×2 CAMs at 128 px).
- ER weight exposed, ``er_weight`` (the reference averages over 20 fg channels, mostly zero).
- No ground-truth label at inference (the reference multiplies its maps by the image label).
- Backbone: timm resnet34, output stride 16, random init (reference: ImageNet ResNet-38 wide, OS 8).
- One learning rate for all parameters (the reference: 10× / 20× for new weights / biases).
- Weight decay on weights only, none on biases (as the reference) nor BatchNorm (frozen there).
- No Dropout2d(0.5) before the CAM head.
- Two CAM channels (0 = background, unused as in the reference; 1 = lesion) instead of 21.

Cost, one line per option:

- ``backbone``: one backbone pass per training view and per inference pass.
- ``output_stride``: 16 dilates the last stage (~1.5× stride 32); PCM affinity (H·W/stride²)².
- ``view_scale``: the second view costs view_scale² of the first (0.5: +25 % per step).
- ``lr``, ``momentum``, ``weight_decay``, ``er_weight``, ``ecr_weight``: no cost.
- ``scales``: inference costs 2·Σ s² full-size passes (the default 0.5, 1, 1.5, 2: 15 passes).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench import hookimpl
from wsss_bench.contracts import MethodContext
from wsss_bench.options import option

EPS = 1e-5  # the reference's epsilon in every normalisation
PCM_WIDTHS = (64, 128)  # 1×1 convs on the two stages before the last (reference: 64, 128)
ECR_FRACTION = 0.2  # ECR averages the largest 20 % of |differences| (reference)
POLY_POWER = 0.9  # learning rate × (1 - step/steps)^0.9 (reference)
FLAT_RTOL = 1e-6  # a summed map whose max - min <= FLAT_RTOL·max is flat: all zeros


# --- the loss terms and normalisations, as in train_SEAM.py / resnet38_SEAM.py -------------

def max_norm(p: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """The reference's ``max_norm`` of [N,C,h,w]: per (sample, channel), ReLU, then
    ``relu(p - min - eps) / (max - min + eps)``."""
    p = F.relu(p)
    lo = p.amin(dim=(2, 3), keepdim=True)
    hi = p.amax(dim=(2, 3), keepdim=True)
    return F.relu(p - lo - eps) / (hi - lo + eps)


def max_onehot(x: torch.Tensor) -> torch.Tensor:
    """[N,C,h,w] with each foreground channel (1:) zeroed where it is not the per-pixel
    foreground maximum; channel 0 kept (the reference's, without its in-place write)."""
    fg = x[:, 1:]
    fg = torch.where(fg == fg.amax(dim=1, keepdim=True), fg, torch.zeros_like(fg))
    return torch.cat([x[:, :1], fg], dim=1)


def with_background(cam: torch.Tensor) -> torch.Tensor:
    """``cam`` [N,C,h,w] with channel 0 replaced by 1 - the per-pixel foreground maximum."""
    fg = cam[:, 1:]
    return torch.cat([1 - fg.amax(dim=1, keepdim=True), fg], dim=1)


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """The reference's no-grad ``cam_d_norm`` of raw CAM logits [N,C,h,w]: ReLU, divided by
    the per-channel max + eps; background = 1 - foreground max; foreground channels below the
    per-pixel foreground max zeroed."""
    cam = F.relu(cam.detach())
    norm = F.relu(cam - EPS) / (cam.amax(dim=(2, 3), keepdim=True) + EPS)
    fg = norm[:, 1:]
    fg = torch.where(fg < fg.amax(dim=1, keepdim=True), torch.zeros_like(fg), fg)
    return with_background(torch.cat([norm[:, :1], fg], dim=1))


def pcm_refine(cam: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """The PCM: ``cam`` [N,C,h,w] propagated by the affinity of features ``f`` [N,D,h,w],
    in float32 (also under autocast).

    f is L2-normalised per pixel (+eps), A = relu(fᵀf) [hw,hw], each column divided by its
    sum (+eps), and refined[:, :, j] = Σ_i cam[:, :, i]·A[i, j].
    """
    n, c, h, w = cam.shape
    with torch.autocast(cam.device.type, enabled=False):
        f = f.float().flatten(2)
        f = f / (f.norm(dim=1, keepdim=True) + EPS)
        aff = F.relu(f.transpose(1, 2) @ f)
        aff = aff / (aff.sum(dim=1, keepdim=True) + EPS)
        return (cam.float().reshape(n, c, h * w) @ aff).view(n, c, h, w)


def classification_loss(cam: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Multilabel soft margin between the global averages of the foreground channels of
    ``cam`` [N,C,h,w] and ``label`` [N,C] (column 0, the background, is ignored)."""
    scores = cam[:, 1:].float().mean(dim=(2, 3))
    return F.multilabel_soft_margin_loss(scores, label[:, 1:].to(scores.dtype))


def min_pooling_loss(x: torch.Tensor) -> torch.Tensor:
    """The reference's ``adaptive_min_pooling_loss`` of [N,c,h,w]: the per-pixel channel max,
    its k = h·w//4 smallest values per sample, ReLU, summed and divided by k·N."""
    n, _, h, w = x.shape
    k = max(h * w // 4, 1)
    smallest = torch.topk(x.amax(dim=1).reshape(n, -1), k=k, dim=-1, largest=False)[0]
    return F.relu(smallest).sum() / (k * n)


def _view_maps(cam: torch.Tensor, size: tuple[int, int], label: torch.Tensor) -> torch.Tensor:
    """max_norm(cam), resized bilinearly (align_corners) to ``size``, times label [N,C]."""
    out = max_norm(cam.float())
    if tuple(out.shape[-2:]) != tuple(size):
        out = F.interpolate(out, size=size, mode="bilinear", align_corners=True)
    return out * label[:, :, None, None].to(out.dtype)


def er_loss(cam1: torch.Tensor, cam2: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """Equivariant regularisation: mean |cam1 - cam2| over the foreground channels, each
    max-normed, cam1 resized to cam2's size, both masked by ``label`` [N,C]."""
    size = tuple(cam2.shape[-2:])
    n1, n2 = _view_maps(cam1, size, label), _view_maps(cam2, size, label)
    return (n1[:, 1:] - n2[:, 1:]).abs().mean()


def _topk_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of each sample's k = int(C·h·w·0.2) largest entries (at least 1), C the actual
    channel count."""
    n, c, h, w = t.shape
    k = max(int(c * h * w * ECR_FRACTION), 1)
    return torch.topk(t.reshape(n, -1), k=k, dim=-1)[0].mean()


def ecr_loss(cam1: torch.Tensor, cam2: torch.Tensor, rv1: torch.Tensor, rv2: torch.Tensor,
             label: torch.Tensor) -> torch.Tensor:
    """Equivariant cross regularisation: |max_onehot(cam2) - rv1| and |max_onehot(cam1) -
    rv2| (the CAMs detached, background = 1 - foreground max), each the mean of its top-k
    (:func:`_topk_mean`), summed. All maps max-normed, view 1's resized to view 2's size and
    masked by ``label`` [N,C]."""
    size = tuple(cam2.shape[-2:])
    c1 = with_background(_view_maps(cam1, size, label))
    c2 = with_background(_view_maps(cam2, size, label))
    r1, r2 = _view_maps(rv1, size, label), _view_maps(rv2, size, label)
    return (_topk_mean((max_onehot(c2.detach()) - r1).abs())
            + _topk_mean((max_onehot(c1.detach()) - r2).abs()))


def poly_lr(base: float, step: int, steps: int) -> float:
    """The reference's poly schedule: base·(1 - step/steps)^0.9 (0 from ``steps`` on)."""
    return base * max(1.0 - step / max(steps, 1), 0.0) ** POLY_POWER


def cam_logits(cam: torch.Tensor) -> torch.Tensor:
    """Slice logits [N,2] from CAM logits [N,2,H,W]: ±half the mean of the lesion channel, so
    that softmax(...)[1] = sigmoid(the lesion score) as trained by :func:`classification_loss`
    and both classes have a gradient (a Grad-CAM of the background class is the mirror of the
    lesion class's, not all zeros: ``--cam-target predicted`` must not gate SEAM's rows)."""
    score = cam[:, 1].mean(dim=(1, 2))
    return torch.stack([-score / 2, score / 2], dim=1)


# --- the network ---------------------------------------------------------------------------

def _stage_entries(backbone: nn.Module) -> list[dict[str, Any]]:
    info = getattr(backbone, "feature_info", None)
    if hasattr(info, "get_dicts"):
        info = info.get_dicts()
    entries = list(info or [])
    if len(entries) < 3:
        raise ValueError(f"seam needs a backbone with at least three feature stages in its "
                         f"feature_info; {type(backbone).__name__} has {len(entries)}")
    return entries[-3:]


class SeamNet(nn.Module):
    """A timm backbone, a 1×1 conv CAM head (0 = background, 1 = lesion) on its last stage
    and the PCM on its two stages before (detached) plus the input image.

    ``forward(x)`` gives slice logits [B,2] (:func:`cam_logits`); ``seam_forward(x)`` gives
    ``(cam, cam_rv)`` [B,2,H,W], the CAM logits and the PCM-refined CAM, both upsampled
    bilinearly to the input size. The stage outputs are read with forward hooks that exist
    only during a pass (none stay registered).
    """

    def __init__(self, backbone: nn.Module, in_chans: int) -> None:
        super().__init__()
        entries = _stage_entries(backbone)
        if hasattr(backbone, "reset_classifier"):  # its own head is unused
            backbone.reset_classifier(0)
        self.backbone = backbone
        self.stage_names = tuple(str(e["module"]) for e in entries)
        chans = [int(e["num_chs"]) for e in entries]
        self.classifier = nn.Conv2d(chans[2], 2, 1, bias=False)
        self.f8_3 = nn.Conv2d(chans[0], PCM_WIDTHS[0], 1, bias=False)
        self.f8_4 = nn.Conv2d(chans[1], PCM_WIDTHS[1], 1, bias=False)
        self.f9 = nn.Conv2d(in_chans + sum(PCM_WIDTHS), sum(PCM_WIDTHS), 1, bias=False)
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.kaiming_normal_(self.f8_3.weight)
        nn.init.kaiming_normal_(self.f8_4.weight)
        nn.init.xavier_uniform_(self.f9.weight, gain=4)

    def last_stage(self) -> nn.Module:
        return self.backbone.get_submodule(self.stage_names[-1])

    @contextlib.contextmanager
    def _capture(self) -> Iterator[dict[str, torch.Tensor]]:
        out: dict[str, torch.Tensor] = {}
        handles = []
        for name in self.stage_names:
            def hook(module: nn.Module, args: Any, output: torch.Tensor, name: str = name
                     ) -> None:
                out[name] = output
            handles.append(self.backbone.get_submodule(name).register_forward_hook(hook))
        try:
            yield out
        finally:
            for handle in handles:
                handle.remove()

    def stages(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The outputs of the backbone's last three stages."""
        run = getattr(self.backbone, "forward_features", self.backbone)
        with self._capture() as out:
            run(x)
        return [out[name] for name in self.stage_names]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cam = self.classifier(self.stages(x)[2])
        cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=True)
        return cam_logits(cam)

    def seam_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s8_3, s8_4, last = self.stages(x)
        cam = self.classifier(last)
        h, w = cam.shape[-2:]
        with torch.no_grad():
            cam_d_norm = normalise_cam(cam)
        feats = [x, F.relu(self.f8_3(s8_3.detach())), F.relu(self.f8_4(s8_4.detach()))]
        feats = [t if t.shape[-2:] == (h, w)
                 else F.interpolate(t, size=(h, w), mode="bilinear", align_corners=True)
                 for t in feats]
        dtype = feats[1].dtype  # the input may be float32 under autocast
        cam_rv = pcm_refine(cam_d_norm, self.f9(torch.cat([t.to(dtype) for t in feats], 1)))
        size = x.shape[-2:]
        cam_rv = F.interpolate(cam_rv, size=size, mode="bilinear", align_corners=True)
        cam = F.interpolate(cam, size=size, mode="bilinear", align_corners=True)
        return cam, cam_rv


# --- the plugin ----------------------------------------------------------------------------

def _floats(value: Any) -> tuple[float, ...]:
    """``scales`` as a tuple of floats, also from text (``--option seam.scales=0.5,1,2``)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").strip("()[]").split(",") if v]
    elif isinstance(value, int | float):
        value = [value]
    return tuple(float(v) for v in value)


@dataclass(frozen=True)
class Seam:
    """SEAM (see the module docstring): trained on image labels, map = PCM-refined CAM."""

    name: str = "seam"
    description: str = ("SEAM (Wang et al. 2020): CAM + pixel correlation module trained with "
                        "equivariance losses on two scales; map: refined CAM over scales × flips")
    min_channels: ClassVar[int] = 1
    cam_head: ClassVar[bool] = True
    backbone: str = option("resnet34", "backbone of the backbone registry (random init)")
    output_stride: int = option(16, "backbone output stride (16 dilates the last stage)")
    lr: float = option(0.01, "SGD learning rate, poly decay (power 0.9); the reference's "
                              "(the run's --lr is the classifiers')")
    momentum: float = option(0.9, "SGD momentum (the reference's bug gives it 5e-4)")
    weight_decay: float = option(5e-4, "SGD weight decay of the weights (not biases or BN)")
    view_scale: float = option(0.5, "scale of the second training view (reference: 0.3)")
    er_weight: float = option(1.0, "weight of the ER loss; the reference's ER averages over 20 "
                                   "fg channels, mostly zero: an implicit small weight")
    ecr_weight: float = option(1.0, "weight of the ECR loss (reference: 1)")
    scales: tuple[float, ...] = option((0.5, 1.0, 1.5, 2.0), "inference scales, each also "
                                       "flipped; maps summed (reference: 0.5,1,1.5,2)")

    def __post_init__(self) -> None:
        object.__setattr__(self, "scales", _floats(self.scales))
        if not self.scales or not all(math.isfinite(s) and s > 0 for s in self.scales):
            raise ValueError(f"seam: scales must be positive numbers, got {self.scales!r}")
        if not 0 < self.view_scale <= 1:
            raise ValueError(f"seam: view_scale must be in (0, 1], got {self.view_scale!r}")
        for key in ("lr", "momentum", "weight_decay", "er_weight", "ecr_weight"):
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"seam: {key} must be a finite number >= 0, got {value!r}")

    def outputs(self, in_chans: int) -> tuple[str, ...]:
        return ("refined",)

    def build(self, in_chans: int, context: MethodContext) -> SeamNet:
        """The untrained network."""
        backbone = context.build_backbone(self.backbone, in_chans, self.output_stride)
        return SeamNet(backbone, in_chans)

    def target_layer(self, model: nn.Module) -> nn.Module:
        """The backbone's last stage (the CAM head's input)."""
        return model.last_stage()

    def make_optimizer(self, model: nn.Module) -> torch.optim.SGD:
        """SGD with momentum; weight decay on weights (ndim > 1) only."""
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.ndim > 1],
                   "weight_decay": self.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
        return torch.optim.SGD([g for g in groups if g["params"]], lr=self.lr,
                               momentum=self.momentum)

    def losses(self, model: SeamNet, x: torch.Tensor, y: torch.Tensor,
               amp: bool = False) -> dict[str, torch.Tensor]:
        """The loss terms of one batch x [B,C,H,W], y [B] (``amp``: float16 autocast on
        CUDA); ``total`` = cls + pcm + er_weight·er + ecr_weight·ecr."""
        x2 = F.interpolate(x, scale_factor=self.view_scale, mode="bilinear",
                           align_corners=True)
        label = torch.stack([torch.ones_like(y), y], dim=1).float()  # background always 1
        mask = label[:, :, None, None]
        fp16 = torch.autocast("cuda", dtype=torch.float16) if amp else contextlib.nullcontext()
        with fp16:
            cam1, rv1 = model.seam_forward(x)
            cam2, rv2 = model.seam_forward(x2)
        cam1, rv1, cam2, rv2 = cam1.float(), rv1.float(), cam2.float(), rv2.float()
        terms = {
            "cls": (classification_loss(cam1, label) + classification_loss(cam2, label)) / 2,
            "pcm": (min_pooling_loss((rv1 * mask)[:, 1:])
                    + min_pooling_loss((rv2 * mask)[:, 1:])) / 2,
            "er": er_loss(cam1, cam2, label),
            "ecr": ecr_loss(cam1, cam2, rv1, rv2, label),
        }
        terms["total"] = (terms["cls"] + terms["pcm"] + self.er_weight * terms["er"]
                          + self.ecr_weight * terms["ecr"])
        return terms

    def train(self, images: np.ndarray, labels: np.ndarray, context: MethodContext) -> SeamNet:
        """Train from ``context.seed`` (weights and batch order); BatchNorm trained; returns
        the model in eval mode. A last batch of one slice is skipped (BatchNorm)."""
        torch.manual_seed(context.seed)
        device = context.device
        x_all = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
        y_all = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        model = self.build(int(x_all.shape[1]), context).to(device)
        model.train()
        n, size = len(x_all), max(int(context.batch_size), 1)
        per_epoch = sum(1 for s in range(0, n, size) if min(size, n - s) >= 2 or n == 1)
        steps = per_epoch * context.epochs
        optimizer = self.make_optimizer(model)
        amp = bool(context.amp) and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        order_rng = torch.Generator().manual_seed(context.seed)
        step = 0
        for epoch in range(context.epochs):
            order = torch.randperm(n, generator=order_rng)
            sums = dict.fromkeys(("total", "cls", "pcm", "er", "ecr"), 0.0)
            count = 0
            for start in range(0, n, size):
                idx = order[start:start + size]
                if len(idx) < 2 and n > 1:
                    continue
                for group in optimizer.param_groups:
                    group["lr"] = poly_lr(self.lr, step, steps)
                terms = self.losses(model, x_all[idx].to(device), y_all[idx].to(device), amp)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(terms["total"]).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                for key in sums:
                    sums[key] += float(terms[key].detach()) * len(idx)
                count += len(idx)
            context.progress(epoch, {k: v / max(count, 1) for k, v in sums.items()})
        optimizer.zero_grad(set_to_none=True)
        return model.eval()

    @torch.no_grad()
    def maps(self, model: nn.Module, images: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``refined`` [1,B,H,W]: the lesion channel of the PCM-refined CAM summed over
        ``scales`` × (image, flipped image; flipped back), each resized to H×W, divided per
        sample min–max as the reference (ReLU, (s − min − eps)⁺ / (max − min + eps)), a flat
        map all zeros; logits [B,2] of the unflipped pass
        at scale 1. No labels used."""
        model.eval()
        b, _, h, w = images.shape
        total = torch.zeros(b, h, w, device=images.device, dtype=torch.float32)
        logits = None
        for s in self.scales:
            x = images if s == 1.0 else F.interpolate(
                images, size=(max(round(h * s), 1), max(round(w * s), 1)), mode="bilinear",
                align_corners=False)
            for flip in (False, True):
                cam, rv = model.seam_forward(x.flip(-1) if flip else x)
                if s == 1.0 and not flip:
                    logits = cam_logits(cam)
                fg = rv[:, 1:2].float()
                if fg.shape[-2:] != (h, w):
                    fg = F.interpolate(fg, size=(h, w), mode="bilinear", align_corners=False)
                total += fg[:, 0].flip(-1) if flip else fg[:, 0]
        if logits is None:
            logits = model(images)
        # the reference's normalisation (infer_SEAM.py): ReLU, then min–max with its epsilon
        total = F.relu(total)
        hi = total.amax(dim=(1, 2), keepdim=True)
        lo = total.amin(dim=(1, 2), keepdim=True)
        out = torch.where(hi - lo <= FLAT_RTOL * hi, torch.zeros_like(total),
                          F.relu(total - lo - EPS) / (hi - lo + EPS))
        return out.clamp(0, 1)[None].float(), logits.float()


@hookimpl
def register_methods(register: Callable[[object], None]) -> None:
    register(Seam())
