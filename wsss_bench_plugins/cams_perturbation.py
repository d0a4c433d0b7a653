"""Perturbation CAMs: Score-CAM, SS-CAM, IS-CAM and Ablation-CAM (no gradients).

Each method captures the target layer's activation ``A`` [B,K,h,w] on one clean no-grad pass
(which also resolves the targets), then runs *masked* forwards, each giving channel k of image
b a score; all (image, channel) pairs of the batch go through the model as chunks of
``batch_size`` images, never one forward per channel. The map is ``ReLU(Σ_k w_k A_k)`` (weights
in float64) finished by :func:`~wsss_bench.cam_engine.finish_cam`.

Channels that cannot change the map are not forwarded: an all-zero channel adds ``w_k·0`` to
the sum whatever its weight (with a softmax over channels its term also leaves the common
denominator, a positive per-image factor that the min-max normalisation removes), and for
Score-CAM's paper variant a constant channel has weight 0 by definition.

``top_k`` (0 = all): per image, only the k channels with the largest spatial variance (or mean,
``rank_by``) of ``A_k`` are perturbed (ties: lower channel index first); every other channel
gets weight 0, and softmax weights are taken over the k chosen channels. The cost drops from K
to at most k masked forwards per image (per noise sample / integration step); ``top_k >= K``
is exactly the full method.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.cam_engine import Target, finish_cam, resolve_targets
from wsss_bench.options import option

SCORE_VARIANTS = ("paper", "pytorch-grad-cam", "torchcam")
RANK_BY = ("variance", "mean")
PEER_EPS = 1e-8  # both peers' ε in the per-channel min-max of the masks


def _size(images: torch.Tensor) -> tuple[int, int]:
    return (int(images.shape[-2]), int(images.shape[-1]))


@contextmanager
def _output_hook(layer: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor | None]
                 ) -> Iterator[None]:
    """A forward hook on ``layer`` for the duration of the block, removed even on error."""

    def hook(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
        if not isinstance(output, torch.Tensor):
            raise TypeError(f"target layer must output a tensor, got {type(output).__name__}")
        return fn(output)

    handle = layer.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def clean_pass(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
               target: Target) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``A`` (a copy, in the layer's dtype), logits (float64) and the resolved targets of one
    no-grad pass."""
    store: dict[str, torch.Tensor] = {}
    capture = _output_hook(target_layer, lambda out: store.__setitem__("a", out.detach().clone()))
    with capture, torch.no_grad():
        logits = model(images)
    if "a" not in store:
        raise RuntimeError("the target layer was not called during the forward pass")
    logits = logits.detach().double()
    return store["a"], logits, resolve_targets(logits, target)


def select_channels(activations: torch.Tensor, top_k: int, rank_by: str) -> torch.Tensor:
    """bool [B,K]: the channels to perturb, all of them for ``top_k`` 0 or >= K."""
    b, k = activations.shape[:2]
    keep = torch.ones(b, k, dtype=torch.bool, device=activations.device)
    if top_k == 0 or top_k >= k:
        return keep
    a = activations.double().flatten(2)
    rank = a.var(dim=2, unbiased=False) if rank_by == "variance" else a.mean(dim=2)
    order = torch.sort(rank, dim=1, descending=True, stable=True).indices[:, :top_k]
    keep.zero_()
    keep.scatter_(1, order, True)
    return keep


def _pairs(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(image index, channel index) of every True entry of ``keep`` [B,K], row-major."""
    idx = keep.nonzero()
    return idx[:, 0], idx[:, 1]


def _forward_scores(model: nn.Module, make_inputs: Callable[[slice], torch.Tensor],
                    n: int, batch_size: int) -> torch.Tensor:
    """Logits (float64) [n,C] of ``n`` masked inputs built and run ``batch_size`` at a time."""
    out = []
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out.append(model(make_inputs(slice(start, min(start + batch_size, n)))).double())
    return torch.cat(out) if out else torch.zeros(0, 0, dtype=torch.float64)


def _minmax(x: torch.Tensor, eps: float) -> torch.Tensor:
    """Per-map min-max over the last two dims, ``(x - min) / (max - min + eps)``."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    return (x - lo) / (x.amax(dim=(-2, -1), keepdim=True) - lo + eps)


def score_masks(a: torch.Tensor, size: tuple[int, int], variant: str) -> torch.Tensor:
    """Masks [n,1,H,W] in [0,1] from channels ``a`` [n,h,w].

    ``paper``: bilinear upsampling (half-pixel centres), then min-max (constant channels are
    never passed here). ``pytorch-grad-cam``: upsampling with ``align_corners=True``, then
    min-max with ε = 1e-8. ``torchcam``: min-max with ε = 1e-8 at feature resolution, then
    upsampling (half-pixel centres).
    """
    a = a[:, None]
    if variant == "torchcam":
        return F.interpolate(_minmax(a, PEER_EPS), size=size, mode="bilinear",
                             align_corners=False)
    up = F.interpolate(a, size=size, mode="bilinear", align_corners=variant != "paper")
    return _minmax(up, 0.0 if variant == "paper" else PEER_EPS)


def _softmax_weights(scores: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """Softmax over the perturbed channels of each image (float64 [B,K]); others 0."""
    masked = torch.where(perturbed, scores, torch.full_like(scores, -torch.inf))
    w = torch.softmax(masked, dim=1)
    return torch.where(perturbed, w, torch.zeros_like(w)).nan_to_num_(0.0)


def _finish(weights: torch.Tensor, activations: torch.Tensor, images: torch.Tensor
            ) -> torch.Tensor:
    weighted = (weights[:, :, None, None] * activations.double()).sum(dim=1)
    return finish_cam(weighted.float(), _size(images))


def _nonzero_channels(activations: torch.Tensor) -> torch.Tensor:
    return activations.flatten(2).ne(0).any(dim=2)


def _check_common(name: str, batch_size: int, top_k: int, rank_by: str) -> None:
    if batch_size < 1 or top_k < 0 or rank_by not in RANK_BY:
        raise ValueError(f"{name} needs batch_size >= 1, top_k >= 0, rank_by in {RANK_BY} "
                         f"(got {batch_size}, {top_k}, {rank_by!r})")


def _noisy_score_cam(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
                     target: Target, *, rounds: int, batch_size: int, top_k: int, rank_by: str,
                     transform: Callable[[int, torch.Tensor, torch.Tensor, int], torch.Tensor]
                     ) -> torch.Tensor:
    """torchcam's SS-CAM / IS-CAM scheme: masks = min-max at feature resolution (ε 1e-8),
    upsampled; ``rounds`` passes over all pairs, pass r feeding ``transform(r, masks,
    channel_idx, K) ⊙ x``; weight = softmax over channels of the mean target logit."""
    raw, _, targets = clean_pass(model, target_layer, images, target)
    a, size = raw.float(), _size(images)
    perturbed = select_channels(a, top_k, rank_by) & _nonzero_channels(a)
    bi, ki = _pairs(perturbed)
    p, k = int(bi.numel()), int(a.shape[1])
    normalised = _minmax(a, PEER_EPS)

    def inputs(sl: slice) -> torch.Tensor:
        t = torch.arange(sl.start, sl.stop, device=images.device)
        r, j = t // p, t % p
        masks = F.interpolate(normalised[bi[j], ki[j]][:, None], size=size, mode="bilinear",
                              align_corners=False)
        out = torch.empty((len(t), *images.shape[1:]), dtype=images.dtype, device=images.device)
        for rr in r.unique().tolist():  # chunks run in order: each round's noise drawn once
            sel = r == rr
            out[sel] = transform(rr, masks[sel], ki[j[sel]], k) * images[bi[j[sel]]]
        return out

    logits = _forward_scores(model, inputs, rounds * p, batch_size)
    scores = torch.zeros(a.shape[:2], dtype=torch.float64, device=a.device)
    if p:
        picked = logits.gather(1, targets[bi].repeat(rounds)[:, None])[:, 0]
        scores[bi, ki] = picked.view(rounds, p).mean(dim=0)
    return _finish(_softmax_weights(scores, perturbed), a, images)


@dataclass(frozen=True)
class ScoreCAM:
    """Score-CAM (Wang et al. 2020). ``paper`` (default), as the authors' Algorithm 1 and code:
    ``H_k = minmax(Up(A_k))`` and ``w_k = softmax_classes(f(x ⊙ H_k))_c``, the target class's
    probability on the masked input (no baseline term; a constant channel has weight 0).
    ``pytorch-grad-cam`` / ``torchcam`` reproduce the peers: ``w_k = softmax_k(y_c(x ⊙ H_k))``,
    a softmax over channels of raw logits (torchcam's subtraction of the clean logit cancels
    in it), with each peer's mask (:func:`score_masks`)."""

    name: str = "scorecam"
    description: str = "Score-CAM: channels weighted by the class score of the input they mask"
    variant: str = option("paper", "weights and masks: paper (class probability of the masked "
                                   "input), pytorch-grad-cam or torchcam (softmax over channels)")
    batch_size: int = option(64, "masked images per forward pass")
    top_k: int = option(0, "perturb only the k channels ranked highest by rank_by (0 = all)")
    rank_by: str = option("variance", "channel ranking for top_k: variance or mean of A_k")

    def __post_init__(self) -> None:
        _check_common(self.name, self.batch_size, self.top_k, self.rank_by)
        if self.variant not in SCORE_VARIANTS:
            raise ValueError(f"scorecam variant must be one of {SCORE_VARIANTS}, "
                             f"got {self.variant!r}")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        raw, _, targets = clean_pass(model, target_layer, images, target)
        a, size = raw.float(), _size(images)
        perturbed = select_channels(a, self.top_k, self.rank_by)
        flat = a.flatten(2)
        live = (flat.amax(2) > flat.amin(2) if self.variant == "paper"
                else _nonzero_channels(a))
        bi, ki = _pairs(perturbed & live)

        def inputs(sl: slice) -> torch.Tensor:
            return score_masks(a[bi[sl], ki[sl]], size, self.variant) * images[bi[sl]]

        logits = _forward_scores(model, inputs, int(bi.numel()), self.batch_size)
        scores = torch.zeros(a.shape[:2], dtype=torch.float64, device=a.device)
        if bi.numel():
            if self.variant == "paper":
                logits = torch.softmax(logits, dim=1)
            scores[bi, ki] = logits.gather(1, targets[bi][:, None])[:, 0]
        weights = scores if self.variant == "paper" else _softmax_weights(scores,
                                                                          perturbed & live)
        return _finish(weights, a, images)


@dataclass(frozen=True)
class SSCAM:
    """SS-CAM (Wang, Naidu et al. 2020) as torchcam defines it: torchcam's Score-CAM masks
    plus Gaussian noise of std ``std`` (absolute, on masks in [0, 1]) in each of ``samples``
    rounds; ``w_k = softmax_k(mean_n y_c(x ⊙ (H_k + δ_n)))``. The noise ``δ_n`` [K,H,W] is drawn
    round by round from a generator seeded with ``seed`` and is the same for every image of a
    batch (so batched = per-sample; for one image the stream is torchcam's under
    ``torch.manual_seed(seed)``). Cost: ``samples`` × K masked forwards per image."""

    name: str = "sscam"
    description: str = "SS-CAM: Score-CAM weights averaged over noisy masks (as torchcam)"
    samples: int = option(35, "noisy rounds averaged (torchcam's num_samples)")
    std: float = option(2.0, "std of the Gaussian noise added to the [0, 1] masks")
    seed: int = option(0, "seed of the noise (the same noise for every image of a batch)")
    batch_size: int = option(64, "masked images per forward pass")
    top_k: int = option(0, "perturb only the k channels ranked highest by rank_by (0 = all)")
    rank_by: str = option("variance", "channel ranking for top_k: variance or mean of A_k")

    def __post_init__(self) -> None:
        _check_common(self.name, self.batch_size, self.top_k, self.rank_by)
        if self.samples < 1 or self.std < 0:
            raise ValueError(f"sscam needs samples >= 1 and std >= 0 "
                             f"(got {self.samples}, {self.std})")

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        generator = torch.Generator(device=images.device).manual_seed(self.seed)
        drawn: list[torch.Tensor] = []  # [the current round's noise], drawn in round order
        rounds_drawn = [0]

        def noisy(r: int, masks: torch.Tensor, channels: torch.Tensor, k: int) -> torch.Tensor:
            while rounds_drawn[0] <= r:
                drawn[:] = [torch.randn((k, *masks.shape[-2:]), generator=generator,
                                        device=masks.device, dtype=masks.dtype)]
                rounds_drawn[0] += 1
            return masks + self.std * drawn[0][channels][:, None]

        return _noisy_score_cam(model, target_layer, images, target, rounds=self.samples,
                                batch_size=self.batch_size, top_k=self.top_k,
                                rank_by=self.rank_by, transform=noisy)


@dataclass(frozen=True)
class ISCAM:
    """IS-CAM (Naidu et al. 2020) as torchcam defines it: torchcam's Score-CAM masks, ``steps``
    rounds, round i (1-based) feeding ``c_i · (H_k ⊙ x)`` with torchcam's cumulative
    coefficient ``c_i = Σ_{j=1..i} j/N`` (N = ``steps``; it reaches (N + 1)/2, not 1);
    ``w_k = softmax_k(mean_i y_c(c_i · H_k ⊙ x))``. Cost: ``steps`` × K masked forwards per
    image."""

    name: str = "iscam"
    description: str = "IS-CAM: Score-CAM weights averaged over scaled masks (as torchcam)"
    steps: int = option(10, "integration steps (torchcam's num_samples)")
    batch_size: int = option(64, "masked images per forward pass")
    top_k: int = option(0, "perturb only the k channels ranked highest by rank_by (0 = all)")
    rank_by: str = option("variance", "channel ranking for top_k: variance or mean of A_k")

    def __post_init__(self) -> None:
        _check_common(self.name, self.batch_size, self.top_k, self.rank_by)
        if self.steps < 1:
            raise ValueError(f"iscam needs steps >= 1 (got {self.steps})")

    def coefficients(self) -> list[float]:
        """torchcam's ``coeff += (i + 1) / N``, accumulated in Python floats as it does."""
        out, c = [], 0.0
        for i in range(self.steps):
            c += (i + 1) / self.steps
            out.append(c)
        return out

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        coeff = self.coefficients()
        return _noisy_score_cam(model, target_layer, images, target, rounds=self.steps,
                                batch_size=self.batch_size, top_k=self.top_k,
                                rank_by=self.rank_by,
                                transform=lambda r, masks, _ch, _k: coeff[r] * masks)


def _ablated_copies(a: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """``len(channels)`` copies of one image's activation ``a`` [K,h,w], copy i with channel
    ``channels[i]`` set to 0."""
    out = a.expand(len(channels), *a.shape).clone()
    out[torch.arange(len(channels), device=a.device), channels] = 0
    return out


def _shared_prefix_logits(model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
                          raw: torch.Tensor, clean: torch.Tensor, bi: torch.Tensor,
                          ki: torch.Tensor, batch_size: int) -> torch.Tensor | None:
    """Logits (float64) of the ablated copies with the layers before the target run once per
    chunk: each chunk holds the copies of one image, the model gets that image alone and the
    hook returns all its ablated copies, so only the layers after the target see the copies
    (tensors from before the target broadcast from batch 1: they are equal for every copy).

    ``None`` when the model does not allow this, checked on a probe: the first chunk carries
    the unablated activation as an extra copy, whose logits must be the clean pass's, and every
    output must have one row per copy."""
    store: dict[str, torch.Tensor] = {}
    out: list[torch.Tensor] = []
    probe = True
    with _output_hook(target_layer, lambda _out: store["rows"]), torch.no_grad():
        for b in bi.unique().tolist():
            channels = ki[bi == b]
            for start in range(0, len(channels), batch_size):
                rows = _ablated_copies(raw[b], channels[start:start + batch_size])
                if probe:
                    rows = torch.cat([raw[b:b + 1], rows])
                store["rows"] = rows
                try:
                    y = model(images[b:b + 1])
                except Exception:  # noqa: BLE001 - on the probe: the model cannot share
                    if probe:
                        return None
                    raise
                if tuple(y.shape) != (len(rows), clean.shape[1]):
                    if probe:
                        return None
                    raise RuntimeError(f"ablated forward gave logits {tuple(y.shape)}, "
                                       f"expected ({len(rows)}, {clean.shape[1]})")
                if probe:
                    tol = float(torch.finfo(y.dtype).eps) ** 0.5
                    if not torch.allclose(y[0].double(), clean[b], rtol=tol, atol=tol):
                        return None
                    y, probe = y[1:], False
                out.append(y.double())
    return torch.cat(out) if out else None


@dataclass(frozen=True)
class AblationCAM:
    """Ablation-CAM (Desai & Ramaswamy 2020): channel k of the target layer's output set to 0
    (a forward hook replaces the output with ablated copies of the clean ``A``), ``w_k =
    (y_c - y_c^k) / y_c`` with the clean target logit ``y_c`` (float64; ``y_c = 0`` gives an
    all-zero map). All-zero channels are not ablated: ablating them changes nothing.

    The layers before the target layer run once per chunk of ``batch_size`` copies of an image
    instead of once per copy (:func:`_shared_prefix_logits`); a model that does not allow this
    (checked on a probe) gets a full forward per copy, as pytorch-grad-cam does."""

    name: str = "ablationcam"
    description: str = "Ablation-CAM: channels weighted by the logit drop when each is zeroed"
    batch_size: int = option(64, "ablated copies per forward pass")
    top_k: int = option(0, "ablate only the k channels ranked highest by rank_by (0 = all)")
    rank_by: str = option("variance", "channel ranking for top_k: variance or mean of A_k")

    def __post_init__(self) -> None:
        _check_common(self.name, self.batch_size, self.top_k, self.rank_by)

    def cam(self, model: nn.Module, target_layer: nn.Module, images: torch.Tensor,
            target: Target = None) -> torch.Tensor:
        raw, logits, targets = clean_pass(model, target_layer, images, target)
        a = raw.float()
        bi, ki = _pairs(select_channels(a, self.top_k, self.rank_by) & _nonzero_channels(a))
        ablated_logits = None
        if bi.numel():
            ablated_logits = _shared_prefix_logits(model, target_layer, images, raw, logits,
                                                   bi, ki, self.batch_size)
            if ablated_logits is None:
                warnings.warn(f"ablationcam: {type(model).__name__} cannot run an image's "
                              f"ablated copies after one pass of the layers before "
                              f"{type(target_layer).__name__}; one full forward per copy "
                              f"(same maps, slower)", stacklevel=2)
                ablated_logits = self._full_forward_logits(model, target_layer, images, raw,
                                                           bi, ki)
        y = logits.gather(1, targets[:, None])[:, 0]
        weights = torch.zeros(a.shape[:2], dtype=torch.float64, device=a.device)
        if ablated_logits is not None:
            yk = ablated_logits.gather(1, targets[bi][:, None])[:, 0]
            weights[bi, ki] = y[bi] - yk
        safe = torch.where(y != 0, y, torch.ones_like(y))
        weights = torch.where(y[:, None] != 0, weights / safe[:, None], torch.zeros_like(weights))
        return _finish(weights, a, images)

    def _full_forward_logits(self, model: nn.Module, target_layer: nn.Module,
                             images: torch.Tensor, raw: torch.Tensor, bi: torch.Tensor,
                             ki: torch.Tensor) -> torch.Tensor:
        """One full forward per ablated copy (in chunks), the copy's image as input."""
        store: dict[str, slice] = {}

        def replace(out: torch.Tensor) -> torch.Tensor:
            sl = store["slice"]
            ablated = raw[bi[sl]].clone()
            ablated[torch.arange(ablated.shape[0], device=ablated.device), ki[sl]] = 0
            return ablated

        def inputs(sl: slice) -> torch.Tensor:
            store["slice"] = sl
            return images[bi[sl]]

        with _output_hook(target_layer, replace):
            return _forward_scores(model, inputs, int(bi.numel()), self.batch_size)


CAMS = (ScoreCAM(), SSCAM(), ISCAM(), AblationCAM())
