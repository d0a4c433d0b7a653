"""End-to-end methods in the run: their train and map units in the store, their maps evaluated
as one-member groups beside the CAM rows (thresholds from the training folds only), CAMs on a
method's CAM head, the boundary checks, the channel requirement and the unit keys.

A toy method (one 3×3 conv, trained a few steps) keeps these runs to seconds; the built-in
methods are tested in test_method_seam.py and test_method_wsscmer.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import wsss_bench
from tests.conftest import FIRST
from tests.test_store import units
from wsss_bench import hookimpl, testing
from wsss_bench.core import calibration
from wsss_bench.core.progress import Reporter
from wsss_bench.errors import RunIncomplete, UsageError
from wsss_bench.options import option
from wsss_bench.pipeline.publish import run_and_publish
from wsss_bench.pipeline.run import execute
from wsss_bench.pipeline.settings import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = Reporter(quiet=True)
PHANTOM = {"n_cases": "6", "n_slices": "4", "size": "32"}


class ToyNet(nn.Module):
    def __init__(self, in_chans: int) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Conv2d(4, 2, 1)

    def cam(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cam(x).mean((2, 3))


@dataclass(frozen=True)
class Toy:
    """A minimal method: a 3×3 conv and a 1×1 class head, the lesion channel as its map."""

    name: str = "toy"
    description: str = "a toy end-to-end method for tests"
    min_channels: ClassVar[int] = 1
    cam_head: ClassVar[bool] = True
    steps: int = option(3, "SGD steps per epoch")
    shift: float = option(0.0, "added to the maps (not 0: a contract violation)")

    def outputs(self, in_chans: int) -> tuple[str, ...]:
        return ("score",)

    def build(self, in_chans: int, context: Any) -> nn.Module:
        return ToyNet(in_chans)

    def train(self, images: np.ndarray, labels: np.ndarray, context: Any) -> nn.Module:
        torch.manual_seed(context.seed)
        model = self.build(images.shape[1], context)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        for epoch in range(context.epochs):
            for _ in range(self.steps):
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
            context.progress(epoch, {"total": loss.item()})
        return model.eval()

    def maps(self, model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            cam = F.relu(model.cam(images)[:, 1])
            low = cam.amin((1, 2), keepdim=True)
            span = cam.amax((1, 2), keepdim=True) - low
            maps = torch.where(span > 0, (cam - low) / span.clamp_min(1e-12), 0.0)
            return (maps + self.shift)[None], model(images)

    def target_layer(self, model: nn.Module) -> nn.Module:
        return model.features


class ToyPlugin:
    def __init__(self, *methods: Any) -> None:
        self.methods = methods or (Toy(),)

    @hookimpl
    def register_methods(self, register):
        for method in self.methods:
            register(method)


def registry(*methods: Any):
    return wsss_bench.load_registry(extra_plugins={"toy-methods": ToyPlugin(*methods)})


def config(tmp_path, **changes) -> RunConfig:
    values = {"backbones": (FIRST,), "cams": ("gradcam",), "ensembles": (), "folds": 2,
              "epochs": 1, "batch_size": 8, "methods": ("toy",), "workdir": str(tmp_path / "w"),
              "leaderboard_dir": str(tmp_path / "b"), "device": "cpu", "bootstrap": 0,
              "figures": False, "options": {"phantom": dict(PHANTOM)}}
    return RunConfig(**{**values, **changes})


def test_toy_method_meets_the_contract():
    testing.check_method(Toy())


def test_method_rows_sit_beside_cam_rows_and_reuse_their_units(tmp_path):
    cfg = config(tmp_path)
    board = run_and_publish(cfg, registry(), QUIET)
    methods = {r["method"] for r in board["rows"] if r["source"] == "measured"}
    # the method's own map and Grad-CAM on its CAM head, beside the classifier's row
    assert {"toy / score / none", "toy / gradcam / none", f"{FIRST} / gradcam / none"} <= methods
    trained, mapped = units(tmp_path / "w", "train"), units(tmp_path / "w", "cams")
    assert len(trained) == 4 and len(mapped) == 2 + 4  # 2 folds × (classifier, toy)
    row = next(r for r in board["rows"] if r["method"] == "toy / score / none")
    assert row["backbones"] == ["toy"] and row["cam"] == "score"
    assert set(row["run"]["timings"]["units"]) == {"train", "cams", "evaluate"}
    again = execute(cfg, registry(), QUIET)  # everything is reused
    assert units(tmp_path / "w", "train") == trained
    assert units(tmp_path / "w", "cams") == mapped
    assert {r["method"]: r["metrics"] for r in again.rows} == {
        r["method"]: r["metrics"] for r in board["rows"] if r["source"] == "measured"}


def test_method_maps_are_calibrated_on_training_folds_only(tmp_path, monkeypatch):
    seen: list[tuple[int, ...]] = []
    real = calibration.grid_search

    def spy(stack, masks, **kwargs):
        seen.append(tuple(np.asarray(kwargs["slices"]).tolist()))
        return real(stack, masks, **kwargs)

    monkeypatch.setattr(calibration, "grid_search", spy)
    outcome = execute(config(tmp_path), registry(), QUIET)
    ctx = outcome.context
    units = [u for u, _ in outcome.evaluations]
    assert sum(u.group == ("toy",) for u in units) == 4  # its map and Grad-CAM, 2 folds
    # one calibration per evaluate unit, each on exactly its fold's training slices (a
    # multiset: calibrating a unit on the other fold's, or on all slices, breaks it)
    assert sorted(seen) == sorted(tuple(ctx.split(u.folds[0])[0].tolist()) for u in units)
    for k in range(2):
        train, val = ctx.split(k)
        assert len(train) and len(val) and not set(train) & set(val)


def test_too_few_channels_is_refused_before_any_training(tmp_path):
    @dataclass(frozen=True)
    class TwoChannel(Toy):
        name: str = "toy2"
        min_channels: ClassVar[int] = 2

    with pytest.raises(UsageError, match=r"--methods toy2: needs at least 2 input channels.*"
                                         r"gives 1") as exc:
        execute(config(tmp_path, methods=("toy2",)), registry(TwoChannel()), QUIET)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "w" / "units" / "train").exists() or not units(tmp_path / "w",
                                                                          "train")


def test_maps_outside_the_contract_fail_their_unit_naming_the_method(tmp_path):
    cfg = config(tmp_path, cams=("gradcam",), options={"phantom": dict(PHANTOM),
                                                       "toy": {"shift": "2"}})
    outcome = execute(cfg, registry(), QUIET)
    bad = [f for f in outcome.failures if f.startswith("cams score toy")]
    assert len(bad) == 2 and all("method 'toy'" in f and "[0, 1]" in f for f in bad)
    assert "\n" not in bad[0]
    # the other map of the unit (Grad-CAM on its head) is stored and evaluated
    assert [r["method"] for r in outcome.rows if r["method"].startswith("toy")] == [
        "toy[shift=2.0] / gradcam / none"]
    with pytest.raises(RunIncomplete):
        run_and_publish(cfg, registry(), QUIET)


def test_method_options_and_seeds_change_the_unit_keys(tmp_path):
    from wsss_bench.pipeline.plan import Plan

    def keys(cfg: RunConfig) -> set[str]:
        reg = registry()
        plan = Plan.build(cfg, reg)
        folds = [["a"], ["b"]]
        plan = plan.with_data("generated/x", (4, 1, 32, 32), ["a", "a", "b", "b"], folds,
                              outputs={"toy": ("score",)})
        return {u.key for u in plan.train if u.kind == "methods"} | {
            k for c in plan.cams if c.train.kind == "methods" for k, _ in c.keys.values()}

    base = keys(config(tmp_path))
    assert len(base) == 2 + 4
    other = keys(config(tmp_path, options={"phantom": dict(PHANTOM), "toy": {"steps": "4"}}))
    assert not base & other
    assert not base & keys(config(tmp_path, seed=1))
    assert base == keys(config(tmp_path))


def test_seam_and_wss_cmer_rows_beside_cam_rows_on_a_two_channel_phantom(tmp_path, capsys):
    """`wsss-bench run --methods seam,wss-cmer` on the phantom's two contrasts: each method's
    maps get rows beside the classifier's (WSS-CMER one per modality), Grad-CAM runs on SEAM's
    CAM head, and a one-channel phantom refuses WSS-CMER with one line (exit status 2)."""
    from wsss_bench.cli import main

    work, boards = tmp_path / "w", tmp_path / "b"
    small = ["-o", "phantom.n_cases=6", "-o", "phantom.n_slices=4", "-o", "phantom.size=32",
             "--folds", "2", "--epochs", "1", "--batch-size", "8", "--ensembles", "",
             "--backbones", FIRST, "--workdir", str(work), "--leaderboard-dir", str(boards),
             "--bootstrap", "0", "--no-figures", "-q"]
    cheap = ["-o", "seam.backbone=timm:test_resnet", "-o", "seam.scales=1.0",
             "-o", "wss-cmer.width=4"]
    assert main(["run", *small, "-o", "wss-cmer.width=4", "--methods", "wss-cmer"]) == 2
    err = capsys.readouterr().err.strip()
    assert "needs at least 2 input channels" in err and "\n" not in err
    assert main(["run", *small, *cheap, "-o", "phantom.channels=2",
                 "--methods", "seam,wss-cmer"]) == 0
    import json

    board = json.loads((boards / "phantom.json").read_text())
    rows = {r["method"] for r in board["rows"] if r["source"] == "measured"}
    seam, cmer = "seam[backbone=timm:test_resnet,scales=1.0]", "wss-cmer[width=4]"
    assert rows == {"Empty", f"{FIRST} / gradcam / none", f"{seam} / refined / none",
                    f"{seam} / gradcam / none", f"{cmer} / modality-1 / none",
                    f"{cmer} / modality-2 / none"}
    assert all(r["dataset_options"]["channels"] == 2 for r in board["rows"]
               if r["source"] == "measured")
