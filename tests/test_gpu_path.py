"""The GPU code path (mixed precision, channels_last) exercised on the CPU, where the same code
runs with bfloat16 autocast; and the CUDA run itself where a GPU exists."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import timm
import torch

import wsss_bench
from tests.conftest import FIRST
from tests.test_cli import SMALL, run_main
from wsss_bench.core.training import TrainConfig, train_classifier
from wsss_bench.runner import compute_cams, predict

pytestmark = pytest.mark.usefixtures("one_thread")
REGISTRY = wsss_bench.load_registry()
CPU = torch.device("cpu")


def data(n: int = 24, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.random((n, 1, size, size), dtype=np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    images[labels == 1, :, 20:40, 20:40] += 1.0
    return images, labels


def trained(channels_last: bool, amp: bool = False):
    torch.manual_seed(0)
    model = timm.create_model("resnet18", in_chans=1, num_classes=2)
    images, labels = data()
    config = TrainConfig(epochs=1, batch_size=8, seed=0, channels_last=channels_last, amp=amp)
    return train_classifier(model, images, labels, config, CPU)


def test_channels_last_training_matches_contiguous():
    a, b = trained(False), trained(True)
    np.testing.assert_allclose(a.losses, b.losses, rtol=1e-4)
    for (name, p), q in zip(a.model.state_dict().items(), b.model.state_dict().values(),
                            strict=True):
        if p.is_floating_point():
            torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4, msg=name)
    assert b.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_mixed_precision_training_runs_and_learns_the_same_task():
    result = trained(False, amp=True)
    assert all(np.isfinite(result.losses))
    images, labels = data(seed=1)
    accuracy = (predict(result.model, images, 8, CPU, amp=True) == labels).mean()
    reference = (predict(trained(False).model, images, 8, CPU) == labels).mean()
    assert abs(accuracy - reference) <= 0.25


@pytest.fixture(scope="module")
def cam_model():
    """One trained resnet18 for every CAM (each test works on its own copy)."""
    return trained(False).model


CHEAP = {"smoothgradcam++": {"samples": 2}, "sscam": {"samples": 1, "top_k": 4},
         "iscam": {"steps": 1, "top_k": 4}, "scorecam": {"top_k": 4},
         "ablationcam": {"top_k": 4}}  # options that keep the perturbation CAMs quick


@pytest.mark.parametrize("cam_name", sorted(REGISTRY.cams))
def test_cams_with_channels_last_and_amp(cam_name, cam_model):
    """Every built-in CAM: channels_last gives the same maps, bfloat16 autocast close ones."""
    model = copy.deepcopy(cam_model)  # the test turns it channels_last
    cam = dataclasses.replace(REGISTRY.cams[cam_name], **CHEAP.get(cam_name, {}))
    layer = REGISTRY.backbones["resnet18"].target_layer(model)
    images, _ = data(n=16, seed=2)
    base = compute_cams(cam, model, layer, images, 8, CPU, lambda n: None, "positive")
    nhwc = compute_cams(cam, model.to(memory_format=torch.channels_last), layer, images, 8, CPU,
                        lambda n: None, "positive", channels_last=True)
    np.testing.assert_allclose(nhwc, base, atol=1e-4)
    mixed = compute_cams(cam, model, layer, images, 8, CPU, lambda n: None, "positive", amp=True)
    assert mixed.dtype == np.float32 and np.isfinite(mixed).all()
    assert mixed.min() >= 0 and mixed.max() <= 1
    assert np.abs(mixed - base).mean() < 0.1  # bfloat16 has 8 bits of mantissa
    assert np.corrcoef(mixed.ravel(), base.ravel())[0, 1] > 0.95


@pytest.mark.slow
def test_run_with_amp_and_channels_last_records_them(tmp_path):
    boards = tmp_path / "b"
    assert run_main(["run", *SMALL, "--backbones", FIRST, "--ensembles", "", "--amp", "on",
                     "--channels-last", "on", "--workdir", str(tmp_path / "w"),
                     "--leaderboard-dir", str(boards)]) == 0
    row = json.loads((boards / "phantom.json").read_text())["rows"][0]
    assert row["run"]["effective"]["amp"] is True
    assert row["run"]["effective"]["channels_last"] is True


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_run_uses_amp_and_channels_last_by_default(tmp_path):
    boards = tmp_path / "b"
    assert run_main(["run", *SMALL, "--ensembles", "and", "--device", "cuda", "--workdir",
                     str(tmp_path / "w"), "--leaderboard-dir", str(boards)]) == 0
    row = json.loads((boards / "phantom.json").read_text())["rows"][0]
    effective = row["run"]["effective"]
    assert effective["amp"] is True and effective["channels_last"] is True
    assert row["run"]["device"].startswith("cuda")
