"""The ``seam`` method plugin: loss terms on hand-computed examples, the PCM, the optimiser,
training (BatchNorm, determinism, progress) and the maps contract (tiny ``timm:test_resnet``,
32×32 slices, one epoch)."""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from wsss_bench.pipeline.methods import method_context
from wsss_bench_plugins import method_seam
from wsss_bench_plugins.backbones import TimmBackbone
from wsss_bench_plugins.method_seam import (
    Seam,
    SeamNet,
    classification_loss,
    ecr_loss,
    er_loss,
    max_norm,
    max_onehot,
    min_pooling_loss,
    normalise_cam,
    pcm_refine,
    poly_lr,
)

E = 1e-5  # the reference's epsilon
BACKBONE = "timm:test_resnet"
SEAM = Seam(backbone=BACKBONE)
IN_CHANS = 2


class _Backbones:
    """The one backbone the tests need, without loading the whole registry."""

    def kind(self, kind: str) -> dict[str, Any]:
        assert kind == "backbones"
        return {BACKBONE: TimmBackbone(name=BACKBONE, model_name="test_resnet", description="",
                                       output_strides=(8, 16, 32))}


def context(seed: int = 0, progress: Any = None, amp: bool = False) -> Any:
    return method_context(seed=seed, epochs=1, batch_size=4, amp=amp, registry=_Backbones(),
                          progress=progress)


def data() -> tuple[np.ndarray, np.ndarray]:
    """Eight 2-channel 32×32 slices; the positives have a bright square."""
    rng = np.random.default_rng(0)
    images = rng.random((8, IN_CHANS, 32, 32), dtype=np.float32) * 0.2
    labels = np.array([0, 1] * 4, dtype=np.int64)
    for i in np.flatnonzero(labels):
        r, c = rng.integers(4, 20, size=2)
        images[i, :, r:r + 8, c:c + 8] += 0.8
    return images, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is much faster than two contending ones."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained() -> tuple[SeamNet, list[tuple[int, dict[str, float]]]]:
    log: list[tuple[int, dict[str, float]]] = []
    images, labels = data()
    model = SEAM.train(images, labels, context(0, lambda e, losses: log.append((e, losses))))
    return model, log


def batch() -> torch.Tensor:
    return torch.from_numpy(data()[0][:3])


def lesion_positive(model: SeamNet) -> SeamNet:
    """A copy whose lesion CAM is >= 0 and varies (the last stage is post-ReLU): non-flat
    maps whatever one short training left (its lesion CAM may be negative everywhere, which
    gives all-zero maps)."""
    out = copy.deepcopy(model)
    with torch.no_grad():
        out.classifier.weight[1].abs_()
    return out.eval()


# --- loss terms, by hand ----------------------------------------------------------------------

def test_max_norm_by_hand() -> None:
    p = torch.tensor([[[[-1.0, 1.0], [2.0, 4.0]]]])  # relu → 0, 1, 2, 4: min 0, max 4
    expected = torch.tensor([[[[0.0, (1 - E) / (4 + E)], [(2 - E) / (4 + E), (4 - E) / (4 + E)]]]])
    assert torch.allclose(max_norm(p), expected, atol=1e-7)
    shifted = torch.tensor([[[[1.0, 1.0], [1.0, 3.0]]]])  # min 1, max 3
    assert torch.allclose(max_norm(shifted),
                          torch.tensor([[[[0.0, 0.0], [0.0, (2 - E) / (2 + E)]]]]), atol=1e-7)


def test_max_onehot_zeroes_non_maximal_foreground_only() -> None:
    x = torch.tensor([[[[0.3, 0.9]], [[0.5, 0.1]], [[0.2, 0.4]]]])  # [1,3,1,2]
    expected = torch.tensor([[[[0.3, 0.9]], [[0.5, 0.0]], [[0.0, 0.4]]]])
    assert torch.equal(max_onehot(x), expected)
    two = x[:, :2]  # one foreground channel: nothing to zero
    assert torch.equal(max_onehot(two), two)
    unchanged = torch.tensor([[[[0.3, 0.9]], [[0.5, 0.1]], [[0.2, 0.4]]]])
    assert torch.equal(x, unchanged)  # not in place


def test_normalise_cam_by_hand() -> None:
    cam = torch.tensor([[[[5.0, -1.0]], [[2.0, 4.0]]]])  # bg, fg; fg max 4
    fg = [(2 - E) / (4 + E), (4 - E) / (4 + E)]
    expected = torch.tensor([[[[1 - fg[0], 1 - fg[1]]], [[fg[0], fg[1]]]]])
    assert torch.allclose(normalise_cam(cam), expected, atol=1e-7)
    three = torch.tensor([[[[0.0, 0.0]], [[1.0, 3.0]], [[2.0, 2.0]]]])
    a = [(1 - E) / (3 + E), (3 - E) / (3 + E)]  # fg 1 / its max 3
    b = (2 - E) / (2 + E)  # fg 2 / its max 2 (both pixels)
    # pixel 0: fg 2 is the max, fg 1 zeroed; pixel 1: fg 1 (≈1-2e/3) beats fg 2 (≈1-e)
    expected3 = torch.tensor([[[[1 - b, 1 - a[1]]], [[0.0, a[1]]], [[b, 0.0]]]])
    assert torch.allclose(normalise_cam(three), expected3, atol=1e-7)


def test_classification_loss_is_soft_margin_on_the_lesion_mean() -> None:
    cam = torch.zeros(2, 2, 2, 2)
    cam[:, 0] = 7.0  # background: ignored
    cam[0, 1] = torch.tensor([[1.0, 3.0], [-2.0, 2.0]])  # mean 1
    cam[1, 1] = torch.tensor([[0.5, 0.5], [0.5, 0.5]])  # mean 0.5
    label = torch.tensor([[1.0, 1.0], [1.0, 0.0]])

    def sigmoid(v: float) -> float:
        return 1 / (1 + math.exp(-v))

    expected = (-math.log(sigmoid(1.0)) - math.log(1 - sigmoid(0.5))) / 2
    assert classification_loss(cam, label).item() == pytest.approx(expected, rel=1e-6)


def test_min_pooling_loss_by_hand() -> None:
    x = torch.zeros(2, 2, 4, 4)  # h·w = 16 → k = 4 smallest of the per-pixel channel max
    x[0, 0] = torch.arange(16.0).view(4, 4) - 2  # max with channel 1 (0): 0,0,0,1,2,…
    x[1] = 3.0
    # sample 0: 0+0+0+1; sample 1: 4·3; divided by k·N = 8
    assert min_pooling_loss(x).item() == pytest.approx(13 / 8)
    negative = -torch.ones(1, 1, 4, 4)  # ReLU after the top-k
    assert min_pooling_loss(negative).item() == 0.0


def test_er_loss_by_hand_and_view_1_resized_to_view_2() -> None:
    cam1 = torch.zeros(1, 2, 2, 2)
    cam1[0, 0] = 9.0  # background: not in ER
    cam1[0, 1] = torch.tensor([[0.0, 2.0], [4.0, 8.0]])  # min 0, max 8
    cam2 = torch.zeros(1, 2, 2, 2)
    cam2[0, 1] = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # min 1, max 3
    n1 = [0.0, (2 - E) / (8 + E), (4 - E) / (8 + E), (8 - E) / (8 + E)]
    n2 = [0.0, 0.0, 0.0, (2 - E) / (2 + E)]
    expected = sum(abs(a - b) for a, b in zip(n1, n2, strict=True)) / 4
    positive = torch.tensor([[1.0, 1.0]])
    assert er_loss(cam1, cam2, positive).item() == pytest.approx(expected, rel=1e-5)
    assert er_loss(cam1, cam2, torch.tensor([[1.0, 0.0]])).item() == 0.0  # masked by label
    # view 1 at 4×4 with those corners and values in between: same max_norm range, and the
    # align-corners resize to view 2's 2×2 keeps the corners
    big = torch.zeros(1, 2, 4, 4)
    big[0, 1] = 4.0
    big[0, 1, 0, 0], big[0, 1, 0, 3], big[0, 1, 3, 0], big[0, 1, 3, 3] = 0.0, 2.0, 4.0, 8.0
    assert er_loss(big, cam2, positive).item() == pytest.approx(expected, rel=1e-5)


def test_ecr_loss_top_k_counts_the_actual_two_channels() -> None:
    h = w = 5
    fg = torch.arange(25.0).view(h, w) / 24  # min 0, max 1
    cam = torch.stack([torch.full((h, w), 3.0), fg])[None]  # background replaced by 1 - fg
    rv = torch.zeros(1, 2, h, w)  # max_norm(0) = 0
    label = torch.tensor([[1.0, 1.0]])
    n = np.maximum(np.arange(25) / 24 - E, 0) / (1 + E)
    t = np.sort(np.concatenate([1 - n, n]))[::-1]  # |[bg, fg] - 0| over C·h·w = 50 values
    k = int(2 * h * w * 0.2)  # 10 (the reference's 21·h·w·0.2 = 105 > 50 crashes)
    expected = 2 * t[:k].mean()  # both directions, symmetric here
    assert ecr_loss(cam, cam, rv, rv, label).item() == pytest.approx(expected, rel=1e-6)
    for wrong in (int(h * w * 0.2), 2 * h * w):  # one channel's k, or every entry
        assert abs(2 * t[:wrong].mean() - expected) > 1e-3
    tiny = torch.rand(2, 2, 2, 2)  # 2·2·2·0.2 < 1: at least one entry, no NaN
    assert torch.isfinite(ecr_loss(tiny, tiny, tiny, tiny, torch.ones(2, 2)))


def test_ecr_loss_detaches_the_cams_and_trains_the_refined_maps() -> None:
    cam1, cam2 = torch.rand(1, 2, 4, 4, requires_grad=True), torch.rand(1, 2, 4, 4)
    rv1 = torch.rand(1, 2, 4, 4, requires_grad=True)
    ecr_loss(cam1, cam2, rv1, torch.rand(1, 2, 4, 4), torch.ones(1, 2)).backward()
    assert cam1.grad is None or not cam1.grad.any()
    assert rv1.grad is not None and rv1.grad.abs().sum() > 0


def test_poly_lr() -> None:
    assert poly_lr(0.01, 0, 10) == 0.01
    assert poly_lr(0.01, 5, 10) == pytest.approx(0.01 * 0.5**0.9)
    assert poly_lr(0.01, 10, 10) == 0.0


# --- PCM ------------------------------------------------------------------------------------

def test_pcm_orthogonal_features_give_identity() -> None:
    cam = torch.tensor([[[[0.2, 0.7]], [[0.9, 0.4]]]])  # [1,2,1,2]
    f = torch.tensor([[[[3.0, 0.0]], [[0.0, 5.0]]]])  # pixel vectors (3,0), (0,5): orthogonal
    assert torch.allclose(pcm_refine(cam, f), cam / (1 + E), atol=1e-7)


def test_pcm_affinity_columns_normalised() -> None:
    # unit pixel vectors p0=(1,0), p1=(0.6,0.8), p2=(0,1), p1 scaled by 5 (L2-normalised away);
    # A = relu(cosines) = [[1,.6,0],[.6,1,.8],[0,.8,1]], column sums 1.6, 2.4, 1.8
    f = torch.tensor([[[[1.0, 3.0, 0.0]], [[0.0, 4.0, 1.0]]]])  # [1,2,1,3]
    cam = torch.tensor([[[[1.0, 2.0, 3.0]]]])
    a = [[1, 0.6, 0], [0.6, 1, 0.8], [0, 0.8, 1]]
    sums = [1.6, 2.4, 1.8]
    expected = [sum(cam[0, 0, 0, i].item() * a[i][j] for i in range(3)) / (sums[j] + E)
                for j in range(3)]
    assert torch.allclose(pcm_refine(cam, f)[0, 0, 0], torch.tensor(expected), atol=1e-5)
    anti = torch.tensor([[[[1.0, -2.0]], [[0.0, 0.0]]]])  # opposite vectors: relu → 0
    cam2 = torch.tensor([[[[0.25, 0.75]]]])
    assert torch.allclose(pcm_refine(cam2, anti), cam2 / (1 + E), atol=1e-7)


def test_pcm_features_are_detached_from_the_backbone() -> None:
    torch.manual_seed(0)
    model = SEAM.build(IN_CHANS, context())
    _, rv = model.seam_forward(batch())
    min_pooling_loss(rv[:, 1:]).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.classifier.weight.grad is None  # the CAM enters the PCM without gradient
    for conv in (model.f8_3, model.f8_4, model.f9):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


# --- training -------------------------------------------------------------------------------

def test_optimizer_has_real_momentum_and_weight_decay(monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.optim.Optimizer] = []
    original = Seam.make_optimizer

    def spy(self: Seam, model: nn.Module) -> torch.optim.Optimizer:
        made.append(original(self, model))
        return made[-1]

    monkeypatch.setattr(Seam, "make_optimizer", spy)
    images, labels = data()
    model = SEAM.train(images, labels, context())
    (opt,) = made
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.9 for g in opt.param_groups)
    decays = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays[id(model.classifier.weight)] == 5e-4
    assert decays[id(model.f9.weight)] == 5e-4
    bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
    assert decays[id(bn.weight)] == 0.0 and decays[id(bn.bias)] == 0.0
    assert len(decays) == len(list(model.parameters()))  # every parameter trained
    assert opt.state[model.classifier.weight]["momentum_buffer"] is not None
    # 8 slices, batches of 4: 2 steps; the last step ran at the poly lr of step 1
    assert opt.param_groups[0]["lr"] == pytest.approx(poly_lr(0.01, 1, 2))


def test_batchnorm_is_trained_and_model_returned_in_eval_mode(trained: Any) -> None:
    model, _ = trained
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and any(m.running_mean.abs().sum() > 0 for m in bns)
    assert all(int(m.num_batches_tracked) == 4 for m in bns)  # 2 steps × 2 views
    assert not any(m.training for m in model.modules())


def test_progress_reports_mean_loss_terms(trained: Any) -> None:
    _, log = trained
    assert [e for e, _ in log] == [0]
    losses = log[0][1]
    assert set(losses) == {"total", "cls", "pcm", "er", "ecr"}
    assert all(math.isfinite(v) for v in losses.values())
    assert losses["total"] == pytest.approx(
        losses["cls"] + losses["pcm"] + losses["er"] + losses["ecr"], rel=1e-5)


def test_loss_weights() -> None:
    torch.manual_seed(0)
    model = SEAM.build(IN_CHANS, context()).train()
    x, y = batch(), torch.tensor([0, 1, 1])
    weighted = Seam(backbone=BACKBONE, er_weight=2.0, ecr_weight=0.5)
    torch.manual_seed(1)
    t = weighted.losses(model, x, y)
    assert t["total"].item() == pytest.approx(
        (t["cls"] + t["pcm"] + 2 * t["er"] + 0.5 * t["ecr"]).item(), rel=1e-6)
    assert all(t[k].item() > 0 for k in ("cls", "pcm", "er", "ecr"))


def test_same_seed_same_maps_other_seed_other_maps(trained: Any) -> None:
    images, labels = data()
    x = batch()
    again = SEAM.train(images, labels, context(0, amp=True))  # amp: ignored on the CPU
    other = SEAM.train(images, labels, context(1))
    first, first_logits = SEAM.maps(trained[0], x)
    maps, logits = SEAM.maps(again, x)
    assert torch.equal(first, maps) and torch.equal(first_logits, logits)
    assert not torch.equal(first_logits, SEAM.maps(other, x)[1])
    positive = SEAM.maps(lesion_positive(trained[0]), x)[0]  # non-flat maps of the same nets
    assert torch.equal(positive, SEAM.maps(lesion_positive(again), x)[0])
    assert not torch.equal(positive, SEAM.maps(lesion_positive(other), x)[0])


# --- maps -----------------------------------------------------------------------------------

def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def test_maps_contract(trained: Any) -> None:
    model, _ = trained
    x = batch()
    assert _hooks(model) == 0  # SeamNet registers no permanent hooks
    maps, logits = SEAM.maps(model, x)
    assert maps.shape == (1, 3, 32, 32) and maps.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    positive = SEAM.maps(lesion_positive(model), x)[0]
    top = positive.amax(dim=(2, 3))  # min–max with the reference's eps: just under 1
    assert (top <= 1).all() and (top > 0.9).all()
    assert (positive.amin(dim=(2, 3)) < positive.amax(dim=(2, 3))).all()  # and not flat
    assert torch.allclose(positive.amin(dim=(2, 3)), torch.zeros(1, 3))  # as the reference
    assert logits.shape == (3, 2) and logits.dtype == torch.float32
    with torch.no_grad():
        forward = model(x)
    assert forward.shape == (3, 2)
    assert torch.allclose(logits, forward, atol=1e-6)  # the scale-1, unflipped pass
    assert torch.allclose(forward[:, 0], -forward[:, 1])  # both classes have a gradient
    assert _hooks(model) == 0
    assert SEAM.outputs(IN_CHANS) == ("refined",)
    assert Seam.min_channels == 1 and Seam.cam_head is True


def test_target_layer_is_the_last_stage(trained: Any) -> None:
    model, _ = trained
    layer = SEAM.target_layer(model)
    assert layer is model.backbone.layer4
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(batch())
    finally:
        handle.remove()
    assert len(seen) == 1 and seen[0].ndim == 4 and seen[0].shape[:2] == (3, 96)


def test_maps_under_autocast_and_flat_maps(trained: Any) -> None:
    model, _ = trained
    with torch.autocast("cpu", dtype=torch.bfloat16):
        maps, logits = SEAM.maps(model, batch())
    assert maps.dtype == torch.float32 and logits.dtype == torch.float32
    assert torch.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    flat = SEAM.build(IN_CHANS, context()).eval()
    with torch.no_grad():
        flat.classifier.weight.zero_()  # CAM 0 → refined 0 everywhere
    maps, logits = SEAM.maps(flat, batch())
    assert torch.equal(maps, torch.zeros_like(maps)) and torch.isfinite(logits).all()


def test_state_dict_loads_strictly_and_gives_the_same_maps(trained: Any) -> None:
    model = lesion_positive(trained[0])
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, map_location="cpu", weights_only=True)
    fresh = SEAM.build(IN_CHANS, context(seed=7))
    fresh.load_state_dict(state, strict=True)
    x = batch()
    assert torch.equal(SEAM.maps(fresh.eval(), x)[0], SEAM.maps(model, x)[0])


def test_scale_flip_inference(trained: Any) -> None:
    model = lesion_positive(trained[0])
    x = batch()
    one = Seam(backbone=BACKBONE, scales=(1.0,))
    maps, _ = one.maps(model, x)
    with torch.no_grad():
        plain = model.seam_forward(x)[1][:, 1]
        flipped = model.seam_forward(x.flip(-1))[1][:, 1]
    total = torch.relu(plain + flipped.flip(-1))
    lo, hi = total.amin(dim=(1, 2), keepdim=True), total.amax(dim=(1, 2), keepdim=True)
    expected = F.relu(total - lo - E) / (hi - lo + E)
    assert torch.allclose(maps[0], expected, atol=1e-6)
    unflipped = torch.relu(plain + flipped)
    ulo, uhi = unflipped.amin(dim=(1, 2), keepdim=True), unflipped.amax(dim=(1, 2), keepdim=True)
    wrong = F.relu(unflipped - ulo - E) / (uhi - ulo + E)
    assert (maps[0] - wrong).abs().max() > 1e-4  # flipping back matters on these slices
    two = Seam(backbone=BACKBONE, scales=(1.0, 2.0)).maps(model, x)[0]
    assert two.shape == maps.shape and not torch.equal(two, maps)


# --- plugin ---------------------------------------------------------------------------------

def test_options_and_registration() -> None:
    assert Seam(scales="0.5, 1,2").scales == (0.5, 1.0, 2.0)  # type: ignore[arg-type]
    assert Seam(scales=1).scales == (1.0,)  # type: ignore[arg-type]
    default = Seam()
    assert (default.backbone, default.output_stride, default.lr, default.momentum) == \
        ("resnet34", 16, 0.01, 0.9)
    assert (default.weight_decay, default.view_scale, default.er_weight, default.ecr_weight,
            default.scales) == (5e-4, 0.5, 1.0, 1.0, (0.5, 1.0, 1.5, 2.0))
    for bad in ({"scales": ()}, {"scales": (0.0,)}, {"view_scale": 1.5}, {"lr": -1.0}):
        with pytest.raises(ValueError):
            Seam(**bad)
    from wsss_bench.contracts import declared_problems

    assert declared_problems("methods", default) == []
    registered: list[object] = []
    method_seam.register_methods(registered.append)
    assert len(registered) == 1 and isinstance(registered[0], Seam)


def test_gradcam_of_the_background_class_is_not_empty(trained):
    """Both logits depend on the CAM: Grad-CAM of class 0 is the mirror of class 1's, so
    ``--cam-target predicted`` does not silently gate SEAM's Grad-CAM rows."""
    from wsss_bench_plugins.cams import GradCAM

    model = lesion_positive(trained[0])
    with torch.no_grad():  # a lesion score that falls wherever the activations rise
        model.classifier.weight[1].neg_()
    x = batch()[:2]
    layer = SEAM.target_layer(model)
    background = GradCAM().cam(model, layer, x, torch.zeros(2, dtype=torch.long))
    assert (background.flatten(1).amax(1) > 0.5).all()  # where the lesion class sees nothing
    lesion = GradCAM().cam(model, layer, x, torch.ones(2, dtype=torch.long))
    assert torch.equal(lesion, torch.zeros_like(lesion))
