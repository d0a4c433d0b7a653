"""The ``wss-cmer`` method: weakly supervised segmentation with cross-modality equivariant
constraints (Patel & Dolz, Medical Image Analysis 2022), a port of the reference implementation.

One network per modality (input channel): a 3-pool U-Net on that channel with a full-resolution
CAM head (1×1 conv to {background, lesion}); its slice logits are the global average of its
CAM. Every batch is seen twice, as ``x`` and as ``T(x)`` for one random transform ``T`` (the
same for every modality and for the CAMs), and each network ``m`` minimises, with ``y`` the
slice labels, ``n`` the reference's ``max_norm`` (:func:`max_norm`), ``ℓ(p) = p / ‖p + ε‖``
over each slice (:func:`l2_normalise`, ε = 1e-12) and means over every pixel of every slice,

    CE(x) and CE(T(x)) averaged
    + kl_weight · T² · KL(softmax(z_other / T) ‖ softmax(z_m / T))   (other detached, both views)
    + er_weight · mean y · (T(n(cam_m(x_m))) − n(cam_m(T(x_m))))²                        (ER)
    + cmer_weight · ½ [mean y · [o says lesion on T(x)] · (ℓ(T(n(cam_m(x_m))))
                                                           − ℓ(n(cam_o(T(x_o)))))²
                     + mean y · [o says lesion on x] · (ℓ(n(cam_m(T(x_m))))
                                                        − ℓ(T(n(cam_o(x_o)))))²]      (CMER)

on the lesion channel of the CAMs, the other network ``o``'s maps and predictions detached;
slices outside a mask count as 0 in its mean. With more than two modalities the KL and CMER
terms are averaged over the other networks. Each network has its own AdamW.

Taken from the reference implementation, github.com/gaurav104/WSS-CMER at 880207a9 (read in
full): the network (graphs/models/unet_cam.py ``UNetCAM``, graphs/models/unet_parts.py, Xavier
init from graphs/weights_initializer.py ``init_model_weights``), the per-sample input z-score
(utils/misc.py ``normalize_sample_wise``), the training CAM normalisation (utils/CAM_utils.py
``max_norm``), the loss and its weights (agents/wscmer.py ``train_one_epoch``: ``ce + lmda·kl
+ er + cmer``, CE and KL averaged over both views, KL ``× temp²`` with the other's logits
detached, divided by the number of other networks; CAM terms on the lesion channel
``cams[:, 1:]``; ER ``mean((cams1 - cams2)² · y)``; CMER graphs/losses/CMER_loss.py
``MapLossL2Norm`` in both directions, ``0.5 · (cmer_1 + cmer_2)``, each masked by ``y`` and the
other network's prediction on the view its map comes from; per-network AdamW), the
hyper-parameters (configs/experiment_prostate_data_1.json: lr 1e-4, weight decay 0.5, lmda 0.5,
temp 10, filters 64/4 = 16; configs/experiment1.json, BraTS: lr 5e-5, width 64) and the
transforms (datasets/brats.py ``All``: one of flip, rot90, translate ≤ 30 %, resize 0.8–1.2
chosen per batch). BatchNorm keeps its running averages, as there (``precise_bn`` off).

Deviations from the reference, one per line:

- ``HFlip`` is undefined in agents/wscmer.py (a NameError): not copied; ``All`` is used, as
  both configs' ``"transformation": "all"``
- ``epsilon`` is undefined in ``MapLossL2Norm.forward`` (a NameError): its default 1e-12 is used
- inference CAMs min–max normalised per sample, exactly onto [0, 1] (the reference: over the
  batch, with e = 1e-8; right at batch 1)
- bilinear upsampling (align_corners=False) to the skip's size; the reference's "bilinear" up is
  ``nn.Upsample(scale_factor=2)``, i.e. nearest, and its padding swaps the H and W differences
- the last epoch is kept (the reference: per network the best validation accuracy, and that of
  the last validation batch only, ``AverageMeter.val``); no validation split inside ``train``
- seeded everything: batch order and transforms from a ``torch.Generator`` seeded by the unit
  (the reference draws with Python's unseeded ``random`` and kornia)
- the transforms in torch, with their parameters drawn once per batch (kornia draws the angle
  and shift per slice): flip h or v; rot90 k in 1..3 exact (kornia warps about (W/2, H/2): half
  a pixel off, resampled; H and W swap here on non-square slices); an integer shift with zero
  fill (kornia: sub-pixel affine); rescale by a uniform factor then centre crop/pad back (the
  reference: resize to a square side in 192..288 step 8, align_corners=True, not cropped back)
- input z-score with the population std and eps 1e-5 (unbiased std and 1e-12 there)
- one backward of the summed per-network losses, then every AdamW steps (the reference steps
  network after network; the same gradients, as every cross-network term is detached)
- batches of one slice are skipped (BatchNorm); no dropout (the reference's is off by default)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.optim import AdamW

from wsss_bench import hookimpl
from wsss_bench.contracts import MethodContext
from wsss_bench.core.training import autocast, keep_on_device, recompute_batchnorm
from wsss_bench.hookspecs import Register
from wsss_bench.options import option

_STD_EPS = 1e-5  # input z-score: a flat slice becomes 0, never inf

# --- transforms: one per batch, applied alike to images [B,C,H,W] and CAMs [B,K,H,W] --------


def hflip(t: torch.Tensor) -> torch.Tensor:
    """Mirror the last axis (left–right)."""
    return torch.flip(t, dims=(-1,))


def rot90(t: torch.Tensor, k: int) -> torch.Tensor:
    """Rotate by ``k`` quarter turns (exact; H and W swap for odd ``k``)."""
    return torch.rot90(t, k % 4, dims=(-2, -1))


def translate(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Shift by whole pixels (``out[y, x] = t[y - dy, x - dx]``), zero where nothing comes in."""
    h, w = t.shape[-2:]
    padded = F.pad(t, (max(dx, 0), max(-dx, 0), max(dy, 0), max(-dy, 0)))
    y0, x0 = max(-dy, 0), max(-dx, 0)
    return padded[..., y0 : y0 + h, x0 : x0 + w]


def _fit(t: torch.Tensor, axis: int, n: int) -> torch.Tensor:
    """Centre-crop or zero-pad axis ``axis`` (-2 or -1) to ``n`` pixels."""
    m = t.shape[axis]
    if m > n:
        return t.narrow(axis, (m - n) // 2, n)
    if m < n:
        before = (n - m) // 2
        pad = [0, 0, 0, 0]
        pad[0 if axis == -1 else 2], pad[1 if axis == -1 else 3] = before, n - m - before
        return F.pad(t, pad)
    return t


def rescale(t: torch.Tensor, scale: float) -> torch.Tensor:
    """Resize by ``scale`` (bilinear, ``align_corners=False``), then centre-crop or zero-pad back
    to the input's size."""
    h, w = t.shape[-2:]
    size = (max(round(h * scale), 1), max(round(w * scale), 1))
    if size == (h, w):
        return t
    out = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return _fit(_fit(out, -2, h), -1, w)


@dataclass(frozen=True)
class Transform:
    """``T = translate ∘ rescale ∘ rot90 ∘ flip``, the same for any tensor [B,K,H,W];
    :func:`random_transform` draws one component only (a vertical flip is ``flip`` with
    ``k = 2``)."""

    flip: bool = False
    k: int = 0
    scale: float = 1.0
    dy: int = 0
    dx: int = 0

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        if self.flip:
            t = hflip(t)
        t = rescale(rot90(t, self.k), self.scale)
        return translate(t, self.dy, self.dx)


KINDS = ("flip", "rotation", "translation", "scaling")  # the reference's All, one per batch


def random_transform(generator: torch.Generator, height: int, width: int,
                     max_shift: float = 0.3, min_scale: float = 0.8, max_scale: float = 1.2
                     ) -> Transform:
    """One of the reference's four transforms (datasets/brats.py ``All``), each with
    probability 1/4, drawn from ``generator``: a horizontal or vertical flip (1/2 each); a
    rotation by ``k`` quarter turns, ``k`` uniform in 1..3; a shift uniform in ±max_shift of
    each side (whole pixels); a rescale by a factor uniform in [min_scale, max_scale]."""

    def integer(low: int, high: int) -> int:  # uniform in low..high
        return int(torch.randint(low, high + 1, (1,), generator=generator))

    kind = KINDS[integer(0, len(KINDS) - 1)]
    if kind == "flip":
        return Transform(flip=True, k=2 * integer(0, 1))  # h-flip, or h-flip + half turn = v
    if kind == "rotation":
        return Transform(k=integer(1, 3))
    if kind == "translation":
        my, mx = math.floor(max_shift * height), math.floor(max_shift * width)
        return Transform(dy=integer(-my, my), dx=integer(-mx, mx))
    u = float(torch.rand(1, generator=generator))
    return Transform(scale=min_scale + (max_scale - min_scale) * u)


# --- loss terms -------------------------------------------------------------------------------

_MAX_NORM_EPS = 1e-8  # utils/CAM_utils.py max_norm's e
_L2_EPS = 1e-12  # graphs/losses/CMER_loss.py MapLossL2Norm's epsilon


def minmax_per_sample(cams: torch.Tensor) -> torch.Tensor:
    """ReLU, then min–max normalise each map of ``cams`` [B,K,H,W] on its own exactly onto
    [0, 1]; a flat map is 0 (never NaN). The inference maps."""
    cams = F.relu(cams.float())
    low = cams.amin(dim=(-2, -1), keepdim=True)
    span = cams.amax(dim=(-2, -1), keepdim=True) - low
    flat = span <= 0
    return torch.where(flat, torch.zeros_like(cams), (cams - low) / torch.where(flat, 1.0, span))


def max_norm(cams: torch.Tensor, eps: float = _MAX_NORM_EPS) -> torch.Tensor:
    """The reference's training normalisation (utils/CAM_utils.py ``max_norm``) of each map of
    ``cams`` [B,K,H,W]: ``p = relu(cam)``, then ``relu(p − min p − e) / (max p − min p + e)``
    (a flat map is 0). Differentiable."""
    cams = F.relu(cams.float())
    low = cams.amin(dim=(-2, -1), keepdim=True)
    high = cams.amax(dim=(-2, -1), keepdim=True)
    return F.relu(cams - low - eps) / (high - low + eps)


def ce_both_views(logits_x: torch.Tensor, logits_tx: torch.Tensor, labels: torch.Tensor
                  ) -> torch.Tensor:
    """Cross-entropy of the slice labels, averaged over the two views ``x`` and ``T(x)``."""
    return 0.5 * (F.cross_entropy(logits_x.float(), labels)
                  + F.cross_entropy(logits_tx.float(), labels))


def kl_term(logits: torch.Tensor, others: Sequence[torch.Tensor], temperature: float
            ) -> torch.Tensor:
    """``T² · KL(softmax(z_o/T) ‖ softmax(z/T))`` (mean over the batch), averaged over the
    other networks' logits ``others`` (detached: no gradient reaches them)."""
    log_p = F.log_softmax(logits.float() / temperature, dim=1)
    terms = [F.kl_div(log_p, F.softmax(o.detach().float() / temperature, dim=1),
                      reduction="batchmean") for o in others]
    return temperature**2 * torch.stack(terms).mean()


def _per_slice(weights: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """float[B] ``weights`` shaped to broadcast over ``like`` [B,...]."""
    return weights.float().view(-1, *([1] * (like.dim() - 1)))


def er_loss(cam_x: torch.Tensor, cam_tx: torch.Tensor, labels: torch.Tensor,
            transform: Transform) -> torch.Tensor:
    """Within-modality equivariance, as agents/wscmer.py's ``er_loss``: the mean over every
    pixel of every slice of ``y · (T(n(cam(x))) − n(cam(T(x))))²``, ``n`` = :func:`max_norm`,
    ``y`` the slice labels (negative slices count as 0 in the mean)."""
    diff = transform(max_norm(cam_x)) - max_norm(cam_tx)
    return (diff.pow(2) * _per_slice(labels == 1, diff)).mean()


def l2_normalise(maps: torch.Tensor, eps: float = _L2_EPS) -> torch.Tensor:
    """``p / ‖p + eps‖`` with the norm over each slice's H×W (graphs/losses/CMER_loss.py
    ``L2_norm``; an all-zero map stays 0)."""
    return maps / torch.linalg.vector_norm(maps + eps, dim=(-2, -1), keepdim=True)


def map_loss_l2(p: torch.Tensor, q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The reference's ``MapLossL2Norm``: the mean over every pixel of every slice of
    ``mask · (ℓ(p) − ℓ(q))²``, ``ℓ`` = :func:`l2_normalise` (masked-out slices count as 0)."""
    diff = l2_normalise(p) - l2_normalise(q)
    return (diff.pow(2) * _per_slice(mask, diff)).mean()


def cmer_mask(labels: torch.Tensor, other_logits: torch.Tensor) -> torch.Tensor:
    """float[B]: 1 for the positive slices that the other network predicts as lesion (on the
    view its ``other_logits`` come from)."""
    predicted = other_logits.detach().argmax(dim=1) == 1
    return ((labels == 1) & predicted).float()


def cmer_loss(cam_x: torch.Tensor, cam_tx: torch.Tensor, other_cam_x: torch.Tensor,
              other_cam_tx: torch.Tensor, other_logits_x: torch.Tensor,
              other_logits_tx: torch.Tensor, labels: torch.Tensor, transform: Transform
              ) -> torch.Tensor:
    """Cross-modality equivariance against one other network ``o``, as agents/wscmer.py:
    ``½ [map_loss_l2(T(n(cam(x))), n(cam_o(T(x))), mask_T) + map_loss_l2(n(cam(T(x))),
    T(n(cam_o(x))), mask_x)]``, ``n`` = :func:`max_norm`, ``mask_v`` = :func:`cmer_mask` of the
    labels and ``o``'s logits on view ``v``; ``o``'s maps and logits are detached."""
    first = map_loss_l2(transform(max_norm(cam_x)), max_norm(other_cam_tx.detach()),
                        cmer_mask(labels, other_logits_tx))
    second = map_loss_l2(max_norm(cam_tx), transform(max_norm(other_cam_x.detach())),
                         cmer_mask(labels, other_logits_x))
    return 0.5 * (first + second)


# --- the networks -----------------------------------------------------------------------------


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Up(nn.Module):
    """Bilinear upsampling to the skip's size, concatenation, double conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = _double_conv(cin, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.conv(torch.cat([skip, x], dim=1))


def standardise(x: torch.Tensor) -> torch.Tensor:
    """Z-score each slice and channel of ``x`` [B,C,H,W] (a flat slice becomes 0)."""
    x = x.float()
    std, mean = torch.std_mean(x, dim=(-2, -1), keepdim=True, correction=0)
    return (x - mean) / (std + _STD_EPS)


class CamUNet(nn.Module):
    """The reference's ``UNetCAM`` on one channel: 3 max-pools (widths w, 2w, 4w, 4w), a
    bilinear decoder with skips back to width w, a 3×3 conv, then a 1×1 conv to 2 classes at
    input resolution (the CAM); logits = its global average. ``forward`` gives (logits [B,2],
    cam [B,2,H,W])."""

    def __init__(self, width: int) -> None:
        super().__init__()
        w = width
        self.inc = _double_conv(1, w)
        self.down1, self.down2, self.down3 = (_double_conv(w, 2 * w),
                                              _double_conv(2 * w, 4 * w),
                                              _double_conv(4 * w, 4 * w))
        self.up1, self.up2, self.up3 = _Up(8 * w, 2 * w), _Up(4 * w, w), _Up(2 * w, w)
        self.head = nn.Sequential(nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Conv2d(w, 2, 1, bias=False)
        for m in self.modules():  # as the reference's init_model_weights
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x1 = self.inc(standardise(x))
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        x4 = self.down3(F.max_pool2d(x3, 2))
        y = self.up3(self.up2(self.up1(x4, x3), x2), x1)
        cam = self.classifier(self.head(y))
        return cam.mean(dim=(-2, -1)), cam


class WssCmerModel(nn.Module):
    """One :class:`CamUNet` per modality; ``forward(images [B,M,H,W])`` gives the stacked
    logits [M,B,2] and CAMs [M,B,2,H,W] (network ``m`` sees channel ``m`` only)."""

    def __init__(self, in_chans: int, width: int) -> None:
        super().__init__()
        self.nets = nn.ModuleList(CamUNet(width) for _ in range(in_chans))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dim() != 4 or images.shape[1] != len(self.nets):
            raise ValueError(f"wss-cmer: expected images [B,{len(self.nets)},H,W], got "
                             f"{tuple(images.shape)}")
        outs = [net(images[:, m : m + 1]) for m, net in enumerate(self.nets)]
        return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def make_optimizers(model: WssCmerModel, lr: float, weight_decay: float) -> list[AdamW]:
    """One AdamW per modality network."""
    return [AdamW(net.parameters(), lr=lr, weight_decay=weight_decay) for net in model.nets]


# --- the method -------------------------------------------------------------------------------

TERMS = ("total", "ce", "kl", "er", "cmer")


@dataclass(frozen=True)
class WssCmer:
    """WSS-CMER: one CAM U-Net per modality, trained with cross-entropy, a KL term between
    the modalities' predictions and within- and cross-modality equivariance of their CAMs."""

    name: str = "wss-cmer"
    description: str = ("WSS-CMER (Patel & Dolz 2022): one CAM U-Net per modality with "
                        "within- and cross-modality equivariance and a KL term")
    min_channels: ClassVar[int] = 2  # declared: one network per modality
    cam_head: ClassVar[bool] = False  # declared: maps come from maps(), no --cams rows
    width: int = option(16, "base width of each modality's U-Net (the reference's prostate "
                            "config: 64/4)")
    lr: float = option(1e-4, "AdamW learning rate of each network (the reference's prostate "
                             "config; its BraTS config: 5e-5)")
    weight_decay: float = option(0.5, "AdamW weight decay (the reference's configs)")
    kl_weight: float = option(0.5, "weight of the KL term between the modalities' predictions "
                                   "(the reference's lmda)")
    temperature: float = option(10.0, "KL temperature T; the KL term is multiplied by T²")
    er_weight: float = option(1.0, "weight of the within-modality equivariance (ER) term")
    cmer_weight: float = option(1.0, "weight of the cross-modality equivariance (CMER) term")
    max_shift: float = option(0.3, "largest translation, as a fraction of the slice side")
    min_scale: float = option(0.8, "smallest rescale factor of the transform")
    max_scale: float = option(1.2, "largest rescale factor of the transform")
    precise_bn: bool = option(False, "recompute BatchNorm statistics under the final weights "
                                     "(as the classifiers); off: the running averages are "
                                     "kept, as the reference")

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.width, bool) or not isinstance(self.width, int) or self.width < 1:
            problems.append(f"width must be an int >= 1 (got {self.width!r})")
        positive = {"lr": self.lr, "temperature": self.temperature}
        non_negative = {"weight_decay": self.weight_decay, "kl_weight": self.kl_weight,
                        "er_weight": self.er_weight, "cmer_weight": self.cmer_weight}
        problems += [f"{k} must be > 0 (got {v!r})" for k, v in positive.items()
                     if not (math.isfinite(v) and v > 0)]
        problems += [f"{k} must be >= 0 (got {v!r})" for k, v in non_negative.items()
                     if not (math.isfinite(v) and v >= 0)]
        if not 0 <= self.max_shift < 1:
            problems.append(f"max_shift must be in [0, 1) (got {self.max_shift!r})")
        if not 0 < self.min_scale <= self.max_scale or not math.isfinite(self.max_scale):
            problems.append(f"scales must satisfy 0 < min_scale <= max_scale (got "
                            f"{self.min_scale!r}, {self.max_scale!r})")
        if problems:
            raise ValueError("invalid wss-cmer options: " + "; ".join(problems))

    def outputs(self, in_chans: int) -> tuple[str, ...]:
        """One map per modality (input channel)."""
        return tuple(f"modality-{i + 1}" for i in range(in_chans))

    def _check_channels(self, in_chans: int) -> int:
        if in_chans < self.min_channels:
            raise ValueError(f"wss-cmer needs at least {self.min_channels} input channels (one "
                             f"network per modality), got {in_chans}")
        return int(in_chans)

    def build(self, in_chans: int, context: MethodContext) -> nn.Module:
        """The untrained model (initialised from ``context.seed``, the global RNG untouched)."""
        in_chans = self._check_channels(in_chans)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(context.seed)
            return WssCmerModel(in_chans, self.width)

    def losses(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               transform: Transform, amp: bool = False
               ) -> tuple[torch.Tensor, dict[str, float]]:
        """The loss to back-propagate for one batch (the sum over the networks, each network's
        own terms only reaching it) and each term's mean over the networks."""
        xt = transform(x)
        with autocast(x.device, amp):
            logits_x, cams_x = model(x)
            logits_t, cams_t = model(xt)
        logits_x, logits_t = logits_x.float(), logits_t.float()
        cams_x, cams_t = cams_x[:, :, 1:].float(), cams_t[:, :, 1:].float()  # lesion channel
        n = len(logits_x)
        sums = dict.fromkeys(TERMS[1:], 0.0)
        total = logits_x.new_zeros(())
        for m in range(n):
            others = [j for j in range(n) if j != m]
            ce = ce_both_views(logits_x[m], logits_t[m], y)
            kl = 0.5 * (kl_term(logits_x[m], [logits_x[j] for j in others], self.temperature)
                        + kl_term(logits_t[m], [logits_t[j] for j in others], self.temperature))
            er = er_loss(cams_x[m], cams_t[m], y, transform)
            cmer = torch.stack([cmer_loss(cams_x[m], cams_t[m], cams_x[j], cams_t[j],
                                          logits_x[j], logits_t[j], y, transform)
                                for j in others]).mean()
            total = total + (ce + self.kl_weight * kl + self.er_weight * er
                             + self.cmer_weight * cmer)
            for key, value in (("ce", ce), ("kl", kl), ("er", er), ("cmer", cmer)):
                sums[key] += float(value.detach())
        terms = {k: v / n for k, v in sums.items()}
        terms["total"] = float(total.detach()) / n
        return total, terms

    def train(self, images: np.ndarray, labels: np.ndarray, context: MethodContext
              ) -> nn.Module:
        """Train on ``images`` float32[N,C,H,W] with slice labels int64[N] (1 = lesion) for
        ``context.epochs`` epochs; the last epoch's model, in eval mode."""
        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels, dtype=np.int64)
        if images.ndim != 4:
            raise ValueError(f"wss-cmer: images must be float32[N,C,H,W], got {images.shape}")
        in_chans = self._check_channels(images.shape[1])
        if len(images) == 0 or labels.shape != (len(images),):
            raise ValueError(f"wss-cmer: need N >= 1 images and labels[N], got images "
                             f"{images.shape} and labels {labels.shape}")
        device = context.device
        amp = bool(context.amp) and device.type == "cuda"
        model = self.build(in_chans, context).to(device).train()
        optimizers = make_optimizers(model, self.lr, self.weight_decay)
        scaler = torch.amp.GradScaler(device.type, enabled=amp)
        x_all = keep_on_device(torch.from_numpy(np.ascontiguousarray(images)), device)
        y_all = torch.from_numpy(labels).to(x_all.device)
        rng = torch.Generator().manual_seed(context.seed)  # batch order and transforms
        n, h, w = len(images), images.shape[2], images.shape[3]
        for epoch in range(context.epochs):
            order = torch.randperm(n, generator=rng)
            sums, count = dict.fromkeys(TERMS, 0.0), 0
            for start in range(0, n, context.batch_size):
                idx = order[start : start + context.batch_size].to(x_all.device)
                if len(idx) < 2 and n > 1:  # BatchNorm cannot train on one sample
                    continue
                x = x_all[idx].to(device, non_blocking=True)
                y = y_all[idx].to(device, non_blocking=True)
                transform = random_transform(rng, h, w, self.max_shift, self.min_scale,
                                             self.max_scale)
                loss, terms = self.losses(model, x, y, transform, amp)
                for opt in optimizers:
                    opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                for opt in optimizers:
                    scaler.step(opt)
                scaler.update()
                for key in TERMS:
                    sums[key] += terms[key] * len(idx)
                count += len(idx)
            context.progress(epoch + 1, {k: v / max(count, 1) for k, v in sums.items()})
        for opt in optimizers:
            opt.zero_grad(set_to_none=True)
        if self.precise_bn:
            with autocast(device, amp):
                recompute_batchnorm(model, x_all, device, context.batch_size)
        return model.eval()

    def maps(self, model: nn.Module, images: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each modality's lesion CAM (ReLU, min–max per sample) as float32 [C,B,H,W] in
        [0, 1], and the mean of the networks' logits [B,2]."""
        model.eval()
        with torch.no_grad():
            logits, cams = model(images)
        return minmax_per_sample(cams[:, :, 1]), logits.float().mean(dim=0)


@hookimpl
def register_methods(register: Register) -> None:
    """Register the ``wss-cmer`` method."""
    register(WssCmer())
