"""Initial weights: local checkpoint folders, timm's download path (against a local HTTP server),
and the fallback to random weights when the hub cannot be reached."""

from __future__ import annotations

import io
import json

import pytest
import timm
import torch

import wsss_bench
from tests.test_cli import run_main
from tests.test_download import Server, server  # noqa: F401 (fixture)
from wsss_bench.core.progress import Reporter
from wsss_bench.core.weights import find_checkpoint
from wsss_bench.errors import UsageError
from wsss_bench.pipeline.context import Context
from wsss_bench.pipeline.folds import split
from wsss_bench.pipeline.plan import Plan, weights_argument
from wsss_bench.pipeline.prepare import prepare
from wsss_bench.pipeline.run import run
from wsss_bench.pipeline.settings import RunConfig
from wsss_bench.pipeline.train import build

pytestmark = pytest.mark.usefixtures("one_thread")
REGISTRY = wsss_bench.load_registry()


def imagenet_resnet18(seed: int = 7) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model("resnet18", pretrained=False).state_dict()


@pytest.mark.parametrize("name", ["resnet18.safetensors", "resnet18.pth", "resnet18.a1_in1k.pth",
                                  "resnet18-f37072fd.pth"])
def test_checkpoint_names_found(tmp_path, name):
    (tmp_path / name).write_bytes(b"x")
    (tmp_path / "resnet34.pth").write_bytes(b"x")
    (tmp_path / "resnet18_notes.txt").write_bytes(b"x")
    assert find_checkpoint(tmp_path, "resnet18").name == name


def test_missing_or_ambiguous_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint for resnet18"):
        find_checkpoint(tmp_path, "resnet18")
    (tmp_path / "resnet18.pth").write_bytes(b"x")
    (tmp_path / "resnet18.safetensors").write_bytes(b"x")
    with pytest.raises(UsageError, match="several checkpoints"):
        find_checkpoint(tmp_path, "resnet18")


def test_weights_dir_is_loaded_and_recorded(tmp_path):
    state = imagenet_resnet18()
    torch.save(state, tmp_path / "resnet18.pth")
    config = RunConfig(backbones=("resnet18",), ensembles=(), weights=str(tmp_path),
                       options={"phantom": {"n_cases": "6", "n_slices": "8"}}, folds=2,
                       epochs=1, batch_size=8, workdir=str(tmp_path / "w"))
    plan = Plan.build(config, REGISTRY)
    source = plan.weights["resnet18"]
    assert source.startswith(f"file {tmp_path / 'resnet18.pth'} (")
    ctx = Context(plan, None, None, plan.device, registry=REGISTRY)  # type: ignore[arg-type]
    data = prepare(plan, ctx.plugin("datasets", config.dataset), Reporter(quiet=True))
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(),
                          split(config, data))
    ctx = Context(plan, data, tmp_path / "w" / "units", plan.device, registry=REGISTRY)
    model, _, _ = build(ctx, "resnet18")
    torch.testing.assert_close(model.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    # 3 → 1 input channel: the stem is the sum over the RGB filters (timm's adapt_input_conv)
    torch.testing.assert_close(model.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    rows, _ = run(config, REGISTRY)
    assert rows[0]["run"]["effective"]["weights"] == {"resnet18": source}
    random_plan = Plan.build(RunConfig(**{**config.__dict__, "weights": None}), REGISTRY)
    assert random_plan.weights["resnet18"] == "random"
    folds = [["phantom_000"]] * 2
    job_key = _train_key(plan, data, folds)
    assert job_key != _train_key(random_plan, data, folds)


def _train_key(plan: Plan, data, folds: list[list[str]]) -> str:
    """The key of the train unit (seed 0, fold 0, resnet18) of ``plan`` on ``data``."""
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(), folds)
    [unit] = [u for u in plan.train if (u.seed, u.fold, u.backbone) == (0, 0, "resnet18")]
    return unit.key


@pytest.mark.slow
def test_pretrained_downloads_through_timm_from_a_local_server(tmp_path, server,  # noqa: F811
                                                               monkeypatch, capsys):
    state = imagenet_resnet18(seed=3)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    server.files["/weights/resnet18-local.pth"] = buffer.getvalue()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    url = server.url("/weights/resnet18-local.pth")
    boards = tmp_path / "b"
    code = run_main(["run", "--backbones", "resnet18", "--ensembles", "", "--pretrained",
                     "-o", f"resnet18.weights_url={url}", "-o", "phantom.n_cases=6",
                     "-o", "phantom.n_slices=8", "--folds", "2", "--epochs", "1",
                     "--workdir", str(tmp_path / "w"), "--leaderboard-dir", str(boards), "-q"])
    assert code == 0, capsys.readouterr().err
    assert server.ranges  # it was fetched over HTTP
    cached = list((tmp_path / "torch-home").rglob("resnet18-local.pth"))
    assert len(cached) == 1  # torch.hub's cache, reused by every later build
    row = json.loads((boards / "phantom.json").read_text())["rows"][0]
    assert row["run"]["effective"]["weights"] == {"resnet18": "timm-hub"}
    model = REGISTRY.backbones["resnet18"]
    import dataclasses

    built = dataclasses.replace(model, weights_url=url).build(1, 2, pretrained=True,
                                                                output_stride=16)
    torch.testing.assert_close(built.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])


def test_unreachable_hub_falls_back_to_random_and_says_so(tmp_path, monkeypatch):
    import huggingface_hub.constants

    # offline mode fails at once (read at call time); a real network timeout takes ~45 s here
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    config = RunConfig(backbones=("resnet18", "resnet34"), ensembles=(), pretrained=True,
                       workdir=str(tmp_path / "w"))
    with pytest.warns(UserWarning, match="cannot be reached") as caught:
        plan = Plan.build(config, REGISTRY)
    assert len(caught) == 1  # after the first failure the hub is not tried again
    assert plan.weights["resnet18"].startswith("random (hub unreachable")
    assert plan.weights["resnet34"] == plan.weights["resnet18"]
    backbone = Context(plan, None, None, plan.device,  # type: ignore[arg-type]
                       registry=REGISTRY).plugin("backbones", "resnet18")
    assert weights_argument(plan, backbone) is False
