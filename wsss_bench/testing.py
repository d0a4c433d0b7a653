"""The plugin contract test kit: check one plugin object (or every installed one) against its
contract in :mod:`wsss_bench.contracts`.

(Over 300 lines on purpose: one check per plugin kind, shipped as one importable module.)

For plugin authors, in their own repository::

    from wsss_bench.testing import check_cam, check_all

    def test_my_cam():
        check_cam(MyCam())          # AssertionError naming the plugin and what is wrong

    def test_everything_installed():
        check_all(names=["my-cam"])

or run ``pytest --wsss-bench-contracts`` (the pytest plugin :mod:`wsss_bench.pytest_plugin`):
one test per installed plugin object. Every check is small, random and on the CPU.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from torch import nn

from wsss_bench import contracts
from wsss_bench.contracts import (
    KINDS,
    PROTOCOLS,
    SINGULAR,
    SLICE_RULES,
    Case,
    CaseFiles,
    FileDataset,
    declared_problems,
    pixel_rule_count,
)
from wsss_bench.options import option_problems


class _Check:
    """Asserts about one plugin object; every message starts with what the object is."""

    def __init__(self, kind: str, obj: Any) -> None:
        self.kind, self.obj = kind, obj
        self.label = f"{SINGULAR[kind]} {getattr(obj, 'name', None)!r} ({type(obj).__qualname__})"

    def that(self, ok: Any, message: str) -> None:
        if not ok:
            raise AssertionError(f"{self.label}: {message}")

    def call(self, what: str, fn: Callable[[], Any]) -> Any:
        """``fn()``; an exception becomes an AssertionError naming the plugin and ``what``."""
        try:
            return fn()
        except AssertionError:
            raise
        except Exception as exc:
            raise AssertionError(f"{self.label}: {what} raised {type(exc).__name__}: {exc}"
                                 ) from exc

    def basics(self) -> None:
        name, description = getattr(self.obj, "name", None), getattr(self.obj, "description", None)
        self.that(isinstance(name, str) and name, "`name` must be a non-empty str")
        self.that(isinstance(description, str) and description.strip(),
                  "`description` must be a non-empty str")
        problems = declared_problems(self.kind, self.obj)
        self.that(not problems, "; ".join(problems))
        problems = option_problems(self.obj, self.kind)  # every option states its help
        self.that(not problems, "; ".join(problems))
        self.that(isinstance(self.obj, PROTOCOLS[self.kind]),
                  f"does not have the methods of wsss_bench.contracts."
                  f"{PROTOCOLS[self.kind].__name__}")


def _state(obj: Any) -> Any:
    """A comparable snapshot of a plugin object (registered objects must never change)."""
    if hasattr(obj, "__dict__"):
        return {k: repr(v) for k, v in vars(obj).items()}
    return repr(obj)


# --- datasets -------------------------------------------------------------------------------

def check_case(obj: Any, case: Any) -> None:
    """One case of dataset ``obj``: float32 finite images [S,C,H,W], bool masks [S,H,W], a
    CAM view exactly when ``obj.cam_view`` says so."""
    c = _Check("datasets", obj)
    c.that(isinstance(case, Case), f"yielded {type(case).__name__}, not a contracts.Case")
    where = f"case {case.case_id!r}"
    images, masks = case.images, case.masks
    c.that(isinstance(images, np.ndarray) and images.dtype == np.float32,
           f"{where}: images must be a float32 array, got {getattr(images, 'dtype', images)}")
    c.that(np.isfinite(images).all(), f"{where}: images hold NaN or Inf")
    c.that(isinstance(masks, np.ndarray) and masks.dtype == np.bool_,
           f"{where}: masks must be a bool array, got {getattr(masks, 'dtype', masks)}")
    c.that(len(images) > 0, f"{where}: no slices")
    c.that((case.cam_images is not None) == obj.cam_view,
           f"{where}: cam_view is {obj.cam_view} but the case "
           f"{'has a' if case.cam_images is not None else 'has no'} CAM view (cam_images)")
    if case.cam_images is not None:
        view = case.cam_images
        c.that(view.dtype == np.float32 and np.isfinite(view).all(),
               f"{where}: cam_images must be finite float32")
    problem = contracts.case_problem(case)
    c.that(not problem, f"{problem} (the run checks every case so)")


def check_dataset(obj: Any, data_dir: Path | None = None, max_cases: int = 2,
                  scratch_dir: Path | None = None) -> None:
    """A dataset: declared attributes, and ``max_cases`` of its cases (generated datasets;
    a file dataset when ``data_dir`` is given, see :func:`check_file_dataset`). A file dataset
    must pickle; with ``scratch_dir`` (an empty folder) a missing data folder must be a one-line
    UsageError naming it; it needs an https archive with an md5 or a ``download_note``."""
    c = _Check("datasets", obj)
    c.basics()
    if obj.reads_files:
        c.that(isinstance(obj, FileDataset), "reads_files = True but it is not a FileDataset")
        copied = c.call("pickling", lambda: pickle.loads(pickle.dumps(obj)))
        c.that(copied == obj, "a pickled copy is not equal to it (workers decode copies)")
        archive = obj.archive
        if archive is not None:
            c.that(archive.url.startswith("https://") and len(archive.md5) == 32,
                   f"archive needs an https URL and a 32-digit md5, got {archive}")
        else:
            c.that(obj.download_note.strip(), "archive is None: say how to get the data in "
                                              "download_note")
        if scratch_dir is not None:
            _check_missing_data(c, obj, Path(scratch_dir))
        if data_dir is not None:
            check_file_dataset(obj, data_dir, max_cases)
        return
    needs = obj.needs_data_dir
    c.that(not needs or data_dir is not None, "needs_data_dir: pass data_dir to check it")
    seen = 0
    for case in c.call("cases()", lambda: iter(obj.cases(data_dir))):
        check_case(obj, case)
        seen += 1
        if seen >= max_cases:
            break
    c.that(seen > 0, "cases() yielded no case")


def _check_missing_data(c: _Check, obj: Any, scratch: Path) -> None:
    from wsss_bench.errors import UsageError

    for root in (scratch / "missing", scratch):
        try:
            obj.sources(root)
        except UsageError as exc:
            c.that("\n" not in str(exc) and str(root) in str(exc),
                   f"sources({root}) must raise a one-line UsageError naming the folder, "
                   f"got {exc!r}")
        except Exception as exc:
            raise AssertionError(f"{c.label}: sources({root}) of a folder without data raised "
                                 f"{type(exc).__name__} ({exc}); raise "
                                 f"wsss_bench.volumes.MissingData (a UsageError)") from exc
        else:
            raise AssertionError(f"{c.label}: sources({root}) of a folder without data "
                                 f"returned instead of raising MissingData")


def check_file_dataset(obj: Any, data_dir: Path, max_cases: int = 1) -> None:
    """A file dataset on real data in ``data_dir``: ``sources`` lists CaseFiles of existing
    files, ``load`` decodes the first ``max_cases`` of them into valid cases."""
    c = _Check("datasets", obj)
    c.basics()
    c.that(obj.reads_files, "reads_files is False: use check_dataset")
    sources = c.call(f"sources({data_dir})", lambda: obj.sources(Path(data_dir)))
    c.that(isinstance(sources, list) and sources, "sources() must return a non-empty list")
    for source in sources:
        c.that(isinstance(source, CaseFiles), f"sources() listed {source!r}, not a CaseFiles")
        for role, path in source.files.items():
            c.that(Path(path).is_file(), f"case {source.case_id!r}: {role} file {path} missing")
    for source in sources[:max_cases]:
        case = c.call(f"load({source.case_id!r})", lambda s=source: obj.load(s))
        c.that(case.case_id == source.case_id,
               f"load() of {source.case_id!r} returned case {case.case_id!r}")
        check_case(obj, case)


# --- backbones ------------------------------------------------------------------------------

def _calls(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    seen: list[Any] = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            logits = model(x)
    finally:
        handle.remove()
    return logits, len(seen)


def check_backbone(obj: Any, in_chans: int = 1, size: int = 64, real: str = "32") -> None:
    """A backbone: ``build`` gives a module with 2 finite logits per image and
    ``target_layer`` a submodule run once per forward pass, at every declared output stride.
    ``real`` says which builds run on the CPU: ``"32"`` (default; the other strides on the
    meta device: shapes only, no memory or compute), ``"all"`` or ``"none"`` (all on meta:
    fast for large models)."""
    if real not in ("32", "all", "none"):
        raise ValueError(f"real must be '32', 'all' or 'none', got {real!r}")
    c = _Check("backbones", obj)
    c.basics()
    for stride in obj.output_strides:
        on_cpu = real == "all" or (real == "32" and stride == 32)
        device = "cpu" if on_cpu else "meta"
        kwargs = {} if stride == 32 else {"output_stride": stride}
        state = torch.random.get_rng_state()
        with torch.device(device):
            model = c.call(f"build(output_stride={stride})",
                           lambda k=kwargs: obj.build(in_chans=in_chans, num_classes=2,
                                                      pretrained=False, **k))
            x = torch.rand(2, in_chans, size, size)
        torch.random.set_rng_state(state)
        c.that(isinstance(model, nn.Module), f"build() returned {type(model).__name__}")
        model.eval()
        layer = c.call("target_layer()", lambda m=model: obj.target_layer(m))
        c.that(any(layer is m for m in model.modules()),
               "target_layer(model) must be a submodule of the model")
        logits, calls = c.call(f"a forward pass at output stride {stride}",
                               lambda m=model, t=layer, i=x: _calls(m, t, i))
        c.that(tuple(logits.shape) == (2, 2), f"logits shape {tuple(logits.shape)}, not (2, 2)")
        c.that(device == "meta" or torch.isfinite(logits).all(), "logits hold NaN or Inf")
        c.that(calls == 1, f"the target layer ran {calls} times in one forward pass, not once")


# --- CAM methods ----------------------------------------------------------------------------

class TinyNet(nn.Module):
    """A small CNN with a conv target layer (``.target``) and a spatially varying head;
    ``linear_head``: global average pooling and the linear classifier right after the target
    layer instead (a ResNet's head, the only one the original CAM is defined for)."""

    def __init__(self, in_chans: int = 1, linear_head: bool = False) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(in_chans, 4, 3, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 6, 3, padding=1, stride=2), nn.ReLU())
        self.target = nn.Conv2d(6, 8, 3, padding=1)
        if linear_head:
            self.head: nn.Module = nn.Identity()
            self.fc = nn.Linear(8, 2)
        else:
            self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(8, 4, 1), nn.ReLU())
            self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.head(self.target(self.features(x))).mean(dim=(2, 3)))


def tiny_net(seed: int = 0, flat: bool = False, linear_head: bool = False) -> TinyNet:
    """A seeded TinyNet in eval mode; ``flat``: its target layer outputs a constant."""
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = TinyNet(linear_head=linear_head).eval()
    finally:
        torch.random.set_rng_state(generator_state)
    if flat:
        with torch.no_grad():
            model.target.weight.zero_()
            model.target.bias.fill_(0.3)
    return model


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               for m in model.modules())


def cam_targets(b: int) -> dict[str, torch.Tensor | None]:
    """Every target the core passes for a batch of ``b``, and a mixed one."""
    return {"None": None, "ones": torch.ones(b, dtype=torch.long),
            "mixed": torch.arange(b, dtype=torch.long) % 2}


def check_cam(obj: Any, b: int = 4, h: int = 20, w: int = 28) -> None:
    """A CAM method on :func:`tiny_net`, with every target (None, all ones, mixed): float
    [B,H,W] at input resolution, finite, in [0, 1], no hooks or ``.grad`` left, grad mode and
    parameters unchanged; None means each sample's predicted class; samples are independent;
    a flat activation gives all zeros.

    Both heads are checked: the spatially varying one and ``linear_head`` (pooling + linear
    right after the target layer). Every method must run on the linear head; a method defined
    only for it (the original CAM) may refuse the other with a ValueError, leaving the model
    clean."""
    c = _Check("cams", obj)
    c.basics()
    x = torch.rand(b, 1, h, w, generator=torch.Generator().manual_seed(1))
    for linear_head in (False, True):
        _check_cam_on(c, obj, x, linear_head)


def _check_cam_on(c: _Check, obj: Any, x: torch.Tensor, linear_head: bool) -> None:
    b, _, h, w = x.shape
    model = tiny_net(linear_head=linear_head)
    head = "linear head" if linear_head else "spatial head"
    before = copy.deepcopy(model.state_dict())
    maps: dict[str, torch.Tensor] = {}
    for label, target in cam_targets(b).items():
        where = f"cam(target={label}, {head})"
        if not linear_head and not maps:  # the first call may refuse this head
            try:
                cam = obj.cam(model, model.target, x, target)
            except ValueError as exc:
                c.that(str(exc).strip() != "" and "\n" not in str(exc).strip(),
                       f"{where} refused the head without a one-line message: {exc!r}")
                c.that(all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
                       f"{where} refused the head but changed the model")
                c.that(_hooks(model) == 0, f"{where} refused the head but left hooks")
                c.that(all(p.grad is None for p in model.parameters()),
                       f"{where} refused the head but left a parameter .grad")
                c.that(torch.is_grad_enabled(), f"{where} did not restore grad mode")
                return
            except Exception as exc:
                raise AssertionError(f"{c.label}: {where} raised {type(exc).__name__}: {exc}"
                                     ) from exc
        else:
            cam = c.call(where, lambda t=target: obj.cam(model, model.target, x, t))
        c.that(isinstance(cam, torch.Tensor), f"{where} returned {type(cam).__name__}")
        c.that(tuple(cam.shape) == (b, h, w),
               f"{where} has shape {tuple(cam.shape)}, expected {(b, h, w)} ([B,H,W])")
        c.that(cam.is_floating_point(), f"{where} has dtype {cam.dtype}, not a float")
        c.that(torch.isfinite(cam).all(), f"{where} holds NaN or Inf")
        c.that(cam.min() >= 0 and cam.max() <= 1,
               f"{where} is outside [0, 1] ({float(cam.min()):g} .. {float(cam.max()):g})")
        problem = contracts.cam_output_problem(cam, tuple(x.shape))
        c.that(not problem, f"{where} {problem} (the run checks every output so)")
        c.that(_hooks(model) == 0, f"{where} left hooks on the model")
        c.that(all(p.grad is None for p in model.parameters()),
               f"{where} left a parameter .grad")
        c.that(torch.is_grad_enabled(), f"{where} did not restore grad mode")
        maps[label] = cam
    c.that(all(torch.equal(before[k], v) for k, v in model.state_dict().items()),
           f"cam() changed the model's parameters or buffers ({head})")
    with torch.no_grad():
        predicted = model(x).argmax(dim=1)
    by_class = obj.cam(model, model.target, x, predicted)
    c.that(torch.allclose(maps["None"], by_class, atol=1e-5),
           f"target None must mean each sample's predicted class ({head})")
    mixed = cam_targets(b)["mixed"]
    single = torch.cat([obj.cam(model, model.target, x[i : i + 1], mixed[i : i + 1])
                        for i in range(b)])
    c.that(torch.allclose(maps["mixed"], single, atol=1e-5),
           f"a sample's map depends on the rest of its batch ({head})")
    flat = tiny_net(flat=True, linear_head=linear_head)
    flat_map = c.call(f"cam() of a flat activation ({head})",
                      lambda: obj.cam(flat, flat.target, torch.full((2, 1, 16, 16), 0.5)))
    c.that(torch.isfinite(flat_map).all() and not flat_map.any(),
           f"a flat activation must give an all-zero map, never NaN ({head})")


# --- ensembles ------------------------------------------------------------------------------

def check_ensemble(obj: Any, b: int = 3, h: int = 6, w: int = 5) -> None:
    """An ensemble: ``combine`` of bool[M,B,H,W] (M = 2, 3) is bool[B,H,W], leaves its input
    alone and agrees with the declared ``pixel_rule``/``slice_rule``; ``fuse`` (when it
    ``fuses``) gives finite float[B,H,W]."""
    c = _Check("ensembles", obj)
    c.basics()
    rng = np.random.default_rng(0)
    for m in (2, 3):
        masks = rng.random((m, b, h, w)) < 0.4
        original = masks.copy()
        out = c.call(f"combine(bool{list(masks.shape)})", lambda x=masks: obj.combine(x))
        raw, out = out, np.asarray(out)
        c.that(out.dtype == np.bool_, f"combine() returned dtype {out.dtype}, not bool")
        c.that(out.shape == (b, h, w), f"combine() returned shape {out.shape}, expected "
                                       f"{(b, h, w)} ([B,H,W])")
        problem = contracts.mask_output_problem(raw, (b, h, w), "combine()")
        c.that(not problem, f"{problem} (the run checks every output so)")
        c.that(np.array_equal(masks, original), "combine() changed its input")
        if obj.pixel_rule is not None:
            want = masks.sum(axis=0) >= pixel_rule_count(obj.pixel_rule, m)
            c.that(np.array_equal(out, want),
                   f"combine() disagrees with its pixel_rule {obj.pixel_rule!r} (M={m})")
        if obj.slice_rule is not None:
            assert obj.slice_rule in SLICE_RULES
            area = masks.sum(axis=(2, 3))
            pick = area.argmax(axis=0) if obj.slice_rule == "largest" else area.argmin(axis=0)
            want = masks[pick, np.arange(b)]
            c.that(np.array_equal(out, want),
                   f"combine() disagrees with its slice_rule {obj.slice_rule!r} (M={m})")
        if obj.fuses:
            cams = rng.random((m, b, h, w))
            fused = np.asarray(c.call("fuse()", lambda x=cams: obj.fuse(x)))
            c.that(fused.shape == (b, h, w) and np.issubdtype(fused.dtype, np.floating),
                   f"fuse() must return float[B,H,W], got {fused.dtype}{list(fused.shape)}")
            c.that(np.isfinite(fused).all(), "fuse() returned NaN or Inf")


# --- filters --------------------------------------------------------------------------------

def check_filter(obj: Any, shapes: Iterable[tuple[int, int, int, int]] = ((3, 1, 16, 24),
                                                                          (2, 2, 17, 9))
                 ) -> None:
    """A filter: ``region`` of float32[B,C,H,W] is bool[B,H,W] and leaves its input alone; a
    ``learned`` filter's ``fit`` returns a new filter and leaves itself unchanged."""
    c = _Check("filters", obj)
    c.basics()
    for i, (b, ch, h, w) in enumerate(shapes):
        rng = np.random.default_rng(i)
        images = rng.random((b, ch, h, w)).astype(np.float32)
        images[rng.random(images.shape) < 0.3] = 0.0
        original = images.copy()
        fitted = obj
        if obj.learned:
            masks = rng.random((b, h, w)) > 0.8
            before = _state(obj)
            fitted = c.call("fit()", lambda x=images, y=masks: obj.fit(x, y))
            c.that(isinstance(fitted, PROTOCOLS["filters"]),
                   f"fit() returned {type(fitted).__name__}, not a filter")
            c.that(_state(obj) == before, "fit() changed the registered filter; return a new "
                                          "one")
        region = c.call(f"region(float32{[b, ch, h, w]})",
                        lambda f=fitted, x=images: f.region(x))
        raw, region = region, np.asarray(region)
        c.that(region.dtype == np.bool_, f"region() returned dtype {region.dtype}, not bool")
        c.that(region.shape == (b, h, w), f"region() returned shape {region.shape}, expected "
                                          f"{(b, h, w)} ([B,H,W])")
        problem = contracts.mask_output_problem(raw, (b, h, w), "region()")
        c.that(not problem, f"{problem} (the run checks every output so)")
        c.that(np.array_equal(images, original), "region() changed its input")


# --- any kind, every installed object -------------------------------------------------------

@dataclass(frozen=True)
class KitUnit:
    """A unit of the executor check: picklable, with the methods units have."""

    n: int

    def describe(self) -> str:
        return f"kit unit {self.n}"

    def portable(self) -> KitUnit:
        return self


@dataclass(frozen=True)
class KitContext:
    """A context of the executor check: picklable, with what executors may use."""

    device: str = "cpu"
    threads: int = 1
    plan: Any = field(default_factory=lambda: SimpleNamespace(devices=()))

    def on(self, device: str) -> KitContext:
        return replace(self, device=device)

    def portable(self, units: Any) -> KitContext:
        return self


def kit_square(unit: KitUnit, context: KitContext) -> tuple[int, str]:
    """The executor check's stage: the unit's number squared, and where it ran."""
    return unit.n * unit.n, context.device


def kit_fail(unit: KitUnit, context: KitContext) -> int:
    """A stage whose unit 3 always fails."""
    if unit.n == 3:
        raise RuntimeError("kit unit 3 fails on purpose")
    return unit.n


def check_executor(obj: Any, trial: bool = True) -> None:
    """An executor: its attributes, then (``trial``) a stage over 5 units that must yield
    every unit exactly once with its own result, and a failing unit that must end the run
    with UnitFailed naming it, after every other unit finished and was yielded. An executor
    that cannot run here (its trial raises a UsageError, e.g. Ray is not installed) is checked
    for its attributes only."""
    c = _Check("executors", obj)
    c.basics()
    if not trial:
        return
    import sys

    from wsss_bench.errors import UsageError

    ray = sys.modules.get("ray")
    ray_was_running = bool(ray and ray.is_initialized())
    units = [KitUnit(n) for n in range(5)]
    try:
        got = list(obj.run(kit_square, units, KitContext()))
    except UsageError:
        return  # it cannot run here (e.g. an optional dependency is missing): attributes only
    except Exception as exc:  # noqa: BLE001
        c.that(False, f"run(stage, units, context) raised {type(exc).__name__}: {exc}")
    try:
        _trial(c, obj, units, got)
    finally:
        ray = sys.modules.get("ray")
        if ray and ray.is_initialized() and not ray_was_running:
            ray.shutdown()  # the check started it: leave no cluster behind


def _trial(c: _Check, obj: Any, units: list[KitUnit], got: list[tuple[Any, Any]]) -> None:
    from wsss_bench.executors import UnitFailed

    c.that(sorted(u.n for u, _ in got) == list(range(5)),
           f"yielded units {[u for u, _ in got]}, not each of the 5 units once")
    c.that(all(r == (u.n * u.n, "cpu") for u, r in got),
           "yielded a result that is not its unit's stage(unit, context)")
    finished: list[int] = []
    try:
        for unit, _ in obj.run(kit_fail, units, KitContext()):
            finished.append(unit.n)
    except UnitFailed as exc:
        c.that("kit unit 3" in str(exc), f"UnitFailed does not name the unit: {exc}")
        c.that(sorted(finished) == [0, 1, 2, 4],
               f"before UnitFailed it yielded units {sorted(finished)}, not every other unit")
    except Exception as exc:  # noqa: BLE001
        c.that(False, f"a failing unit raised {type(exc).__name__}, not UnitFailed: {exc}")
    else:
        c.that(False, "a unit whose stage raised did not end the run with UnitFailed")


# --- methods --------------------------------------------------------------------------------

def method_slices(n: int = 8, in_chans: int = 2, size: int = 32, seed: int = 0
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` small slices (float32[n,C,size,size]) with image labels (int64[n]): noise, and a
    bright square in every channel of the odd-numbered (positive) slices."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0.0, 0.3, size=(n, in_chans, size, size)).astype(np.float32)
    labels = (np.arange(n) % 2).astype(np.int64)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(2, size // 2, size=2)
        images[i, :, y : y + size // 4, x : x + size // 4] += 0.7
    return images, labels


def check_method(obj: Any, n: int = 8, size: int = 32, batch_size: int = 4) -> None:
    """An end-to-end method trained for one epoch on :func:`method_slices`: ``outputs`` names
    its maps; ``train`` returns a model and reports one finite loss per epoch through
    ``context.progress``; ``maps`` gives [K,B,H,W] in [0, 1] and logits [B,2] (samples
    independent, no hooks left); the stored state dict loads into ``build`` and gives the same
    maps; the same seed trains the same model; fewer channels than ``min_channels`` is a
    ValueError; a CAM head's forward gives logits [B,2] and its target layer is a submodule."""
    from wsss_bench.pipeline.methods import method_context

    c = _Check("methods", obj)
    c.basics()
    before = _state(obj)
    in_chans = max(2, int(obj.min_channels))
    names = c.call("outputs()", lambda: obj.outputs(in_chans))
    c.that(isinstance(names, tuple) and names and all(isinstance(o, str) and o for o in names)
           and len(set(names)) == len(names),
           f"outputs({in_chans}) must be a non-empty tuple of distinct names, got {names!r}")
    images, labels = method_slices(n, in_chans, size)
    seen: list[tuple[int, dict[str, float]]] = []

    def trained(seed: int) -> nn.Module:
        ctx = method_context(seed=seed, epochs=1, batch_size=batch_size,
                             progress=lambda e, losses: seen.append((e, dict(losses))))
        model = c.call("train()", lambda: obj.train(images.copy(), labels.copy(), ctx))
        c.that(isinstance(model, nn.Module), f"train() returned a {type(model).__name__}, "
                                             f"not an nn.Module")
        return model

    model = trained(0)
    c.that(len(seen) == 1 and np.isfinite(seen[0][1].get("total", np.nan)),
           f"train() for 1 epoch must call context.progress once with a finite 'total', "
           f"got {seen}")
    x = torch.from_numpy(images[:3].copy())
    hooks = _hooks(model)
    out = c.call("maps()", lambda: obj.maps(model.eval(), x))
    problem = contracts.method_maps_problem(out, tuple(x.shape), len(names))
    c.that(not problem, problem)
    c.that(_hooks(model) == hooks, "maps() left hooks on the model")
    alone = c.call("maps()", lambda: obj.maps(model, x[1:2]))[0]
    c.that(torch.allclose(alone.float(), out[0][:, 1:2].float(), atol=1e-4),
           "a sample's maps depend on the other samples of its batch")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rebuilt = c.call("build()", lambda: obj.build(in_chans, method_context()))
    c.call("load_state_dict(strict)", lambda: rebuilt.load_state_dict(state))
    again = c.call("maps()", lambda: obj.maps(rebuilt.eval(), x))
    c.that(torch.allclose(again[0].float(), out[0].float(), atol=1e-5),
           "a model rebuilt with build() and the trained state dict gives other maps")
    same = c.call("maps()", lambda: obj.maps(trained(0).eval(), x))
    c.that(torch.equal(same[0], out[0]), "training twice with the same seed gives other maps")
    if obj.min_channels > 1:
        few = np.ascontiguousarray(images[:, : obj.min_channels - 1])
        for what, call in (("build()", lambda: obj.build(few.shape[1], method_context())),
                           ("train()", lambda: obj.train(few, labels, method_context()))):
            try:
                call()
            except ValueError as exc:
                c.that("\n" not in str(exc), f"{what}: the error for too few channels must "
                                              f"be one line")
            except Exception as exc:  # noqa: BLE001 (named in the failure)
                raise AssertionError(f"{c.label}: {what} with {few.shape[1]} channel(s) raised "
                                     f"{type(exc).__name__}, not ValueError") from exc
            else:
                raise AssertionError(f"{c.label}: {what} with {few.shape[1]} channel(s) must "
                                     f"raise ValueError (min_channels = {obj.min_channels})")
    if obj.cam_head:
        logits = c.call("forward()", lambda: model(x))
        problem = contracts.logits_problem(logits, len(x), 2)
        c.that(not problem, f"cam_head: {problem}")
        layer = c.call("target_layer()", lambda: obj.target_layer(model))
        c.that(any(layer is m for m in model.modules()),
               "target_layer() must return a submodule of the model")
    c.that(_state(obj) == before, "training changed the registered object")


CHECKS: dict[str, Callable[..., None]] = {
    "datasets": check_dataset, "backbones": check_backbone, "cams": check_cam,
    "ensembles": check_ensemble, "filters": check_filter, "executors": check_executor,
    "methods": check_method,
}


def check_plugin(kind: str, obj: Any, **options: Any) -> None:
    """The check of ``kind`` (one of :data:`wsss_bench.contracts.KINDS`) on ``obj``."""
    if kind not in CHECKS:
        raise ValueError(f"unknown plugin kind {kind!r}; one of {', '.join(KINDS)}")
    CHECKS[kind](obj, **options)


def contract_cases(registry: Any = None, names: Iterable[str] | None = None
                   ) -> list[tuple[str, str]]:
    """``(kind, name)`` of every registered object (families are not objects; their members
    are checked by name), or of those called ``names``."""
    from wsss_bench.registry import load_registry

    registry = registry or load_registry()
    wanted = None if names is None else set(names)
    cases = [(kind, name) for kind in KINDS for name in registry.kind(kind)
             if wanted is None or name in wanted]
    if wanted is not None:
        for kind in KINDS:  # names resolved through families (timm:<model>)
            cases += [(kind, n) for n in sorted(wanted) if n not in registry.kind(kind)
                      and _resolves(registry.kind(kind), n)]
        found = {name for _, name in cases}
        missing = sorted(wanted - found)
        if missing:
            raise AssertionError(f"no installed plugin object called {', '.join(missing)}")
    return cases


def _resolves(table: Any, name: str) -> bool:
    try:
        table.get_entry(name)
    except Exception:
        return False
    return True


def check_all(registry: Any = None, names: Iterable[str] | None = None, **options: Any
              ) -> None:
    """Check every registered object (or those called ``names``); one AssertionError lists
    every failure. ``options`` (e.g. ``scratch_dir``) go to the dataset checks."""
    from wsss_bench.registry import load_registry

    registry = registry or load_registry()
    failures = []
    for kind, name in contract_cases(registry, names):
        obj = registry.kind(kind).get_entry(name).obj
        try:
            check_plugin(kind, obj, **(options if kind == "datasets" else {}))
        except AssertionError as exc:
            failures.append(str(exc))
    if failures:
        raise AssertionError(f"{len(failures)} plugin(s) break their contract:\n"
                             + "\n".join(failures))
