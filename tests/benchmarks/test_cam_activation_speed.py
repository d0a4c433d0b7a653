"""Activation and full-gradient CAM speed on resnet34, batch 32, 1×128×128, CPU: ours (`cam`,
`eigencam`, `eigengradcam`, `fullgrad`) vs each peer that has the method, and one plain
forward pass of the same batch, side by side in one run; the gradient CAMs too (ours only:
their peers are in ``test_cam_speed.py``), so that the cost of every cheap CAM in forward
passes comes from one run.

Peers: torchcam ``CAM`` (a no-grad forward, then its extractor; its map stops at layer4's 4×4
and is upsampled here so that every call ends at 128×128), pytorch-grad-cam ``EigenCAM``,
``EigenGradCAM`` and ``FullGrad`` (numpy SVD per image, ``cv2.resize``). Results are compared
in the unit tests (``tests/test_cams_activation.py``, ``tests/test_cams_fullgrad.py``); here
every call must return 32 finite maps of 128×128. The last test prints the table (cost of each
call in forward passes, ours over the peer) and writes it to ``$WSSS_BENCH_TABLE``.

Skipped unless benchmarks are enabled (``conftest.py``). Run::

    .venv/bin/python -m pytest tests/benchmarks/test_cam_activation_speed.py -p no:xdist \\
        --benchmark-enable -s
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial

import pytest
import torch
import torch.nn.functional as F

from tests.benchmarks.report import cpu_name, report_targets, resnet34_and_batch
from wsss_bench_plugins.cams import (
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from wsss_bench_plugins.cams_activation import ClassActivationMap, EigenCAM, EigenGradCAM
from wsss_bench_plugins.cams_fullgrad import FullGrad

BATCH, SIZE, TARGET_CLASS, ROUNDS = 32, 128, 1, 3
MEDIANS: dict[str, float] = {}


@pytest.fixture(scope="module")
def setup():
    return resnet34_and_batch(BATCH, SIZE)


def _measure(benchmark, key: str, fn: Callable[[], object]) -> None:
    benchmark.group = f"activation cams resnet34 b{BATCH} {SIZE}px"
    out = benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    if benchmark.stats is not None:
        MEDIANS[key] = float(benchmark.stats.stats.median)
    if key != "forward":
        maps = torch.as_tensor(out)
        assert maps.shape == (BATCH, SIZE, SIZE) and torch.isfinite(maps).all()


@contextmanager
def _ours(model, x, method) -> Iterator[Callable[[], object]]:
    target = torch.full((BATCH,), TARGET_CLASS, dtype=torch.long)
    yield lambda: method.cam(model, model.layer4, x, target)


@contextmanager
def _pgc(model, x, cls_name: str) -> Iterator[Callable[[], object]]:
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    peer = copy.deepcopy(model)
    layers = [] if cls_name == "FullGrad" else [peer.layer4]
    cam = getattr(pgc, cls_name)(model=peer, target_layers=layers)
    targets = [ClassifierOutputTarget(TARGET_CLASS)] * BATCH
    try:
        yield lambda: cam(input_tensor=x, targets=targets)
    finally:
        cam.activations_and_grads.release()


@contextmanager
def _torchcam_cam(model, x) -> Iterator[Callable[[], object]]:
    methods = pytest.importorskip("torchcam.methods")
    peer = copy.deepcopy(model)
    with methods.CAM(peer, target_layer="layer4", fc_layer="fc") as extractor:

        def run():
            with torch.no_grad():
                peer(x)
            (cam,) = extractor(class_idx=[TARGET_CLASS] * BATCH)
            return F.interpolate(cam[:, None], size=(SIZE, SIZE), mode="bilinear",
                                 align_corners=False)[:, 0]

        yield run


RUNNERS = {  # key -> (label, runner, the key it is compared with)
    # the gradient CAMs of tests/benchmarks/test_cam_speed.py (peers there), for the cost column
    "ours_gradcam": ("ours gradcam", partial(_ours, method=GradCAM()), None),
    "ours_gradcampp": ("ours gradcam++", partial(_ours, method=GradCAMPlusPlus()), None),
    "ours_smoothgradcampp": ("ours smoothgradcam++ (samples 8)",
                             partial(_ours, method=SmoothGradCAMPlusPlus()), None),
    "ours_hirescam": ("ours hirescam", partial(_ours, method=HiResCAM()), None),
    "ours_xgradcam": ("ours xgradcam", partial(_ours, method=XGradCAM()), None),
    "ours_layercam": ("ours layercam", partial(_ours, method=LayerCAM()), None),
    "ours_cam": ("ours cam", partial(_ours, method=ClassActivationMap()), "torchcam_cam"),
    "torchcam_cam": ("torchcam CAM (+upsample)", _torchcam_cam, None),
    "ours_eigencam": ("ours eigencam", partial(_ours, method=EigenCAM()), "pgc_eigencam"),
    "pgc_eigencam": ("pytorch-grad-cam EigenCAM", partial(_pgc, cls_name="EigenCAM"), None),
    "ours_eigengradcam": ("ours eigengradcam", partial(_ours, method=EigenGradCAM()),
                          "pgc_eigengradcam"),
    "pgc_eigengradcam": ("pytorch-grad-cam EigenGradCAM",
                         partial(_pgc, cls_name="EigenGradCAM"), None),
    "ours_fullgrad": ("ours fullgrad", partial(_ours, method=FullGrad()), "pgc_fullgrad"),
    "pgc_fullgrad": ("pytorch-grad-cam FullGrad", partial(_pgc, cls_name="FullGrad"), None),
}


def test_forward(benchmark, setup):
    model, x = setup

    def forward():
        with torch.no_grad():
            return model(x)

    _measure(benchmark, "forward", forward)


@pytest.mark.parametrize("key", list(RUNNERS))
def test_cam(benchmark, setup, key):
    model, x = setup
    with RUNNERS[key][1](model, x) as run:
        _measure(benchmark, key, run)


def test_report():
    if "forward" not in MEDIANS:
        pytest.skip("no medians (benchmarks disabled)")
    fwd = MEDIANS["forward"]
    lines = [f"Activation CAMs, resnet34, batch {BATCH}, 1×{SIZE}×{SIZE}, {cpu_name()}, "
             f"{torch.get_num_threads()} threads, torch {torch.__version__} (medians of {ROUNDS})",
             "", "| method | median s | images/s | × forward | ours / peer time |",
             "|---|---:|---:|---:|---:|", f"| plain forward (no_grad) | {fwd:.3f} | "
             f"{BATCH / fwd:.1f} | 1.00 | — |"]
    for key, (label, _, peer) in RUNNERS.items():
        if key in MEDIANS:
            t = MEDIANS[key]
            ratio = f"{t / MEDIANS[peer]:.2f}" if peer in MEDIANS else "—"
            lines.append(f"| {label} | {t:.3f} | {BATCH / t:.1f} | {t / fwd:.2f} | {ratio} |")
    report_targets("\n".join(lines), [])
