"""The built-in CAM methods beyond Grad-CAM's basics: golden values from the formulas, the
peers (pytorch-grad-cam, torchcam) and their documented pitfalls, SmoothGrad-CAM++, and the
contract's edge cases (flat maps, cleanup after an exception) for every method.

Every golden value comes from an independent float64 implementation written here from the
formulas; it never calls the engine (:mod:`wsss_bench.cam_engine`).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_helpers import all_hooks, assert_clean
from wsss_bench.cam_engine import finish_cam, resolve_targets, smooth_gradients
from wsss_bench_plugins.cams import (
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
    plusplus_weights,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ================================================================ fixtures


class TinyNet(nn.Module):
    """Conv-BN-ReLU-Conv(stride 2)-BN -> target ReLU -> Conv3x3-ReLU -> GAP -> Linear(2).

    The target layer is a ReLU, so activations are >= 0 (S_k >= 0, as at a ResNet's last
    stage). The 3x3 head after it makes the gradient vary over space (and change sign), so
    the spatial sums in the weights, the per-pixel alphas and the per-sample targets all
    matter; the head ignores target channel 0, whose gradient is exactly 0 (α = 0 branch).
    """

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 3, padding=1),
            nn.BatchNorm2d(6),
            nn.ReLU(),
            nn.Conv2d(6, 8, 3, padding=1, stride=2),
            nn.BatchNorm2d(8),
        )
        self.target = nn.ReLU()
        self.head = nn.Sequential(nn.Conv2d(8, 5, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(5, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.target(self.features(x))).mean(dim=(2, 3)))


def images(b: int = 4, h: int = 20, w: int = 28, seed: int = 1) -> torch.Tensor:
    return torch.randn(b, 1, h, w, generator=torch.Generator().manual_seed(seed))


def tiny_net(seed: int = 12) -> TinyNet:
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (model.features[1], model.features[4]):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.1, 0.1)
        model.head[0].weight[:, 0] = 0.0  # channel 0 is unused: g == 0 there exactly
    model.eval()
    # Centre the decision so that the fixture images are predicted as both classes.
    with torch.no_grad():
        model.fc.weight.mul_(10.0)
        logits = model(images(b=8))
        diff = (logits[:, 1] - logits[:, 0]).sort().values
        model.fc.bias[1] -= (diff[3] + diff[4]) / 2
    return model


ALL_CAMS = [GradCAM(), GradCAMPlusPlus(), SmoothGradCAMPlusPlus(samples=3, sigma=0.2, seed=1),
            HiResCAM(), XGradCAM(), LayerCAM()]
CAM_IDS = [c.name for c in ALL_CAMS]






# ================================================================ float64 references


def reference_capture(model: nn.Module, layer_name: str, x: torch.Tensor, target
                      ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """A and g = d y_c / d A in float64, one sample at a time, by full backpropagation
    through a float64 copy (a plain forward hook, no engine code)."""
    m = copy.deepcopy(model).double().eval()
    layer = m.get_submodule(layer_name)
    store: dict[str, torch.Tensor] = {}
    handle = layer.register_forward_hook(lambda _m, _i, out: store.__setitem__("a", out))
    acts, grads, classes = [], [], []
    try:
        for i in range(x.shape[0]):
            with torch.enable_grad():
                logits = m(x[i : i + 1].double())
                if target is None:
                    c = int(logits[0].argmax())
                elif target == "positive":
                    c = 1
                else:
                    c = int(target[i])
                (g,) = torch.autograd.grad(logits[0, c], store["a"])
            acts.append(store["a"].detach())
            grads.append(g)
            classes.append(c)
    finally:
        handle.remove()
    return torch.cat(acts), torch.cat(grads), classes


def ref_weighted(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The pre-ReLU map [B,h,w] of each method, from its formula (float64)."""
    s = a.sum(dim=(2, 3), keepdim=True)  # S_k
    if method == "gradcam":
        w = g.mean(dim=(2, 3), keepdim=True)
        return (w * a).sum(dim=1)
    if method == "gradcam++":
        g2, g3 = g * g, g * g * g
        denom = 2 * g2 + s * g3
        alpha = torch.where(g != 0, g2 / torch.where(g != 0, denom, 1.0), 0.0)
        # relu(g)·α; where relu(g) = 0 the product is 0 (even if α were not finite)
        w = torch.where(g > 0, g * alpha, 0.0).sum(dim=(2, 3), keepdim=True)
        return (w * a).sum(dim=1)
    if method == "hirescam":
        return (g * a).sum(dim=1)
    if method == "xgradcam":
        num = (g * a).sum(dim=(2, 3), keepdim=True)
        w = torch.where(s != 0, num / torch.where(s != 0, s, 1.0), 0.0)
        return (w * a).sum(dim=1)
    if method == "layercam":
        return (torch.relu(g) * a).sum(dim=1)
    raise AssertionError(method)


def ref_finish(weighted: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """ReLU, bilinear (align_corners=False) to ``size``, per-sample min-max, flat -> 0."""
    cam = F.interpolate(torch.relu(weighted.double())[:, None], size=size, mode="bilinear",
                        align_corners=False)[:, 0]
    out = []
    for m in cam:
        lo, hi = m.min(), m.max()
        out.append(torch.zeros_like(m) if hi == lo else (m - lo) / (hi - lo))
    return torch.stack(out)


def reference_cam(method: str, model: nn.Module, layer_name: str, x: torch.Tensor, target
                  ) -> torch.Tensor:
    a, g, _ = reference_capture(model, layer_name, x, target)
    return ref_finish(ref_weighted(method, a, g), tuple(x.shape[-2:]))


def reference_smooth(model: nn.Module, layer_name: str, x: torch.Tensor, target, *,
                     samples: int, sigma: float, seed: int) -> torch.Tensor:
    """SmoothGrad-CAM++ in float64: E[g], E[g²], E[g³] over the noisy copies, the noise drawn
    with the recipe documented in ``smooth_gradients`` (one z per copy, shared by the batch,
    scaled by sigma·(max - min) of each image); S and A from the clean pass."""
    a, _, classes = reference_capture(model, layer_name, x, target)
    z = torch.randn((samples, 1, *x.shape[1:]), generator=torch.Generator().manual_seed(seed))
    xd = x.double()
    span = (xd.flatten(1).amax(1) - xd.flatten(1).amin(1)).view(-1, 1, 1, 1)
    moments = [torch.zeros_like(a) for _ in range(3)]
    for j in range(samples):
        noisy = xd + sigma * span * z[j].double()
        _, g, _ = reference_capture(model, layer_name, noisy, classes)
        for p in range(3):
            moments[p] += g ** (p + 1) / samples
    m1, m2, m3 = moments
    s = a.sum(dim=(2, 3), keepdim=True)
    denom = 2 * m2 + s * m3
    alpha = torch.where(m2 > 0, m2 / torch.where(m2 > 0, denom, 1.0), 0.0)
    w = torch.where(m1 > 0, m1 * alpha, 0.0).sum(dim=(2, 3), keepdim=True)
    return ref_finish((w * a).sum(dim=1), tuple(x.shape[-2:]))


# ================================================================ 1. golden values

METHODS = {"gradcam": GradCAM(), "gradcam++": GradCAMPlusPlus(), "hirescam": HiResCAM(),
           "xgradcam": XGradCAM(), "layercam": LayerCAM()}
TARGETS = [None, "positive", [0, 1, 1, 0], [1, 0, 0, 0]]


def _target_arg(target):
    """What the core passes: None, or a long tensor (``positive``: all ones)."""
    if target == "positive":
        return torch.ones(4, dtype=torch.long)
    return torch.tensor(target) if isinstance(target, list) else target


def test_fixture_is_not_degenerate():
    # guards the golden tests: both classes are predicted, and the two classes' maps differ
    model = tiny_net()
    x = images()
    with torch.no_grad():
        assert 0 < int(model(x).argmax(1).sum()) < 4
    for name in METHODS:
        zero = reference_cam(name, model, "target", x, [0, 0, 0, 0])
        one = reference_cam(name, model, "target", x, [1, 1, 1, 1])
        assert (zero - one).abs().amax(dim=(1, 2)).min() > 0.05, name
    # the gradient varies over space, so Grad-CAM and HiResCAM differ
    a, g, _ = reference_capture(model, "target", x, None)
    assert (a >= 0).all() and (g.amax(dim=(2, 3)) - g.amin(dim=(2, 3))).abs().max() > 0
    assert (g < 0).any() and (g > 0).any() and (g == 0).any()  # all branches of the formulas
    hires = reference_cam("hirescam", model, "target", x, None)
    assert (hires - reference_cam("gradcam", model, "target", x, None)).abs().max() > 0.05


@pytest.mark.parametrize("target", TARGETS, ids=["none", "positive", "mixed", "mostly0"])
@pytest.mark.parametrize("name", list(METHODS))
def test_matches_a_float64_reference_from_the_formula(name, target):
    model = tiny_net()
    x = images()
    ref = reference_cam(name, model, "target", x, target)
    assert all(float(r.max()) == 1.0 for r in ref), "reference maps must not be flat"
    got = METHODS[name].cam(model, model.target, x, _target_arg(target))
    assert got.shape == (4, 20, 28) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    assert_clean(model)


def test_plusplus_weights_formula_on_hand_made_gradients():
    # g = 0 (α = 0, no NaN), g < 0 (no contribution), g > 0 with S·g large and small
    g = torch.tensor([[[[0.0, -0.5], [2.0, 1e-4]], [[3.0, 0.0], [-1.0, 0.25]]]])
    a = torch.tensor([[[[1.0, 0.0], [2.0, 3.0]], [[0.0, 0.0], [0.0, 0.5]]]])
    got = plusplus_weights(g, a)
    s = a.sum(dim=(2, 3))  # [[6.0, 0.5]]
    expected = torch.tensor([[2.0 / (2 + 6 * 2.0) + 1e-4 / (2 + 6 * 1e-4),
                              3.0 / (2 + 0.5 * 3.0) + 0.25 / (2 + 0.5 * 0.25)]])
    assert s.tolist() == [[6.0, 0.5]]
    assert got.shape == (1, 2)
    torch.testing.assert_close(got, expected, atol=1e-7, rtol=1e-6)
    # tiny gradients: no epsilon, so α·g = g / (2 + S·g) stays exact (pytorch-grad-cam's
    # g²/(2g² + S·g³ + 1e-6) would give ~g/(2 + 1e6·g) here)
    tiny = plusplus_weights(g * 1e-6, a)
    expected_tiny = torch.tensor([[2e-6 / (2 + 6 * 2e-6) + 1e-10 / (2 + 6 * 1e-10),
                                   3e-6 / (2 + 0.5 * 3e-6) + 2.5e-7 / (2 + 0.5 * 2.5e-7)]])
    torch.testing.assert_close(tiny, expected_tiny, atol=0, rtol=1e-5)


# ================================================================ 2. against pytorch-grad-cam


def _package():
    return pytest.importorskip("pytorch_grad_cam")


@pytest.fixture(scope="module")
def resnet18():
    """timm resnet18 (1 channel, 2 classes), eval, fixed seed: as timm builds it (the last BN
    of each residual block zero-initialised, so layer4's gradient is fc.weight / (h·w),
    constant over space) ..."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", in_chans=1, num_classes=2).eval()


@pytest.fixture(scope="module")
def resnet18_live():
    """... and with every residual branch live (``zero_init_last=False``): at
    ``layer4.1.act1`` the gradient passes conv2 and the block's final ReLU, so it varies
    over space."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    return timm.create_model("resnet18", in_chans=1, num_classes=2,
                             zero_init_last=False).eval()


def x64() -> torch.Tensor:
    # 64x64: the layer4 feature map is 2x2. The package min-max normalises the 2x2 map and
    # then resizes it (cv2, bilinear with half-pixel centres); we resize first and normalise
    # after. Both orders agree here: bilinear output is a convex combination of the 4
    # values, and each of the 4 is reproduced exactly in its clamped 16x16 corner, so the
    # upsampled min/max equal the 2x2 min/max and the (affine) min-max commutes with the
    # (linear) resize. At e.g. 96x96 (3x3) the centre value is never hit exactly.
    return torch.randn(3, 1, 64, 64, generator=torch.Generator().manual_seed(2))


def _strip_eps_plusplus(cls):
    class GradCAMPlusPlusNoEps(cls):
        """pytorch_grad_cam.GradCAMPlusPlus.get_cam_weights (1.5.x), ε = 1e-6 taken out."""

        def get_cam_weights(self, input_tensor, target_layers, target_category, activations,
                            grads):
            grads_power_2 = grads**2
            grads_power_3 = grads_power_2 * grads
            spatial_axes = tuple(range(2, activations.ndim))
            sum_activations = np.sum(activations, axis=spatial_axes)
            sum_activations = sum_activations.reshape(
                sum_activations.shape + (1,) * len(spatial_axes))
            with np.errstate(divide="ignore", invalid="ignore"):
                aij = grads_power_2 / (2 * grads_power_2 + sum_activations * grads_power_3)
            aij = np.where(grads != 0, aij, 0)
            weights = np.maximum(grads, 0) * aij
            return np.sum(weights, axis=spatial_axes)

    return GradCAMPlusPlusNoEps


def run_package(cls, model: nn.Module, layer_name: str, x: torch.Tensor, target) -> np.ndarray:
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    other = copy.deepcopy(model)  # the package fills parameter grads
    with cls(model=other, target_layers=[other.get_submodule(layer_name)]) as cam:
        targets = None if target is None else [ClassifierOutputTarget(int(t)) for t in target]
        out = cam(input_tensor=x, targets=targets)
    assert out.shape == (x.shape[0], *x.shape[-2:])
    return out


PACKAGE_CASES = [("resnet18", "layer4"), ("resnet18_live", "layer4"),
                 ("resnet18_live", "layer4.1.act1")]


@pytest.mark.parametrize("target", [None, [1, 0, 1]], ids=["none", "mixed"])
@pytest.mark.parametrize(("fixture", "layer"), PACKAGE_CASES)
@pytest.mark.parametrize("name", ["gradcam", "gradcam++", "xgradcam", "layercam", "hirescam"])
def test_agrees_with_pytorch_grad_cam(name, fixture, layer, target, request):
    """Measured max |ours - package| (grad-cam 1.5.7, CPU): ≤ 1.7e-6 for gradcam, xgradcam,
    layercam and hirescam; ≤ 5.4e-6 for gradcam++ once the package's ε is stripped (with it:
    6e-3 .. 2.5e-2, see the next test). The package's XGradCAM divides by S + 1e-7; that ε
    is tolerated, not stripped: S is a sum of ReLU outputs, O(1) or more, so it moves the maps
    by < 1e-6 (stripped or not, the measured difference is the same ~1e-6)."""
    pgc = _package()
    model = request.getfixturevalue(fixture)
    x = x64()
    cls = {"gradcam": pgc.GradCAM, "gradcam++": _strip_eps_plusplus(pgc.GradCAMPlusPlus),
           "xgradcam": pgc.XGradCAM, "layercam": pgc.LayerCAM, "hirescam": pgc.HiResCAM}[name]
    ref = run_package(cls, model, layer, x, target)
    assert np.ptp(ref, axis=(1, 2)).min() > 0.5  # not flat maps
    ours = METHODS[name].cam(model, model.get_submodule(layer), x, _target_arg(target))
    assert_clean(model)
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-4, rtol=0)


def test_live_fixture_has_spatially_varying_gradients(resnet18, resnet18_live):
    # guards the package comparison: one case where the gradient is constant over space
    # (default timm init, layer4), one where it is not
    x = x64()
    _, g, _ = reference_capture(resnet18, "layer4", x, None)
    assert torch.equal(g, g[:, :, :1, :1].expand_as(g))
    _, g, _ = reference_capture(resnet18_live, "layer4.1.act1", x, None)
    assert (g.amax(dim=(2, 3)) - g.amin(dim=(2, 3))).amax(dim=1).min() > 1e-3


def _small_head(model: nn.Module, scale: float = 1e-3) -> nn.Module:
    small = copy.deepcopy(model)
    with torch.no_grad():
        small.fc.weight.mul_(scale)  # gradients at layer4 scale by 1e-3
    return small


@pytest.mark.parametrize(("fixture", "layer"), PACKAGE_CASES)
def test_pytorch_grad_cam_plusplus_epsilon_pitfall(fixture, layer, request):
    """pytorch-grad-cam's α = g²/(2g² + S·g³ + 1e-6): with small gradients (head × 1e-3)
    the ε is no longer negligible and its maps move away from the exact formula (measured max
    |Δ|: 0.12, 0.28, 0.59 for the three cases; 6e-3 .. 2.5e-2 even at normal head scale),
    while ours stay on the float64 reference (≤ 3e-6). The package without its ε agrees with
    the reference (≤ 6e-6): the ε is the whole cause."""
    pgc = _package()
    model = _small_head(request.getfixturevalue(fixture))
    x = x64()
    target = [1, 0, 1]
    ref = reference_cam("gradcam++", model, layer, x, target).numpy()
    ours = GradCAMPlusPlus().cam(model, model.get_submodule(layer), x, torch.tensor(target))
    np.testing.assert_allclose(ours.numpy(), ref, atol=1e-5, rtol=0)
    with_eps = run_package(pgc.GradCAMPlusPlus, model, layer, x, target)
    no_eps = run_package(_strip_eps_plusplus(pgc.GradCAMPlusPlus), model, layer, x, target)
    np.testing.assert_allclose(no_eps, ref, atol=1e-4, rtol=0)
    # documented peer pitfall (not our bug): the package's ε shifts the maps
    assert np.abs(with_eps - ref).max() > 1e-2
    # the grad-CAM maps of the same model are unaffected: the shift is Grad-CAM++'s ε only
    gc = run_package(pgc.GradCAM, model, layer, x, target)
    np.testing.assert_allclose(gc, reference_cam("gradcam", model, layer, x, target).numpy(),
                               atol=1e-4, rtol=0)


def test_our_plusplus_stays_exact_for_tiny_gradients(resnet18):
    # α·g = g/(2 + S·g) -> g/2 as the gradient shrinks: no ε, so no dependence on how g²
    # compares with 1e-6, and the maps stay on the float64 reference at any head scale
    x = x64()
    for scale in (1e-3, 1e-6):
        small = _small_head(resnet18, scale)
        ref = reference_cam("gradcam++", small, "layer4", x, [1, 0, 1])
        got = GradCAMPlusPlus().cam(small, small.layer4, x, torch.tensor([1, 0, 1]))
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
        assert all(float(m.max()) == 1.0 for m in got)


# ================================================================ 3. torchcam's Grad-CAM++


def _torchcam_map(cls, model: nn.Module, layer_name: str, x: torch.Tensor, target: list[int]
                  ) -> torch.Tensor:
    """torchcam's un-normalised map (feature resolution) for per-sample classes."""
    other = copy.deepcopy(model)
    with cls(other, target_layer=layer_name) as extractor, torch.enable_grad():
        scores = other(x)
        (cam,) = extractor(class_idx=list(target), scores=scores, normalized=False)
    assert all_hooks(other) == []
    return cam.detach().double()


def _minmax(m: torch.Tensor) -> torch.Tensor:
    flat = m.flatten(1)
    lo, hi = flat.amin(1).view(-1, 1, 1), flat.amax(1).view(-1, 1, 1)
    return (m - lo) / (hi - lo)


def test_torchcam_gradcampp_alpha_division_is_a_no_op():
    """torchcam's GradCAMpp does ``alpha[idx][mask].div_(d[mask] + eps)``: boolean-mask
    indexing returns a copy, so the division never reaches ``alpha`` (which stays g²) and
    its weights are Σ_ij relu(g)·g² = Σ relu(g)³ instead of Σ relu(g)·α. Documented here
    as the peer's behaviour (asserted, not xfailed); ours follows the paper."""
    tc = pytest.importorskip("torchcam.methods")
    model = tiny_net()
    x = images()
    target = [0, 1, 1, 0]
    a, g, _ = reference_capture(model, "target", x, target)
    # the usage is right: torchcam's Grad-CAM equals the formula on the same call path
    theirs_gc = _torchcam_map(tc.GradCAM, model, "target", x, target)
    torch.testing.assert_close(theirs_gc, torch.relu(ref_weighted("gradcam", a, g)),
                               atol=1e-6, rtol=1e-4)
    theirs = _torchcam_map(tc.GradCAMpp, model, "target", x, target)
    exact = torch.relu(ref_weighted("gradcam++", a, g))
    noop_w = (torch.relu(g) * g * g).sum(dim=(2, 3), keepdim=True)
    no_op = torch.relu((noop_w * a).sum(dim=1))
    # peer bug, asserted as documentation: torchcam's map is the no-op formula ...
    torch.testing.assert_close(theirs, no_op, atol=1e-9, rtol=1e-4)
    # ... and far from the exact one, even after min-max normalisation
    assert (_minmax(theirs) - _minmax(exact)).abs().max() > 0.05
    # while ours equals the exact formula (at input resolution)
    ours = GradCAMPlusPlus().cam(model, model.target, x, torch.tensor(target))
    torch.testing.assert_close(ours.double(), ref_finish(ref_weighted("gradcam++", a, g),
                                                         (20, 28)), atol=1e-5, rtol=0)


# ================================================================ 4. SmoothGrad-CAM++


def test_smooth_sigma_zero_equals_gradcam_plus_plus():
    model = tiny_net()
    x = images()
    target = torch.tensor([0, 1, 1, 0])
    plain = GradCAMPlusPlus().cam(model, model.target, x, target)
    for samples in (1, 3):
        smooth = SmoothGradCAMPlusPlus(samples=samples, sigma=0.0, seed=5).cam(
            model, model.target, x, target)
        torch.testing.assert_close(smooth, plain, atol=1e-5, rtol=0)


def test_smooth_is_seeded_and_the_noise_matters():
    model = tiny_net()
    x = images()
    cam = SmoothGradCAMPlusPlus(samples=4, sigma=0.3, seed=7)
    first = cam.cam(model, model.target, x)
    assert torch.equal(first, cam.cam(model, model.target, x))
    other = SmoothGradCAMPlusPlus(samples=4, sigma=0.3, seed=8).cam(model, model.target, x)
    assert (first - other).abs().max() > 1e-3
    plain = GradCAMPlusPlus().cam(model, model.target, x)
    assert (first - plain).abs().max() > 1e-3
    assert torch.is_grad_enabled()
    assert_clean(model)


@pytest.mark.parametrize("target", [None, [0, 1, 1, 0]], ids=["none", "mixed"])
def test_smooth_matches_a_float64_reference(target):
    model = tiny_net()
    x = images()
    ref = reference_smooth(model, "target", x, target, samples=4, sigma=0.25, seed=11)
    assert all(float(r.max()) == 1.0 for r in ref)
    got = SmoothGradCAMPlusPlus(samples=4, sigma=0.25, seed=11).cam(
        model, model.target, x, _target_arg(target))
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    # the reference's noise matters (guards it): sigma = 0 gives a different map
    ref0 = reference_smooth(model, "target", x, target, samples=1, sigma=0.0, seed=11)
    assert (ref0 - ref).abs().max() > 1e-3


def test_smooth_batched_with_mixed_targets_equals_per_sample():
    # the noise z_j is shared by the batch (scaled per image), so a sample's map does not
    # depend on its neighbours
    model = tiny_net()
    x = images()
    target = torch.tensor([1, 0, 0, 1])
    cam = SmoothGradCAMPlusPlus(samples=3, sigma=0.2, seed=3)
    batched = cam.cam(model, model.target, x, target)
    single = torch.cat([cam.cam(model, model.target, x[i : i + 1], target[i : i + 1])
                        for i in range(4)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_smooth_chunking_does_not_change_the_result():
    model = tiny_net()
    x = images(b=2)
    target = torch.tensor([1, 0])
    small = SmoothGradCAMPlusPlus(samples=5, sigma=0.2, seed=4, max_batch=3)
    big = SmoothGradCAMPlusPlus(samples=5, sigma=0.2, seed=4, max_batch=256)
    torch.testing.assert_close(small.cam(model, model.target, x, target),
                               big.cam(model, model.target, x, target), atol=1e-6, rtol=0)
    moments_small = smooth_gradients(model, model.target, x, target, samples=5, sigma=0.2,
                                     seed=4, max_batch=3)
    moments_big = smooth_gradients(model, model.target, x, target, samples=5, sigma=0.2,
                                   seed=4, max_batch=256)
    for moment in ("mean_grad", "mean_grad2", "mean_grad3"):
        torch.testing.assert_close(getattr(moments_small, moment), getattr(moments_big, moment),
                                   atol=1e-9, rtol=1e-5)


@pytest.mark.parametrize(("samples", "b", "max_batch"),
                         [(5, 2, 3), (5, 2, 256), (4, 3, 7), (3, 4, 2), (6, 2, 4)])
def test_smooth_costs_samples_plus_one_forward_passes(samples, b, max_batch):
    model = tiny_net()
    x = images(b=b)
    calls: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, inputs: calls.append(
        int(inputs[0].shape[0])))
    try:
        SmoothGradCAMPlusPlus(samples=samples, sigma=0.1, seed=0, max_batch=max_batch).cam(
            model, model.target, x)
    finally:
        handle.remove()
    assert sum(calls) == (samples + 1) * b
    assert len(calls) == 1 + math.ceil(samples / max(1, max_batch // b))
    assert calls[0] == b  # the clean pass comes first
    assert max(calls[1:]) <= max(max_batch, b)
    assert_clean(model)


@pytest.mark.parametrize("kwargs", [{"samples": 0}, {"sigma": -0.1}, {"max_batch": 0},
                                    {"samples": -3}])
def test_smooth_invalid_options(kwargs):
    with pytest.raises(ValueError, match="smoothgradcam"):
        SmoothGradCAMPlusPlus(**kwargs)


@pytest.mark.parametrize("kwargs", [{"samples": 0, "sigma": 0.1}, {"samples": 2, "sigma": -1.0}])
def test_smooth_gradients_invalid_options(kwargs):
    model = tiny_net()
    with pytest.raises(ValueError):
        smooth_gradients(model, model.target, images(b=1), None, seed=0, **kwargs)
    assert_clean(model)


# ================================================================ 5. edge cases, every CAM


class PointwiseNet(nn.Module):
    """Only 1x1 convolutions and 2x2 average pooling: a constant image gives a constant
    activation and a constant gradient, i.e. a flat map for every method."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 1), nn.BatchNorm2d(4), nn.ReLU(),
                                      nn.AvgPool2d(2), nn.Conv2d(4, 6, 1))
        self.target = nn.ReLU()
        self.head = nn.Sequential(nn.Conv2d(6, 3, 1), nn.ReLU())
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.target(self.features(x))).mean(dim=(2, 3)))


def pointwise_net() -> PointwiseNet:
    torch.manual_seed(6)
    model = PointwiseNet().eval()
    with torch.no_grad():
        model.features[4].bias.fill_(0.2)  # the target ReLU is active on a constant image
        model.head[0].bias.fill_(0.5)  # and so is the head (non-zero gradients)
    return model


LEVELS = (0.7, -1.3, 0.9, 1.7, 2.9, 0.123, -0.4, 3.3)


def constant_images() -> torch.Tensor:
    """Eight constant 16x16 images, one level each (each gives its own flat map)."""
    return torch.tensor(LEVELS).view(-1, 1, 1, 1).expand(-1, 1, 16, 16).contiguous()


def test_constant_image_gives_a_flat_weighted_map():
    # guards the two tests below: on PointwiseNet a constant image gives a constant activation
    # and gradient (so every method's map before upsampling is flat), and the activation and
    # the gradient are alive. Constant up to float64 rounding: on an AVX-512 CPU (AMD EPYC)
    # torch's kernels leave 1-ulp differences between pixels (2.4e-15 relative measured);
    # any spatial structure in the net would show orders of magnitude above that.
    model = pointwise_net()
    a, g, _ = reference_capture(model, "target", constant_images(), [0, 1] * 4)
    assert (a > 0).any() and (g != 0).any()
    for t in (a, g):
        torch.testing.assert_close(t, t[:, :, :1, :1].expand_as(t), rtol=1e-13, atol=0)
    for method in ALL_CAMS:  # a non-constant image gives a non-flat map on the same model
        live = method.cam(model, model.target, images(b=2, h=16, w=16), torch.tensor([0, 1]))
        assert all(float(m.max()) == 1.0 for m in live), method.name
    assert_clean(model)


@pytest.mark.parametrize("method", ALL_CAMS, ids=CAM_IDS)
def test_constant_image_never_nan(method):
    model = pointwise_net()
    cam = method.cam(model, model.target, constant_images(), torch.tensor([0, 1] * 4))
    assert cam.shape == (8, 16, 16)
    assert not torch.isnan(cam).any()
    assert cam.min() >= 0 and cam.max() <= 1
    assert_clean(model)


@pytest.mark.parametrize("method", ALL_CAMS, ids=CAM_IDS)
def test_constant_image_gives_an_all_zero_map(method):
    model = pointwise_net()
    cam = method.cam(model, model.target, constant_images(), torch.tensor([0, 1] * 4))
    assert torch.equal(cam, torch.zeros_like(cam))


def test_bilinear_upsampling_of_a_constant_is_not_exactly_constant():
    # why finish_cam decides flatness before upsampling, pinned: a torch fact, true today on CPU
    up = F.interpolate(torch.full((1, 1, 8, 8), 0.9), size=(16, 16), mode="bilinear",
                       align_corners=False)
    assert 0 < float(up.max() - up.min()) < 1e-6


@pytest.mark.parametrize(("level", "low", "size"),
                         [(0.9, (8, 8), (16, 16)), (1.7, (2, 2), (64, 64)),
                          (2.9, (10, 14), (20, 28))])
def test_finish_cam_flat_map_is_zero_whatever_the_level(level, low, size):
    out = finish_cam(torch.full((1, *low), level), size)
    assert torch.equal(out, torch.zeros(1, *size))


@pytest.mark.parametrize("method", ALL_CAMS, ids=CAM_IDS)
def test_all_zero_activation_gives_an_all_zero_map(method):
    model = tiny_net()
    with torch.no_grad():  # BN output is always negative: the target ReLU outputs zeros
        bn = model.features[4]
        bn.weight.zero_()
        bn.bias.fill_(-1.0)
    x = images()
    a, g, _ = reference_capture(model, "target", x, [0, 1, 1, 0])
    assert torch.equal(a, torch.zeros_like(a))
    assert (g != 0).any()  # S = 0 while the gradient is not: exercises every division by S
    cam = method.cam(model, model.target, x, torch.tensor([0, 1, 1, 0]))
    assert cam.shape == (4, 20, 28)
    assert not torch.isnan(cam).any()
    assert torch.equal(cam, torch.zeros_like(cam))
    assert_clean(model)


class RaiseOnCall(nn.Module):
    """Raises on its ``n``-th call (1-based), passes through otherwise."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.n:
            raise RuntimeError("boom after the target layer")
        return x


RAISE_CASES = [(m, 1) for m in ALL_CAMS] + [
    # clean pass, then 4 noisy calls of one copy each: the 2nd noisy call raises
    (SmoothGradCAMPlusPlus(samples=4, sigma=0.2, max_batch=4), 3)]


@pytest.mark.parametrize("grad_enabled", [True, False])
@pytest.mark.parametrize(("method", "raise_on"), RAISE_CASES,
                         ids=[*CAM_IDS, "smoothgradcam++-in-a-noisy-pass"])
def test_cleanup_when_the_model_raises(method, raise_on, grad_enabled):
    model = tiny_net()
    before = copy.deepcopy(model.state_dict())
    boom = RaiseOnCall(raise_on)
    model.head.append(boom)  # no parameters: the state dict keeps its keys
    with torch.set_grad_enabled(grad_enabled):
        with pytest.raises(RuntimeError, match="boom after the target layer"):
            method.cam(model, model.target, images())
        assert torch.is_grad_enabled() is grad_enabled
    assert boom.calls == raise_on
    assert_clean(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the model works afterwards and the CAM runs again on it
    del model.head[-1]
    out = method.cam(model, model.target, images())
    assert out.shape == (4, 20, 28) and not torch.isnan(out).any()
    assert_clean(model)


# ================================================================ 6. resolve_targets


def test_resolve_targets_takes_none_or_an_integer_tensor_only():
    logits = torch.tensor([[3.0, -1.0], [0.0, 2.0], [5.0, 5.5], [1.0, 0.0]])
    positive = resolve_targets(logits, torch.ones(4, dtype=torch.long))
    assert positive.tolist() == [1, 1, 1, 1] and positive.dtype == torch.long
    assert resolve_targets(logits, torch.ones(4, dtype=torch.int32)).dtype == torch.long
    assert resolve_targets(logits, None).tolist() == [0, 1, 1, 0]
    for bad in ("positive", "lesion", 1, [1, 1, 1, 1], torch.ones(4)):  # str, int, list, float
        with pytest.raises(TypeError, match="None or an integer tensor"):
            resolve_targets(logits, bad)
    # through a method: the ones tensor is exactly the lesion class of every sample
    model = tiny_net()
    x = images()
    ones = GradCAMPlusPlus().cam(model, model.target, x, torch.ones(4, dtype=torch.long))
    want = reference_cam("gradcam++", model, "target", x, [1, 1, 1, 1])
    torch.testing.assert_close(ones.double(), want, atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="None or an integer tensor"):
        GradCAM().cam(model, model.target, x, "positive")
    assert_clean(model)
