"""Tests for the ``wss-cmer`` method plugin (:mod:`wsss_bench_plugins.method_wsscmer`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pluggy
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench import hookspecs
from wsss_bench.contracts import Method
from wsss_bench.pipeline.methods import method_context
from wsss_bench.testing import check_method, method_slices
from wsss_bench_plugins import method_wsscmer as mw
from wsss_bench_plugins.method_wsscmer import (
    TERMS,
    Transform,
    WssCmer,
    ce_both_views,
    cmer_loss,
    cmer_mask,
    er_loss,
    hflip,
    kl_term,
    l2_normalise,
    map_loss_l2,
    max_norm,
    minmax_per_sample,
    random_transform,
    rescale,
    rot90,
    translate,
)

SMALL = WssCmer(width=4)


def _train(method: WssCmer = SMALL, seed: int = 0, epochs: int = 1, n: int = 8,
           size: int = 32, in_chans: int = 2,
           progress: Callable[[int, dict[str, float]], None] | None = None, **ctx) -> nn.Module:
    images, labels = method_slices(n, in_chans, size)
    context = method_context(seed=seed, epochs=epochs, batch_size=4, progress=progress, **ctx)
    return method.train(images, labels, context)


@pytest.fixture(scope="module")
def trained() -> nn.Module:
    return _train()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.from_numpy(method_slices(4, 2, 32, seed=1)[0])


def _cam(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]  # [1,1,H,W]


# --- 1. loss terms against hand-computed examples ---------------------------------------------


def test_ce_averages_both_views() -> None:
    lx = torch.tensor([[0.0, 0.0]])
    ltx = torch.tensor([[0.0, math.log(3.0)]])  # p(lesion) = 3/4
    got = ce_both_views(lx, ltx, torch.tensor([1]))
    assert got.item() == pytest.approx(0.5 * (math.log(2.0) + math.log(4.0 / 3.0)), rel=1e-6)


def test_kl_term_temperature_direction_batchmean_and_detached_other() -> None:
    logits = torch.tensor([[0.0, 0.0], [1.0, 2.0]], requires_grad=True)
    other = torch.tensor([[0.0, 10 * math.log(3.0)], [1.0, 2.0]], requires_grad=True)
    got = kl_term(logits, [other], temperature=10.0)
    # other softened: (1/4, 3/4); own: (1/2, 1/2); KL(other ‖ own), × T², mean over 2 slices
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert got.item() == pytest.approx(100.0 * kl / 2, rel=1e-5)
    got.backward()
    assert other.grad is None, "the other network's logits must be detached"
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # more than one other network: the mean of the terms
    third = torch.tensor([[0.0, 0.0], [1.0, 2.0]])
    mean = kl_term(logits, [other, third], temperature=10.0)
    assert mean.item() == pytest.approx(100.0 * kl / 4, rel=1e-5)


def test_minmax_per_sample_relu_and_flat_maps() -> None:
    cams = torch.stack([_cam([0, 1], [2, 4])[0], _cam([-1, 0], [3, 0])[0],
                        _cam([5, 5], [5, 5])[0], _cam([-2, -1], [-3, -1])[0]])
    got = minmax_per_sample(cams)
    expected = torch.tensor([[[0, 0.25], [0.5, 1]], [[0, 0], [1, 0]], [[0, 0], [0, 0]],
                             [[0, 0], [0, 0]]])[:, None]
    torch.testing.assert_close(got, expected)


def test_max_norm_is_the_references_training_normalisation() -> None:
    cams = torch.stack([_cam([0, 1], [2, 4])[0], _cam([-1, 0], [3, 0])[0],
                        _cam([5, 5], [5, 5])[0], _cam([-2, -1], [-3, -1])[0]])
    got = max_norm(cams)
    e = 1e-8  # relu(p - min - e) / (max - min + e), p = relu(cam)
    expected = torch.tensor([[[0, (1 - e) / (4 + e)], [(2 - e) / (4 + e), (4 - e) / (4 + e)]],
                             [[0, 0], [(3 - e) / (3 + e), 0]], [[0, 0], [0, 0]],
                             [[0, 0], [0, 0]]])[:, None]
    torch.testing.assert_close(got, expected)
    assert got[0, 0, 0, 0] == 0 and not got[2:].any(), "the minimum and flat maps are 0"


def test_er_loss_squared_on_positive_slices_mean_over_all() -> None:
    # slice 0 (positive): max_norm [[0, .25], [.5, 1]] -> rot90: [[.25, 1], [0, .5]], against
    # relu + max_norm of [[-1, 0], [3, 0]] = [[0, 0], [1, 0]]: squares .0625 + 1 + 1 + .25
    cam_x = torch.cat([_cam([0, 1], [2, 4]), _cam([3, 1], [0, 2])])
    cam_tx = torch.cat([_cam([-1, 0], [3, 0]), _cam([0, 5], [1, 0])])
    labels = torch.tensor([1, 0])  # slice 1 negative: 0, yet in the mean's 2 * 4 pixels
    got = er_loss(cam_x, cam_tx, labels, Transform(k=1))
    assert got.item() == pytest.approx(2.3125 / 8, rel=1e-6)
    assert er_loss(cam_x, cam_tx, torch.tensor([0, 0]), Transform(k=1)).item() == 0
    gen = torch.Generator().manual_seed(0)
    cam_x, cam_tx = (torch.rand(2, 1, 4, 4, generator=gen, requires_grad=True)
                     for _ in range(2))
    er_loss(cam_x, cam_tx, labels, Transform(k=1)).backward()
    assert cam_x.grad[0].abs().sum() > 0 and cam_tx.grad[0].abs().sum() > 0, "both views"
    assert not cam_x.grad[1].any() and not cam_tx.grad[1].any(), "negative slices: no ER"


def test_l2_normalise_and_map_loss_hand_computed() -> None:
    p = torch.cat([_cam([3, 4], [0, 0]), _cam([0, 0], [0, 0]), _cam([1, 1], [1, 1])])
    torch.testing.assert_close(l2_normalise(p), torch.cat([
        _cam([0.6, 0.8], [0, 0]), _cam([0, 0], [0, 0]), _cam([0.5, 0.5], [0.5, 0.5])]))
    q = torch.cat([_cam([0, 0], [0, 2]), _cam([0, 0], [1, 0]), _cam([0, 0], [0, 7])])
    # slice 0: (.6 - 0)² + (.8 - 0)² + (0 - 1)² = 2; slice 2 masked out; 3 * 4 pixels in all
    got = map_loss_l2(p, q, torch.tensor([1.0, 0.0, 0.0]))
    assert got.item() == pytest.approx(2 / 12, rel=1e-6)
    # an all-zero map stays 0: slice 1 adds (0 - 1)² over 12 pixels
    both = map_loss_l2(p, q, torch.tensor([1.0, 1.0, 0.0]))
    assert both.item() == pytest.approx(3 / 12, rel=1e-6)
    # scale invariant: only the maps' directions count
    assert map_loss_l2(5 * p, q / 3, torch.ones(3)).item() == pytest.approx(
        map_loss_l2(p, q, torch.ones(3)).item(), rel=1e-6)


def test_cmer_mask_and_loss_both_directions_hand_computed() -> None:
    labels = torch.tensor([1, 1, 0])
    other_logits_x = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # predicts 1, 0, 1
    other_logits_tx = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # predicts 0, 1, 1
    assert cmer_mask(labels, other_logits_x).tolist() == [1.0, 0.0, 0.0]
    assert cmer_mask(labels, other_logits_tx).tolist() == [0.0, 1.0, 0.0]
    gen = torch.Generator().manual_seed(0)  # unmasked slices: anything
    cam_x, cam_tx, other_x, other_tx = torch.rand(4, 3, 1, 2, 2, generator=gen)
    # T(x) -> other's T(x) on the slices it predicts as lesion there (slice 1):
    # hflip(max_norm [[0, 2], [0, 0]]) = [[1, 0], [0, 0]] vs ℓ([[0, 0], [1, 1]]): 1 + .5 + .5
    cam_x[1], other_tx[1] = _cam([0, 2], [0, 0])[0], _cam([0, 0], [3, 3])[0]
    # x -> other's x where it predicts lesion on x (slice 0): ℓ([[1, 0], [0, 1]]) against
    # ℓ(hflip(max_norm [[0, 5], [0, 5]])) = ℓ([[1, 0], [1, 0]]): 0 + 0 + .5 + .5
    cam_tx[0], other_x[0] = _cam([4, 0], [0, 4])[0], _cam([0, 5], [0, 5])[0]
    args = (other_logits_x, other_logits_tx, labels, Transform(flip=True))
    got = cmer_loss(cam_x, cam_tx, other_x, other_tx, *args)
    assert got.item() == pytest.approx(0.5 * (2 / 12 + 1 / 12), rel=1e-6)
    # the gradient reaches this network's maps on the masked slices only, never the other's
    maps = [torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(i),
                       requires_grad=True) for i in range(4)]
    cmer_loss(*maps, *args).backward()
    grad_x, grad_tx, grad_ox, grad_otx = (m.grad for m in maps)
    assert grad_ox is None and grad_otx is None, "the other network's maps are detached"
    assert grad_x[1].abs().sum() > 0 and not grad_x[0].any() and not grad_x[2].any()
    assert grad_tx[0].abs().sum() > 0 and not grad_tx[1:].any()


def test_batch_losses_combine_the_terms_per_network() -> None:
    method = WssCmer(width=4, kl_weight=0.3, er_weight=2.0, cmer_weight=5.0, temperature=4.0)
    model = method.build(3, method_context(seed=2)).train()
    x = torch.from_numpy(method_slices(4, 3, 32, seed=3)[0])
    y = torch.tensor([0, 1, 1, 1])
    t = Transform(flip=True, k=3, scale=0.9, dy=2, dx=-1)
    total, terms = method.losses(model, x, y, t)
    assert set(terms) == set(TERMS)
    with torch.no_grad():
        lx, cx = model(x)
        lt, ct = model(t(x))
    cx, ct = cx[:, :, 1:], ct[:, :, 1:]
    want = dict.fromkeys(TERMS, 0.0)
    for m in range(3):
        o = [j for j in range(3) if j != m]
        ce = ce_both_views(lx[m], lt[m], y)
        kl = 0.5 * (kl_term(lx[m], [lx[j] for j in o], 4.0) + kl_term(lt[m], [lt[j] for j in o],
                                                                       4.0))
        er = er_loss(cx[m], ct[m], y, t)
        cmer = sum(cmer_loss(cx[m], ct[m], cx[j], ct[j], lx[j], lt[j], y, t) for j in o) / 2
        for key, v in (("ce", ce), ("kl", kl), ("er", er), ("cmer", cmer),
                       ("total", ce + 0.3 * kl + 2.0 * er + 5.0 * cmer)):
            want[key] += float(v) / 3
    assert terms == pytest.approx(want, rel=1e-4)
    assert total.item() == pytest.approx(3 * want["total"], rel=1e-4)
    assert terms["er"] > 0 and terms["cmer"] > 0 and terms["kl"] > 0
    total.backward()
    assert all(p.grad is not None for p in model.nets[2].parameters())


def _reference_terms(lx: torch.Tensor, cx: torch.Tensor, lt: torch.Tensor, ct: torch.Tensor,
                     y: torch.Tensor, t: Transform, temp: float) -> dict[str, list[float]]:
    """agents/wscmer.py ``train_one_epoch``'s per-network terms, transliterated (``max_norm``
    of utils/CAM_utils.py, ``L2_norm`` of graphs/losses/CMER_loss.py with eps 1e-12;
    ``Variable(·)`` detaches; ``reshape`` for ``view`` on rotated maps)."""
    def max_norm_ref(p: torch.Tensor, e: float = 1e-8) -> torch.Tensor:
        n, c = p.shape[:2]
        p = F.relu(p)
        max_v = torch.max(p.reshape(n, c, -1), dim=-1)[0].view(n, c, 1, 1)
        min_v = torch.min(p.reshape(n, c, -1), dim=-1)[0].view(n, c, 1, 1)
        return F.relu(p - min_v - e) / (max_v - min_v + e)

    def l2_norm_ref(p: torch.Tensor, q: torch.Tensor, label_mask: torch.Tensor,
                    eps: float = 1e-12) -> torch.Tensor:
        return torch.mean(torch.pow((p / torch.norm(p + eps, dim=(-1, -2), keepdim=True))
                                    - (q / torch.norm(q + eps, dim=(-1, -2), keepdim=True)), 2)
                          * label_mask.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1))

    m = len(lx)
    preds1, preds2 = lx, lt
    cams1 = [t(max_norm_ref(c)) for c in cx]  # x2, cams1 = transform(x1, cams1)
    cams2 = [max_norm_ref(c) for c in ct]
    out: dict[str, list[float]] = {"er": [], "cmer": [], "kl": []}
    for i in range(m):
        er = torch.mean(torch.pow(cams1[i][:, 1:] - cams2[i][:, 1:], 2)
                        * y.unsqueeze(-1).unsqueeze(-1).unsqueeze(-1))
        kl1 = kl2 = cmer1 = cmer2 = 0
        for j in range(m):
            if i != j:
                kl1 += temp**2 * F.kl_div(F.log_softmax(preds1[i] / temp, dim=1),
                                          F.softmax(preds1[j].detach() / temp, dim=1),
                                          reduction="batchmean")
                kl2 += temp**2 * F.kl_div(F.log_softmax(preds2[i] / temp, dim=1),
                                          F.softmax(preds2[j].detach() / temp, dim=1),
                                          reduction="batchmean")
                label_mask_1 = (torch.argmax(preds2[j].detach(), dim=-1) == 1).float() * y
                p1, q1 = cams1[i], cams2[j].detach()
                label_mask_2 = (torch.argmax(preds1[j].detach(), dim=-1) == 1).float() * y
                p2, q2 = cams2[i], cams1[j].detach()
                cmer1 += l2_norm_ref(p1[:, 1:], q1[:, 1:], label_mask_1)
                cmer2 += l2_norm_ref(p2[:, 1:], q2[:, 1:], label_mask_2)
        out["er"].append(float(er))
        out["kl"].append(float(0.5 * (kl1 + kl2) / (m - 1)))
        out["cmer"].append(float(0.5 * (cmer1 + cmer2) / (m - 1)))
    return out


class _Replay(nn.Module):
    """A stand-in model that answers its calls with the given (logits, CAMs), in order."""

    def __init__(self, *outputs: tuple[torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        self.outputs = list(outputs)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.outputs.pop(0)


@pytest.mark.parametrize("t", [Transform(flip=True, k=2), Transform(k=1),
                               Transform(dy=3, dx=-5), Transform(scale=1.1)])
def test_losses_match_a_transliteration_of_the_reference(t: Transform) -> None:
    gen = torch.Generator().manual_seed(5)
    lx, lt = torch.randn(2, 3, 8, 2, generator=gen)  # 3 networks, 8 slices
    cx = torch.randn(3, 8, 2, 16, 16, generator=gen)
    ct = torch.randn(3, 8, 2, 16, 16, generator=gen) + t(cx.flatten(0, 1)).view_as(cx)
    y = torch.tensor([1, 0, 1, 1, 1, 1, 0, 1])
    # the other networks' predictions differ between slices and between the views
    assert ((lx.argmax(-1) == 1) != (lt.argmax(-1) == 1)).any(dim=1).all()
    method = WssCmer(width=4, temperature=10.0)
    _, terms = method.losses(_Replay((lx, cx), (lt, ct)), torch.zeros(8, 3, 16, 16), y, t)
    ref = _reference_terms(lx, cx, lt, ct, y, t, 10.0)
    for key in ("er", "cmer", "kl"):
        assert terms[key] == pytest.approx(sum(ref[key]) / 3, rel=1e-5), key
    assert terms["er"] > 0 and terms["cmer"] > 0


# --- 2. transforms: equivariance and the same transform for images and CAMs -------------------


def _pointwise(t: torch.Tensor) -> torch.Tensor:
    """An exactly equivariant toy model for flips, quarter turns and zero-fill shifts."""
    return t**2 + 3 * torch.relu(t)


def _conv1x1() -> nn.Conv2d:
    """Linear and bias-free: equivariant to bilinear resizing and zero padding too."""
    torch.manual_seed(0)
    return nn.Conv2d(2, 3, 1, bias=False)


def test_translate_and_rescale_values() -> None:
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)
    expected = torch.zeros_like(x)
    expected[..., 1:, :2] = x[..., :3, 2:]  # down 1, left 2
    assert torch.equal(translate(x, 1, -2), expected)
    assert torch.equal(translate(x, 0, 0), x) and not translate(x, 5, 0).any()
    ones = torch.ones(1, 1, 10, 10)
    small = rescale(ones, 0.5)
    assert small.shape == ones.shape and small[..., 2:7, 2:7].eq(1).all()
    assert small.sum() == 25, "shrunk content, zero padded back to the size"
    torch.testing.assert_close(rescale(ones, 2.0), ones)
    x = torch.rand(1, 2, 10, 10)
    big = torch.nn.functional.interpolate(x, size=(12, 12), mode="bilinear",
                                          align_corners=False)
    torch.testing.assert_close(rescale(x, 1.2), big[..., 1:11, 1:11])


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_pointwise_model_commutes_with_flip_rot90_translate(k: int) -> None:
    x = torch.randn(2, 2, 12, 12, generator=torch.Generator().manual_seed(k))
    for transform in (hflip, lambda t: rot90(t, k), lambda t: translate(t, k - 2, 3 - k),
                      Transform(flip=bool(k % 2), k=k, dy=-k, dx=k)):
        assert torch.equal(_pointwise(transform(x)), transform(_pointwise(x)))


def test_linear_model_commutes_with_rescale_and_random_transforms() -> None:
    conv = _conv1x1()
    x = torch.randn(2, 2, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for scale in (0.5, 0.8, 0.93, 1.17, 2.0):
            torch.testing.assert_close(conv(rescale(x, scale)), rescale(conv(x), scale),
                                       atol=1e-5, rtol=1e-5)
        gen = torch.Generator().manual_seed(0)
        for _ in range(10):
            t = random_transform(gen, 32, 32)
            torch.testing.assert_close(conv(t(x)), t(conv(x)), atol=1e-5, rtol=1e-5)


def test_same_transform_for_images_and_cams() -> None:
    gen = torch.Generator().manual_seed(4)
    images = torch.rand(3, 2, 20, 24)
    cams = torch.rand(3, 2, 20, 24)
    for _ in range(5):
        t = random_transform(gen, 20, 24)
        both = t(torch.cat([images, cams], dim=1))
        assert torch.equal(both[:, :2], t(images)) and torch.equal(both[:, 2:], t(cams))
        assert torch.equal(t(cams[:, 1:]), t(cams)[:, 1:])
        assert t(images).shape[-2:] == ((24, 20) if t.k % 2 else (20, 24))


def _kind(t: Transform) -> str:
    """Which single transform ``t`` is (raises if it composes more than one)."""
    kinds = {"flip": t.flip, "rotation": not t.flip and t.k != 0,
             "translation": (t.dy, t.dx) != (0, 0), "scaling": t.scale != 1.0}
    (kind,) = [k for k, on in kinds.items() if on] or ["translation"]  # a zero shift
    return kind


def test_random_transform_is_one_of_four_seeded_and_covers_its_ranges() -> None:
    draws = [random_transform(torch.Generator().manual_seed(7), 32, 32) for _ in range(2)]
    assert draws[0] == draws[1]
    gen = torch.Generator().manual_seed(0)
    many = [random_transform(gen, 32, 32, max_shift=0.25, min_scale=0.8, max_scale=1.2)
            for _ in range(400)]
    by_kind: dict[str, list[Transform]] = {k: [] for k in mw.KINDS}
    for t in many:
        by_kind[_kind(t)].append(t)
    assert all(60 <= len(v) <= 140 for v in by_kind.values()), "each kind with p = 1/4"
    assert {t.k for t in by_kind["flip"]} == {0, 2}, "horizontal and vertical flips"
    assert {t.k for t in by_kind["rotation"]} == {1, 2, 3}
    shifts = by_kind["translation"]
    assert all(abs(t.dy) <= 8 and abs(t.dx) <= 8 for t in shifts)
    assert {t.dy for t in shifts} >= {-8, 0, 8} and {t.dx for t in shifts} >= {-8, 8}
    scales = [t.scale for t in by_kind["scaling"]]
    assert all(0.8 <= s <= 1.2 for s in scales) and max(scales) > 1.15 and min(scales) < 0.85


def test_flip_with_a_half_turn_is_the_vertical_flip() -> None:
    x = torch.rand(2, 3, 5, 7)
    assert torch.equal(Transform(flip=True, k=2)(x), torch.flip(x, dims=(-2,)))
    assert torch.equal(Transform(flip=True)(x), torch.flip(x, dims=(-1,)))


# --- 3. determinism ---------------------------------------------------------------------------


def test_same_seed_same_maps_other_seed_other_maps(trained: nn.Module,
                                                   batch: torch.Tensor) -> None:
    maps, logits = SMALL.maps(trained, batch)
    again, again_logits = SMALL.maps(_train(seed=0, amp=True), batch)  # amp: CUDA only
    assert torch.equal(maps, again) and torch.equal(logits, again_logits)
    other, _ = SMALL.maps(_train(seed=1), batch)
    assert not torch.equal(maps, other)


# --- 4. contract ------------------------------------------------------------------------------


def test_contract_kit() -> None:
    check_method(SMALL)


def test_declared_attributes_outputs_and_options() -> None:
    assert isinstance(SMALL, Method)
    assert WssCmer.min_channels == 2 and WssCmer.cam_head is False
    assert SMALL.name == "wss-cmer"
    assert SMALL.outputs(3) == ("modality-1", "modality-2", "modality-3")
    d = WssCmer()
    assert (d.width, d.lr, d.weight_decay, d.kl_weight, d.temperature, d.er_weight,
            d.cmer_weight, d.precise_bn) == (16, 1e-4, 0.5, 0.5, 10.0, 1.0, 1.0, False)
    for bad in ({"width": 0}, {"temperature": 0.0}, {"lr": -1.0}, {"kl_weight": -0.1},
                {"max_shift": 1.0}, {"min_scale": 1.3}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WssCmer(**bad)


def test_maps_shape_range_and_logits(trained: nn.Module, batch: torch.Tensor) -> None:
    maps, logits = SMALL.maps(trained, batch)
    assert maps.shape == (2, 4, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    assert logits.shape == (4, 2) and logits.dtype == torch.float32
    with torch.no_grad():
        per_net, _ = trained(batch)
    torch.testing.assert_close(logits, per_net.mean(dim=0))


def test_one_channel_is_a_one_line_value_error() -> None:
    with pytest.raises(ValueError, match="at least 2") as build_error:
        SMALL.build(1, method_context())
    images, labels = method_slices(4, 1, 32)
    with pytest.raises(ValueError, match="at least 2") as train_error:
        SMALL.train(images, labels, method_context())
    assert "\n" not in str(build_error.value) and "\n" not in str(train_error.value)


def test_maps_are_normalised_per_sample(batch: torch.Tensor) -> None:
    model = SMALL.build(2, method_context(seed=3)).eval()
    images = batch[:2].clone()
    images[1] = torch.flip(images[1], dims=(-2,)) + torch.linspace(0, 1, 32)  # other content
    with torch.no_grad():
        _, cams = model(images)
    peaks = torch.relu(cams[:, :, 1]).amax(dim=(-2, -1))  # [M, B]
    assert ((peaks[:, 0] - peaks[:, 1]).abs() > 1e-3 * peaks.amax(1)).all(), \
        "the two samples must have different peak activations"
    maps, _ = SMALL.maps(model, images)
    assert torch.equal(maps.amax(dim=(-2, -1)), torch.ones(2, 2)), "each sample's max is 1"
    assert torch.equal(maps.amin(dim=(-2, -1)), torch.zeros(2, 2))
    for b in range(2):
        torch.testing.assert_close(SMALL.maps(model, images[b : b + 1])[0][:, 0], maps[:, b])


class _Flat(nn.Module):
    """A stand-in model whose CAMs are flat (constant, and negative for modality 2)."""

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, m, h, w = images.shape
        cams = torch.ones(m, b, 2, h, w)
        cams[1] = -2.0
        return torch.zeros(m, b, 2), cams


def test_flat_maps_are_zero_not_nan() -> None:
    maps, logits = SMALL.maps(_Flat(), torch.rand(3, 2, 16, 16))
    assert torch.equal(maps, torch.zeros(2, 3, 16, 16)) and logits.shape == (3, 2)


def test_odd_non_square_slices_and_three_modalities() -> None:
    model = _train(n=4, size=32, in_chans=3)
    maps, logits = SMALL.maps(model, torch.rand(2, 3, 33, 41))
    assert maps.shape == (3, 2, 33, 41) and logits.shape == (2, 2)
    images = torch.rand(4, 2, 27, 36)
    context = method_context(epochs=1, batch_size=4)
    tall = SMALL.train(images.numpy(), np.array([0, 1, 0, 1]), context)  # rot90 swaps H and W
    assert SMALL.maps(tall, images)[0].shape == (2, 4, 27, 36)


# --- 5. state dict ----------------------------------------------------------------------------


def test_state_dict_loads_strictly_into_build(trained: nn.Module, batch: torch.Tensor) -> None:
    state = {k: v.clone() for k, v in trained.state_dict().items()}
    rebuilt = SMALL.build(2, method_context(seed=99))
    rebuilt.load_state_dict(state, strict=True)
    maps, logits = SMALL.maps(trained, batch)
    again, again_logits = SMALL.maps(rebuilt, batch)
    assert torch.equal(maps, again) and torch.equal(logits, again_logits)
    assert not trained.training


# --- 6. optimisers ----------------------------------------------------------------------------


def test_one_adamw_per_network_with_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.optim.AdamW] = []

    class Recording(torch.optim.AdamW):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(mw, "AdamW", Recording)
    method = WssCmer(width=4, lr=3e-3, weight_decay=0.25)
    model = _train(method)
    assert len(made) == 2
    for opt, net in zip(made, model.nets, strict=True):
        assert isinstance(opt, torch.optim.AdamW)
        (group,) = opt.param_groups
        assert group["lr"] == 3e-3 and group["weight_decay"] == 0.25
        assert {id(p) for p in group["params"]} == {id(p) for p in net.parameters()}
        assert opt.state, "the optimiser stepped"


# --- 7. the last epoch is kept ----------------------------------------------------------------


def test_last_epoch_is_kept_and_progress_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    models: list[nn.Module] = []
    make = mw.make_optimizers

    def spy(model: nn.Module, lr: float, weight_decay: float) -> list[torch.optim.AdamW]:
        models.append(model)
        return make(model, lr, weight_decay)

    monkeypatch.setattr(mw, "make_optimizers", spy)
    snapshots: list[dict[str, torch.Tensor]] = []
    reports: list[tuple[int, dict[str, float]]] = []

    def progress(epoch: int, losses: dict[str, float]) -> None:
        reports.append((epoch, losses))
        snapshots.append({k: p.detach().clone() for k, p in models[0].named_parameters()})
        if epoch == 1:  # spoil the model: epoch 2 is then far worse than epoch 1
            with torch.no_grad():
                for net in models[0].nets:
                    net.classifier.weight.mul_(-50.0)

    model = _train(SMALL, epochs=2, progress=progress)
    assert [e for e, _ in reports] == [1, 2]
    assert all(set(r) == set(TERMS) and all(map(math.isfinite, r.values())) for _, r in reports)
    assert reports[1][1]["ce"] > 3 * reports[0][1]["ce"], \
        "epoch 1 has the lower loss, so a 'best epoch' choice would return it"
    final = dict(model.named_parameters())
    assert all(torch.equal(final[k], v) for k, v in snapshots[1].items())
    assert not all(torch.equal(final[k], v) for k, v in snapshots[0].items())


# --- 8. BatchNorm statistics: kept as trained unless precise_bn -------------------------------


def test_precise_bn_is_off_by_default_and_an_option(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[nn.Module] = []
    monkeypatch.setattr(mw, "recompute_batchnorm", lambda model, *a, **k: calls.append(model))
    _train(n=4)
    assert calls == [], "the reference keeps the running averages"
    model = _train(WssCmer(width=4, precise_bn=True), n=4)
    assert calls == [model]


# --- registration -----------------------------------------------------------------------------


def test_hook_registers_one_wss_cmer() -> None:
    got: list[object] = []
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    pm.register(mw)
    pm.hook.register_methods(register=got.append)
    assert len(got) == 1 and isinstance(got[0], WssCmer) and got[0].name == "wss-cmer"
