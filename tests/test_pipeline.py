"""The run as a plan of units on any executor: keys of the previous version, the same numbers
on every executor, execution settings outside the numbers, Ray retries and failures, a
third-party executor."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

import wsss_bench
from tests.conftest import FIRST, SECOND
from tests.test_store import measured, units
from wsss_bench.core.progress import Reporter
from wsss_bench.errors import UsageError
from wsss_bench.executors import UnitFailed
from wsss_bench.pipeline.folds import split
from wsss_bench.pipeline.plan import Plan
from wsss_bench.pipeline.prepare import prepare
from wsss_bench.pipeline.publish import run_and_publish
from wsss_bench.pipeline.run import run
from wsss_bench.pipeline.settings import RunConfig, settings_of
from wsss_bench.testing import KitContext, KitUnit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny runs; executors take this thread count

GOLDEN = Path(__file__).parent / "data" / "store_keys_12d6b0f.json"
# 6 cases of 4 slices of 32×32: what these runs assert holds for any size; a small one keeps
# the runs on three executors (and their worker start-ups) within seconds of compute
SMALL = {"options": {"phantom": {"n_cases": "6", "n_slices": "4", "size": "32"}}, "folds": 2,
         "epochs": 1, "batch_size": 8, "ensembles": ("and",)}
QUIET = Reporter(quiet=True)
# the defaults of 12d6b0f that the golden runs relied on and that have changed since
DEFAULTS_AT_12D6B0F = {"backbones": ("resnet18", "resnet34"), "lr": 1e-3}


def plan_units(plan: Plan) -> list[tuple[str, str, str]]:
    """(stage, key, description as JSON) of every unit of a plan."""
    out = [("train", u.key, u.description) for u in plan.train]
    out += [("cams", k, d) for c in plan.cams for k, d in c.keys.values()]
    out += [("evaluate", k, d) for e in plan.evaluate for k, d in e.keys]
    return sorted((s, k, json.dumps(d, sort_keys=True)) for s, k, d in out)


@pytest.mark.parametrize("run_name", ["a", "b"])
def test_plan_lists_exactly_the_units_the_previous_version_stored(run_name, tmp_path):
    """Every unit (stage, key, description) of a store made by wsss-bench at 12d6b0f (the
    Runner class) is what the plan lists for the same settings: old workdirs are reused."""
    golden = json.loads(GOLDEN.read_text())["runs"][run_name]
    values = {**DEFAULTS_AT_12D6B0F,
              **{k: tuple(v) if isinstance(v, list) else v for k, v in golden["config"].items()}}
    config = RunConfig(**values, workdir=str(tmp_path), device="cpu")
    registry = wsss_bench.load_registry()
    plan = Plan.build(config, registry)
    data = prepare(plan, registry.datasets["phantom"], QUIET)
    folds = split(config, data)
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(), folds)
    want = sorted((u["stage"], u["key"], json.dumps(u["description"], sort_keys=True))
                  for u in golden["units"])
    assert plan_units(plan) == want


@pytest.fixture
def local_ray():
    """A local Ray of 2 CPUs for one test (any Ray left by an earlier test is shut down)."""
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        ray.shutdown()

    def start(**kwargs):
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, **kwargs)
        return ray

    yield start
    ray.shutdown()


def _rows(result):
    return {r["method"]: (r["thresholds"], r["metrics"]) for r in result}


@pytest.mark.slow
def test_every_executor_gives_the_same_numbers_and_records_no_execution(tmp_path, local_ray):
    """local, processes (2 CPU workers) and ray (a local cluster of 2 CPUs): bit-identical
    rows; the executor and its devices appear in no row's config and no manifest name."""
    registry = wsss_bench.load_registry()
    results, manifests = {}, {}
    ray = local_ray()
    try:
        for name, extra in (("local", {}), ("processes", {"devices": ("cpu", "cpu")}),
                            ("ray", {"executor": "ray"})):
            work = tmp_path / name
            config = RunConfig(**{**SMALL, "ensembles": (), "cams": ("gradcam", "layercam")},
                               backbones=(FIRST,), **extra, workdir=str(work))
            rows, _ = run(config, registry, QUIET)
            results[name] = rows
            assert len(units(work, "train")) == 2 and len(units(work, "cams")) == 4
            manifests[name] = [p.name for p in (work / "manifests").glob("*.json")]
            made = {json.loads(p.read_text())["pid"]
                    for p in (work / "units" / "train").glob("*/unit.json")}
            assert made == {os.getpid()}  # workers return results; the driver stores them
    finally:
        ray.shutdown()
    assert _rows(results["local"]) == _rows(results["processes"]) == _rows(results["ray"])
    assert manifests["local"] == manifests["processes"] == manifests["ray"]
    configs = [r["run"]["config"] for rows in results.values() for r in rows]
    assert all(c == configs[0] for c in configs)
    assert not {"executor", "devices", "gpus", "workdir", "workers"} & set(configs[0])


def test_execution_settings_are_not_settings():
    base = settings_of(RunConfig())
    for change in ({"gpus": 2}, {"devices": ("cpu", "cpu")}, {"executor": "ray"},
                   {"workers": 3}, {"workdir": "elsewhere"}, {"force": ("train",)}):
        assert settings_of(RunConfig(**change)) == base, change
    assert settings_of(RunConfig(epochs=5)) != base
    with_ray = RunConfig(executor="ray", options={"ray": {"address": "auto"}})
    assert settings_of(with_ray, ("ray",))["options"] == {}


def test_gpus_is_the_processes_executor_and_checks_the_machine(tmp_path):
    import torch

    registry = wsss_bench.load_registry()
    plan = Plan.build(RunConfig(devices=("cpu", "cpu"), workdir=str(tmp_path)), registry)
    assert plan.executor == "processes" and plan.devices == ("cpu", "cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(UsageError, match="--gpus 2: this machine has"):
            Plan.build(RunConfig(gpus=2, workdir=str(tmp_path)), registry)


def test_unknown_executor_and_options_are_one_line_errors(tmp_path):
    registry = wsss_bench.load_registry()
    with pytest.raises(UsageError, match="unknown executor 'slurm'"):
        Plan.build(RunConfig(executor="slurm"), registry)
    with pytest.raises(UsageError, match="ray"):
        Plan.build(RunConfig(executor="ray", options={"ray": {"no_such": "1"}}), registry)
    with pytest.raises(UsageError, match="uses no plugin called 'ray'"):
        Plan.build(RunConfig(options={"ray": {"address": "auto"}}), registry)


def test_ray_missing_is_one_line_naming_the_extra(monkeypatch):
    from wsss_bench.executors.ray import RayExecutor

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(UsageError, match=r"wsss-bench\[ray\]"):
        list(RayExecutor().run(len, [KitUnit(1)], KitContext()))


# --- Ray: a task whose worker dies is retried; a unit that always fails ends the run ----------
def _dies_once(unit: KitUnit, context: KitContext) -> int:
    marker = Path(os.environ["WSSS_BENCH_TEST_MARKER"]) / f"{unit.n}"
    if unit.n == 2 and not marker.exists():
        marker.write_text("died")
        os._exit(1)  # the worker process dies: Ray retries the task elsewhere
    return unit.n * 10


@pytest.mark.slow
def test_ray_retries_a_task_whose_worker_died_and_names_a_unit_that_always_fails(tmp_path,
                                                                               local_ray):
    from ray import cloudpickle

    from wsss_bench.executors.ray import RayExecutor

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray = local_ray(runtime_env={"env_vars": {"WSSS_BENCH_TEST_MARKER": str(tmp_path)}})
    try:
        units_ = [KitUnit(n) for n in range(4)]
        got = dict((u.n, r) for u, r in RayExecutor().run(_dies_once, units_, KitContext()))
        assert got == {0: 0, 1: 10, 2: 20, 3: 30}
        assert (tmp_path / "2").read_text() == "died"  # it did die once, and was retried

        from wsss_bench.testing import kit_fail

        finished = []
        with pytest.raises(UnitFailed) as failed:
            for _unit, result in RayExecutor().run(kit_fail, units_, KitContext()):
                finished.append(result)
        assert sorted(finished) == [0, 1, 2]  # the other units finished and were yielded
        message = str(failed.value)
        assert message.startswith("unit kit unit 3 failed: RuntimeError: kit unit 3 fails")
        assert "\n" not in message
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_unit_that_fails_for_good_keeps_the_finished_units(tmp_path, capsys):
    """A corrupt initial-weights file for one backbone: its training fails in the worker;
    the other backbone's units are made and its rows published, the failed units (and the
    CAMs and evaluations that need them) are listed one line each, and the run exits 1."""
    from tests.test_cli import run_main

    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "test_byobnet.pth").write_bytes(b"not a checkpoint")
    torch_save_test_resnet(weights / "test_resnet.pth")
    work = tmp_path / "w"
    code = run_main(["run", "-o", "phantom.n_cases=6", "-o", "phantom.n_slices=4", "-o",
                     "phantom.size=32", "--folds", "2", "--epochs", "1", "--batch-size", "8",
                     "-q", "--ensembles", "",
                     "--weights", str(weights), "--workdir", str(work), "--leaderboard-dir",
                     str(tmp_path / "b"), "--devices", "cpu,cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    failed = [line for line in err if line.startswith("wsss-bench run: failed: ")]
    trains = [line for line in failed if f"train {SECOND} fold " in line]
    assert len(trains) == 2 and all("UnpicklingError" in line for line in trains), err
    assert all("nothing was stored for it" in line for line in trains)
    assert sum("skipped, it needs CAMs that failed" in line for line in failed) == 2
    assert err[-1].startswith("wsss-bench run: error: 4 unit(s) failed or were skipped")
    assert "Traceback" not in "\n".join(err)
    assert len(units(work, "train")) == 2  # both of the first backbone's units were kept
    board = json.loads((tmp_path / "b" / "phantom.json").read_text())
    methods = {r["method"] for r in board["rows"] if r.get("source") == "measured"}
    assert methods == {"Empty", f"{FIRST} / gradcam / none"}  # the second gets no row


def torch_save_test_resnet(path: Path) -> None:
    import timm
    import torch

    torch.save(timm.create_model("test_resnet", pretrained=False).state_dict(), path)


# --- a third-party executor ---------------------------------------------------------------
def test_third_party_executor_is_found_and_runs_a_phantom_job(use_dist, tmp_path):
    use_dist("executor")
    registry = wsss_bench.load_registry()
    assert registry.executors.get_entry("reverse").source == "wsss-bench-reverse-executor"
    log = tmp_path / "order.txt"
    options = {**SMALL["options"], "reverse": {"log": str(log)}}
    config = RunConfig(**{**SMALL, "ensembles": (), "options": options}, backbones=("resnet18",),
                       executor="reverse", workdir=str(tmp_path / "w"),
                       leaderboard_dir=str(tmp_path / "b"))
    board = run_and_publish(config, registry, QUIET)
    ran = log.read_text().splitlines()
    assert ran[0].startswith("train resnet18 fold 2/2") and ran[1].startswith(
        "train resnet18 fold 1/2")
    assert {r["method"] for r in board["rows"] if r["source"] == "measured"} == {
        "Empty", "resnet18 / gradcam / none"}
    local = RunConfig(**{**SMALL, "ensembles": ()}, backbones=("resnet18",),
                      workdir=str(tmp_path / "w2"), leaderboard_dir=str(tmp_path / "b2"))
    run_and_publish(local, registry, QUIET)
    assert measured(tmp_path / "b") == measured(tmp_path / "b2")


def test_devices_must_exist_and_share_one_type(tmp_path):
    registry = wsss_bench.load_registry()
    for devices, message in ((("cpu", "cuda:0"), "one type"), (("cpu", "bogus"), "--devices")):
        with pytest.raises(UsageError, match=message):
            Plan.build(RunConfig(devices=devices, workdir=str(tmp_path)), registry)


def test_an_explicit_output_stride_a_backbone_lacks_fails_before_any_work(tmp_path):
    with pytest.raises(UsageError, match="backbone 'vgg19' declares only"):
        Plan.build(RunConfig(backbones=("resnet18", "vgg19"), output_stride="16",
                             workdir=str(tmp_path)), wsss_bench.load_registry())


def test_preset_overrides_ignore_every_execution_setting():
    from wsss_bench.core import presets

    registry = wsss_bench.load_registry()
    values = {k: tuple(v) if isinstance(v, list) else v
              for k, v in presets.preset("paper", "decathlon").items() if k != "options"}
    options = presets.options_for_used(presets.preset("paper", "decathlon").get("options"),
                                       RunConfig(**values, dataset="decathlon"))
    for execution in ({}, {"executor": "processes", "workers": 3}, {"devices": ("cpu", "cpu")}):
        config = RunConfig(**values, **execution, dataset="decathlon", preset="paper",
                           options=options)
        assert presets.overrides(config, registry) == [], execution


def test_an_executor_that_drops_units_is_an_error_not_a_wrong_board(tmp_path):
    from dataclasses import dataclass

    @dataclass(frozen=True)
    class Dropper:
        name: str = "dropper"
        description: str = "yields nothing"

        def run(self, stage, units, context):
            return iter(())

    registry = wsss_bench.load_registry()
    registry.add("executors", Dropper(), "test", "tests")
    config = RunConfig(**{**SMALL, "ensembles": ()}, backbones=("resnet18",),
                       executor="dropper", workdir=str(tmp_path / "w"),
                       leaderboard_dir=str(tmp_path / "b"))
    with pytest.raises(UsageError, match="executor 'dropper' returned 0 of 2 train units"):
        run_and_publish(config, registry, QUIET)
    assert not (tmp_path / "b" / "phantom.json").exists()
