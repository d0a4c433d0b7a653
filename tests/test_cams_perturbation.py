"""Perturbation CAMs (Score-CAM, SS-CAM, IS-CAM, Ablation-CAM): float64 references written here
from the formulas (a float64 copy of the model, no plugin code), the peers (pytorch-grad-cam,
torchcam), batching, chunking, top_k and cleanup.

Measured max |ours - peer| (CPU, test_resnet at 64x64, layer4 2x2): pytorch-grad-cam ScoreCAM
(variant pytorch-grad-cam) and AblationCAM ≤ 3e-6; torchcam ScoreCAM (variant torchcam),
SSCAM (one image at a time, same seed) and ISCAM ≤ 2e-6.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.torch_helpers import assert_clean
from wsss_bench_plugins.cams_perturbation import (
    CAMS,
    ISCAM,
    SSCAM,
    AblationCAM,
    ScoreCAM,
    _nonzero_channels,
    _pairs,
    _shared_prefix_logits,
    clean_pass,
    select_channels,
)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64  # test_resnet's layer4 is 2x2: min-max before and after upsampling coincide


@pytest.fixture(scope="module")
def net() -> nn.Module:
    """timm test_resnet (1 channel, 2 classes), seeded, eval; head × 20 so that the class
    probabilities are far from 1/2 (the paper's and the peers' weights then differ)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", in_chans=1, num_classes=2).eval()
    with torch.no_grad():
        model.fc.weight.mul_(20.0)
    return model


def images(b: int = 2, seed: int = 2) -> torch.Tensor:
    return torch.randn(b, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


MIXED = [1, 0]


# ================================================================ float64 references


def ref_capture(model: nn.Module, x: torch.Tensor, target, layer: str = "layer4") -> tuple:
    """Float64 copy of the model, A at ``layer``, clean logits and the classes."""
    m = copy.deepcopy(model).double().eval()
    store: dict[str, torch.Tensor] = {}
    handle = m.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: store.__setitem__("a", out))
    try:
        with torch.no_grad():
            logits = m(x.double())
    finally:
        handle.remove()
    classes = logits.argmax(1).tolist() if target is None else list(target)
    return m, store["a"].clone(), logits, classes


def ref_finish(weights: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    cam = torch.relu((weights[:, :, None, None] * a).sum(1))
    cam = F.interpolate(cam[:, None], size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    out = []
    for mp in cam[:, 0]:
        lo, hi = mp.min(), mp.max()
        out.append(torch.zeros_like(mp) if hi == lo else (mp - lo) / (hi - lo))
    return torch.stack(out)


def ref_score_weights(model: nn.Module, x: torch.Tensor, target) -> tuple:
    """Score-CAM (paper): w_k = softmax over classes of f(x ⊙ minmax(Up(A_k))), class c;
    a constant channel has weight 0."""
    m, a, _, classes = ref_capture(model, x, target)
    w = torch.zeros(a.shape[:2], dtype=torch.float64)
    with torch.no_grad():
        for i, c in enumerate(classes):
            for k in range(a.shape[1]):
                ak = a[i, k]
                if ak.max() == ak.min():
                    continue
                up = F.interpolate(ak[None, None], size=(SIZE, SIZE), mode="bilinear",
                                   align_corners=False)
                mask = (up - up.min()) / (up.max() - up.min())
                w[i, k] = torch.softmax(m(x[i : i + 1].double() * mask), dim=1)[0, c]
    return w, a


def ref_ablation_weights(model: nn.Module, x: torch.Tensor, target,
                         layer: str = "layer4") -> tuple:
    """Ablation-CAM: w_k = (y_c - y_c^k) / y_c, y_c^k with channel k of ``layer`` set to 0
    (one image per forward)."""
    m, a, logits, classes = ref_capture(model, x, target, layer)
    w = torch.zeros(a.shape[:2], dtype=torch.float64)
    for i, c in enumerate(classes):
        for k in range(a.shape[1]):
            ablated = a[i : i + 1].clone()
            ablated[0, k] = 0
            handle = m.get_submodule(layer).register_forward_hook(
                lambda _m, _i, _o, v=ablated: v)
            try:
                with torch.no_grad():
                    yk = m(x[i : i + 1].double())[0, c]
            finally:
                handle.remove()
            y = logits[i, c]
            w[i, k] = (y - yk) / y
    return w, a


def top_k_mask(a: torch.Tensor, k: int, rank_by: str) -> torch.Tensor:
    flat = a.flatten(2)
    rank = flat.var(2, unbiased=False) if rank_by == "variance" else flat.mean(2)
    keep = torch.zeros(a.shape[:2], dtype=torch.bool)
    for i in range(a.shape[0]):
        order = sorted(range(a.shape[1]), key=lambda j, i=i: (-float(rank[i, j]), j))
        keep[i, order[:k]] = True
    return keep


@pytest.fixture(scope="module")
def refs(net) -> dict:
    """The paper weights for ``images()`` and MIXED, computed once."""
    x = images()
    w, a = ref_score_weights(net, x, MIXED)
    wa, _ = ref_ablation_weights(net, x, MIXED)
    return {"score": w, "ablation": wa, "a": a}


# ================================================================ golden values


@pytest.mark.parametrize("target", [None, MIXED], ids=["none", "mixed"])
def test_scorecam_matches_the_paper_formula(net, target):
    x = images()
    w, a = ref_score_weights(net, x, target)
    ref = ref_finish(w, a)
    assert all(float(r.max()) == 1.0 for r in ref)
    got = ScoreCAM(batch_size=50).cam(net, net.layer4, x, None if target is None
                                      else torch.tensor(target))
    assert got.shape == (2, SIZE, SIZE) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
    assert_clean(net)


def test_ablationcam_matches_the_paper_formula(net, refs):
    x = images()
    w, a = refs["ablation"], refs["a"]
    got = AblationCAM(batch_size=40).cam(net, net.layer4, x, torch.tensor(MIXED))
    torch.testing.assert_close(got.double(), ref_finish(w, a), atol=1e-5, rtol=0)
    assert_clean(net)


# ================================================================ peers


def _pgc(cls_name: str, model: nn.Module, x: torch.Tensor, target: list[int],
         layer: str = "layer4") -> np.ndarray:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    other = copy.deepcopy(model)
    with getattr(pgc, cls_name)(model=other,
                                target_layers=[other.get_submodule(layer)]) as cam:
        cam.batch_size = 64
        return cam(input_tensor=x, targets=[ClassifierOutputTarget(t) for t in target])


def _torchcam(cls_name: str, model: nn.Module, x: torch.Tensor, target: list[int],
              seed: int | None = None, **kwargs) -> torch.Tensor:
    """torchcam's un-normalised map, finished like ours (ReLU, upsample, min-max)."""
    methods = pytest.importorskip("torchcam.methods")
    other = copy.deepcopy(model)
    with getattr(methods, cls_name)(other, target_layer="layer4",
                                    input_shape=(1, SIZE, SIZE), **kwargs) as extractor:
        scores = other(x)
        if seed is not None:
            torch.manual_seed(seed)
        (cam,) = extractor(class_idx=list(target), scores=scores, normalized=False)
    cam = F.interpolate(torch.relu(cam.detach().double())[:, None], size=(SIZE, SIZE),
                        mode="bilinear", align_corners=False)[:, 0]
    lo = cam.flatten(1).amin(1).view(-1, 1, 1)
    return (cam - lo) / (cam.flatten(1).amax(1).view(-1, 1, 1) - lo)


def test_scorecam_pytorch_grad_cam_variant_equals_the_package(net):
    x = images()
    theirs = _pgc("ScoreCAM", net, x, MIXED)
    ours = ScoreCAM(variant="pytorch-grad-cam").cam(net, net.layer4, x, torch.tensor(MIXED))
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4, rtol=0)
    assert_clean(net)


def test_scorecam_torchcam_variant_equals_torchcam(net):
    x = images()
    theirs = _torchcam("ScoreCAM", net, x, MIXED)
    ours = ScoreCAM(variant="torchcam").cam(net, net.layer4, x, torch.tensor(MIXED))
    torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=0)


def test_peers_scorecam_weights_deviate_from_the_paper(net, refs):
    """Both peers weight by a softmax over channels of raw target logits (torchcam subtracts
    the clean logit first, which the softmax cancels); the paper (Algorithm 1 and the
    authors' code) by the class probability of each masked input. Documented peer deviation,
    asserted: with a confident head the maps differ; ours (default) is the paper's."""
    x = images()
    paper = ref_finish(refs["score"], refs["a"]).numpy()
    assert np.abs(_pgc("ScoreCAM", net, x, MIXED) - paper).max() > 0.05
    assert (_torchcam("ScoreCAM", net, x, MIXED).numpy() - paper).__abs__().max() > 0.05


def test_ablationcam_equals_pytorch_grad_cam(net):
    x = images()
    theirs = _pgc("AblationCAM", net, x, MIXED)
    ours = AblationCAM().cam(net, net.layer4, x, torch.tensor(MIXED))
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-4, rtol=0)


def test_sscam_equals_torchcam_one_image_at_a_time(net):
    # torchcam draws noise per image of the batch, ours once per round for the whole batch:
    # the streams coincide for a batch of one (same seed)
    x = images()
    for i, t in enumerate(MIXED):
        theirs = _torchcam("SSCAM", net, x[i : i + 1], [t], seed=5, num_samples=3, std=0.5)
        ours = SSCAM(samples=3, std=0.5, seed=5).cam(net, net.layer4, x[i : i + 1],
                                                     torch.tensor([t]))
        torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=0)


def test_sscam_seed_and_noise_matter(net):
    x = images(b=1)
    t = torch.tensor([1])
    base = SSCAM(samples=3, std=0.5, seed=5).cam(net, net.layer4, x, t)
    assert torch.equal(base, SSCAM(samples=3, std=0.5, seed=5).cam(net, net.layer4, x, t))
    assert (SSCAM(samples=3, std=0.5, seed=6).cam(net, net.layer4, x, t) - base).abs().max() > 1e-3
    assert (ScoreCAM(variant="torchcam").cam(net, net.layer4, x, t) - base).abs().max() > 1e-3


def test_iscam_equals_torchcam(net):
    x = images()
    theirs = _torchcam("ISCAM", net, x, MIXED, num_samples=4)
    ours = ISCAM(steps=4).cam(net, net.layer4, x, torch.tensor(MIXED))
    torch.testing.assert_close(ours.double(), theirs, atol=1e-4, rtol=0)
    assert ISCAM(steps=4).coefficients() == pytest.approx([0.25, 0.75, 1.5, 2.5])


# ================================================================ batching, chunks, top_k

SMALL = [ScoreCAM(), ScoreCAM(variant="pytorch-grad-cam"), SSCAM(samples=2, std=0.3, seed=1),
         ISCAM(steps=2), AblationCAM()]
SMALL_IDS = ["scorecam", "scorecam-pgc", "sscam", "iscam", "ablationcam"]


@pytest.mark.parametrize("method", SMALL, ids=SMALL_IDS)
def test_batched_equals_per_sample_and_chunks_do_not_matter(net, method):
    x = images()
    t = torch.tensor(MIXED)
    batched = method.cam(net, net.layer4, x, t)
    single = torch.cat([method.cam(net, net.layer4, x[i : i + 1], t[i : i + 1])
                        for i in range(2)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)
    for bs in (5,):
        other = type(method)(**{**method.__dict__, "batch_size": bs})
        torch.testing.assert_close(other.cam(net, net.layer4, x, t), batched, atol=1e-5, rtol=0)
    assert all(float(m.max()) == 1.0 for m in batched)
    assert_clean(net)


@pytest.mark.parametrize("rank_by", ["variance", "mean"])
def test_top_k_zeroes_the_other_weights(net, refs, rank_by):
    x = images()
    t = torch.tensor(MIXED)
    w, a = refs["score"], refs["a"]
    k_all = a.shape[1]
    full = ScoreCAM().cam(net, net.layer4, x, t)
    torch.testing.assert_close(ScoreCAM(top_k=k_all, rank_by=rank_by).cam(net, net.layer4, x, t),
                               full, atol=0, rtol=0)
    for k in (1, 5):
        keep = top_k_mask(a, k, rank_by)
        ref = ref_finish(torch.where(keep, w, 0.0), a)
        got = ScoreCAM(top_k=k, rank_by=rank_by).cam(net, net.layer4, x, t)
        torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)
        assert (got - full).abs().max() > 1e-3  # the selection matters
    wa = refs["ablation"]
    keep = top_k_mask(a, 5, rank_by)
    got = AblationCAM(top_k=5, rank_by=rank_by).cam(net, net.layer4, x, t)
    torch.testing.assert_close(got.double(), ref_finish(torch.where(keep, wa, 0.0), a),
                               atol=1e-5, rtol=0)
    # softmax variants: the softmax runs over the chosen channels only
    m, _, _, _ = ref_capture(net, x, MIXED)
    keep = top_k_mask(a, 5, rank_by)
    s = torch.full(a.shape[:2], -torch.inf, dtype=torch.float64)
    with torch.no_grad():
        for i, c in enumerate(MIXED):
            for j in keep[i].nonzero()[:, 0].tolist():
                up = F.interpolate(a[i, j][None, None], size=(SIZE, SIZE), mode="bilinear",
                                   align_corners=True)
                mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
                s[i, j] = m(x[i : i + 1].double() * mask)[0, c]
    ref = ref_finish(torch.softmax(s, dim=1), a)
    got = ScoreCAM(variant="pytorch-grad-cam", top_k=5, rank_by=rank_by).cam(
        net, net.layer4, x, t)
    torch.testing.assert_close(got.double(), ref, atol=1e-5, rtol=0)


def test_select_channels_breaks_ties_by_index():
    a = torch.zeros(1, 4, 2, 2)
    a[0, 2] = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    assert select_channels(a, 2, "variance").tolist() == [[True, False, True, False]]
    assert select_channels(a, 0, "mean").all() and select_channels(a, 9, "mean").all()


@pytest.mark.parametrize(("method", "per_image"),
                         [(ScoreCAM(batch_size=16, top_k=5), 5),
                          (SSCAM(samples=3, batch_size=16, top_k=5), 15),
                          (ISCAM(steps=2, batch_size=16, top_k=5), 10)],
                         ids=["scorecam", "sscam", "iscam"])
def test_masked_forwards_are_batched_and_top_k_cuts_them(net, method, per_image):
    x = images()
    calls: list[int] = []
    handle = net.register_forward_pre_hook(lambda _m, inp: calls.append(int(inp[0].shape[0])))
    try:
        method.cam(net, net.layer4, x, torch.tensor(MIXED))
    finally:
        handle.remove()
    assert calls[0] == 2  # one clean pass, then chunks of at most batch_size
    assert max(calls[1:]) <= 16 and len(calls) - 1 == -(-sum(calls[1:]) // 16)
    assert 0 < sum(calls[1:]) <= 2 * per_image  # all-zero channels are not forwarded


def test_the_probe_rejects_a_model_whose_clean_copy_changes(net):
    """Right shapes, wrong values: a head that depends on the batch size fails the probe (its
    clean copy's logits differ from the clean pass's), so no shared-prefix logits are used."""
    x, target = images(), torch.tensor(MIXED)
    model = Tail(net, "count").eval()
    raw, logits, _ = clean_pass(model, model.net.layer4, x, target)
    pairs = _pairs(_nonzero_channels(raw.float()))
    assert _shared_prefix_logits(model, model.net.layer4, x, raw, logits, *pairs, 16) is None
    plain = Tail(net, "add").eval()
    raw, logits, _ = clean_pass(plain, plain.net.layer4, x, target)
    pairs = _pairs(_nonzero_channels(raw.float()))
    shared = _shared_prefix_logits(plain, plain.net.layer4, x, raw, logits, *pairs, 16)
    assert shared is not None and shared.shape == (len(pairs[0]), 2)


class Tail(nn.Module):
    """test_resnet's layers after layer4, made to reach back before layer4 (``mode``):
    ``add``: the pooled stem output joins the logits (broadcasts from batch 1: shared prefix);
    ``batch``: the batch size read before layer4 shapes the features (an expanded batch
    breaks it: full forwards); ``count``: the logits depend on the number of rows (the probe's
    clean copy comes out wrong)."""

    def __init__(self, net: nn.Module, mode: str) -> None:
        super().__init__()
        self.net, self.mode = copy.deepcopy(net), mode
        self.side = nn.Linear(int(self.net.bn1.num_features), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        stem = n.maxpool(n.act1(n.bn1(n.conv1(x))))
        feats = n.layer4(n.layer3(n.layer2(n.layer1(stem))))
        pooled = n.global_pool(feats)
        if self.mode == "batch":
            pooled = pooled.reshape(x.shape[0], -1)
        out = n.fc(pooled)
        if self.mode == "count":
            return out + 0.1 * out.shape[0]
        return out + self.side(stem.mean((2, 3))) if self.mode == "add" else out


@pytest.mark.parametrize(("mode", "shared"), [("add", True), ("batch", False)])
def test_ablationcam_shares_the_prefix_where_the_model_allows_it(net, mode, shared):
    model = Tail(net, mode).eval()
    x = images()
    target = torch.tensor(MIXED)
    calls: list[int] = []
    handle = model.net.conv1.register_forward_pre_hook(
        lambda _m, inp: calls.append(int(inp[0].shape[0])))
    try:
        if shared:
            got = AblationCAM(batch_size=16).cam(model, model.net.layer4, x, target)
        else:
            with pytest.warns(UserWarning, match="one full forward per copy"):
                got = AblationCAM(batch_size=16).cam(model, model.net.layer4, x, target)
    finally:
        handle.remove()
    w, a = ref_ablation_weights(model, x, target.tolist(), layer="net.layer4")
    torch.testing.assert_close(got.double(), ref_finish(w, a), atol=1e-5, rtol=0)
    assert_clean(model)
    n_live = int(a.flatten(2).ne(0).any(2).sum())
    prefix_images = sum(calls[1:])
    if shared:  # the probe chunk and every later chunk: one image each
        assert set(calls[1:]) == {1} and prefix_images == sum(
            -(-int(a[i].flatten(1).ne(0).any(1).sum()) // 16) for i in range(len(x)))
    else:  # the probe (1 image), then one full forward per ablated copy
        assert prefix_images == 1 + n_live


# ================================================================ contract details


class Boom(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls >= self.n:
            raise RuntimeError("boom")
        return x


@pytest.mark.filterwarnings("ignore:ablationcam")  # the probe fails too: full forwards
@pytest.mark.parametrize("method", CAMS, ids=[c.name for c in CAMS])
def test_no_hooks_or_grads_left_when_a_masked_forward_raises(net, method):
    model = copy.deepcopy(net)
    model.global_pool = nn.Sequential(Boom(2), model.global_pool)  # 2nd call: a masked one
    method = type(method)(**{**method.__dict__, "samples": 1} if method.name == "sscam"
                          else method.__dict__)
    with pytest.raises(RuntimeError, match="boom"):
        method.cam(model, model.layer4, images(b=1), torch.tensor([1]))
    assert torch.is_grad_enabled()
    assert_clean(model)


@pytest.mark.parametrize(("cls", "kwargs"), [
    (ScoreCAM, {"variant": "grad"}), (ScoreCAM, {"batch_size": 0}), (ScoreCAM, {"top_k": -1}),
    (ScoreCAM, {"rank_by": "max"}), (SSCAM, {"samples": 0}), (SSCAM, {"std": -1.0}),
    (ISCAM, {"steps": 0}), (AblationCAM, {"batch_size": 0})])
def test_invalid_options(cls, kwargs):
    with pytest.raises(ValueError, match=cls().name):
        cls(**kwargs)
