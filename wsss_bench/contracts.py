"""The plugin contracts: what each kind of plugin object must provide.

(Over 300 lines on purpose: every contract and every declared attribute lives in this one
module, so a plugin author reads one file.)

A plugin registers objects with a unique ``name`` and a one-line ``description``. The
Protocols below are structural: any object with these attributes and methods qualifies.
Arrays are NumPy unless a signature says ``torch.Tensor``.

Optional abilities are *declared*, never probed: every object of a kind has the declared
attributes of its Protocol (:data:`DECLARED`; a class attribute, a dataclass field or a property
all do), and the registry rejects an object that lacks one or whose value has the wrong type
(:func:`declared_problems`). :mod:`wsss_bench.testing` checks the rest of the contract.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from wsss_bench.download import Archive

KINDS = ("datasets", "backbones", "cams", "ensembles", "filters", "executors", "methods")
# how messages name one object of each kind
SINGULAR = {"datasets": "dataset", "backbones": "backbone", "cams": "CAM method",
            "ensembles": "ensemble", "filters": "filter", "executors": "executor",
            "methods": "method"}


@dataclass(frozen=True)
class Case:
    """One patient: its 2-D slices after the dataset's preprocessing.

    ``images`` is float32[S,C,H,W], the training view: what the classifiers are trained on
    and what filters see. ``masks`` is bool[S,H,W] (True = lesion). ``cam_images``, when not
    None, is the CAM view: float32 of the same shape as ``images``, what the CAM methods are
    given instead of ``images`` (the authors' BraTS code trains on [FLAIR, T1ce, T2] and takes
    the Grad-CAM of binarised FLAIR). None means the CAMs see the training view.
    """

    case_id: str
    images: np.ndarray
    masks: np.ndarray
    cam_images: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.images.ndim != 4 or self.masks.ndim != 3:
            raise ValueError(
                f"case {self.case_id}: images must be [S,C,H,W] and masks [S,H,W], got "
                f"{self.images.shape} and {self.masks.shape}"
            )
        s, _, h, w = self.images.shape
        if self.masks.shape != (s, h, w):
            raise ValueError(
                f"case {self.case_id}: mask shape {self.masks.shape} does not match images "
                f"{self.images.shape}"
            )
        if self.cam_images is not None and self.cam_images.shape != self.images.shape:
            raise ValueError(
                f"case {self.case_id}: CAM view shape {self.cam_images.shape} does not match "
                f"the training view {self.images.shape}"
            )


@runtime_checkable
class Dataset(Protocol):
    """Finds cases under a root folder (``None`` for generated data) and yields them.

    Declared attributes:

    - ``needs_data_dir: bool``: True when ``cases``/``sources`` need a data folder.
    - ``reads_files: bool``: True for a :class:`FileDataset` (``sources``/``load``, which the
      core reads through the slice cache); False for generated data, read with ``cases()``.
    - ``archive: Archive | None``: where the data can be downloaded from
      (:class:`wsss_bench.download.Archive`), None when it cannot be downloaded.
    - ``download_note: str``: how to get the data when ``archive`` is None (shown by
      ``wsss-bench download``); may be ``""`` when there is an archive.
    - ``cache_version: int``: part of the slice-cache key; bump it when preprocessing changes
      (0 for generated data, which is not cached).
    - ``cam_view: bool``: True when every case carries ``cam_images`` (the CAM-time view),
      False when none does. May depend on the object's options (a property).
    """

    name: str
    description: str
    needs_data_dir: bool
    reads_files: bool
    archive: Archive | None
    download_note: str
    cache_version: int
    cam_view: bool

    def cases(self, data_dir: Path | None) -> Iterator[Case]: ...


@dataclass(frozen=True)
class CaseFiles:
    """One case of a file-based dataset before decoding: its id and files by role
    (e.g. ``{"image": ..., "label": ...}`` or ``{"flair": ..., "seg": ...}``)."""

    case_id: str
    files: dict[str, Path]


@runtime_checkable
class FileDataset(Dataset, Protocol):
    """A dataset read from files (``reads_files = True``). ``sources`` lists the cases (cheap:
    no decoding) and ``load`` decodes one; the core decodes cases in parallel worker processes
    and keeps the result in the slice cache, keyed by the dataset's options, its
    ``cache_version`` and every listed file's size and modification time. ``sources`` raises
    :class:`wsss_bench.volumes.MissingData` when the data is not there (then ``archive``, if
    not None, is downloaded). The object must pickle (workers get a copy).
    """

    def sources(self, data_dir: Path) -> list[CaseFiles]: ...

    def load(self, source: CaseFiles) -> Case: ...


@runtime_checkable
class Backbone(Protocol):
    """A classifier architecture and the layer whose activations CAMs are taken from.

    Declared attributes:

    - ``model_name: str``: the architecture's name, used to find a local checkpoint in
      ``--weights DIR`` (``<model_name>.safetensors`` …); timm's model name for timm models,
      else usually the backbone's ``name``.
    - ``output_strides: tuple[int, ...]``: the output strides ``build`` accepts, 32 included:
      ``(8, 16, 32)`` for a model whose last stages can be dilated, ``(32,)`` for one that
      cannot. The core passes ``output_stride=s`` to ``build`` only for ``s != 32`` in it.
    """

    name: str
    description: str
    model_name: str
    output_strides: tuple[int, ...]

    def build(self, in_chans: int, num_classes: int, pretrained: bool | str | Path
              ) -> nn.Module: ...

    def target_layer(self, model: nn.Module) -> nn.Module: ...


@runtime_checkable
class Cam(Protocol):
    """A class activation map method.

    ``cam(model, target_layer, images[B,C,H,W], target) -> float[B,H,W]`` at input
    resolution, in [0, 1] (ReLU, then per-sample min-max; a flat map is all 0, never NaN),
    finite, high = lesion. ``target`` is None (each sample's predicted class; the core passes
    it for ``--cam-target predicted``) or an integer ``torch.Tensor[B]`` of class indices on
    the images' device (``--cam-target positive``: all ones, the lesion class). Must leave no
    hooks and no parameter ``.grad`` behind. A method defined only for some heads may refuse
    a model with a one-line ValueError (the original CAM needs global average pooling + one
    linear layer right after the target layer). No declared attributes.
    """

    name: str
    description: str

    def cam(
        self,
        model: nn.Module,
        target_layer: nn.Module,
        images: torch.Tensor,
        target: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


SLICE_RULES = ("smallest", "largest")
PIXEL_RULES = ("all", "any", "majority", "at-least-<k>")
_AT_LEAST = re.compile(r"at-least-(-?[0-9]+)")


def pixel_rule_count(rule: str, m: int) -> int:
    """``k``: with pixel rule ``rule``, a pixel is positive iff at least k of M = ``m``
    backbones say so (``all``: M, ``any``: 1, ``majority``: ceil(M/2), ``at-least-<k>``: k)."""
    if rule == "all":
        return m
    if rule == "any":
        return 1
    if rule == "majority":
        return -(-m // 2)
    match = _AT_LEAST.fullmatch(rule) if isinstance(rule, str) else None
    if match is None:
        raise ValueError(f"pixel_rule must be one of {', '.join(PIXEL_RULES)}, got {rule!r}")
    return int(match.group(1))


@runtime_checkable
class Ensemble(Protocol):
    """Combines the binary masks of M >= 2 backbones: ``bool[M,B,H,W] -> bool[B,H,W]``.

    Declared attributes (calibration uses them to count every threshold tuple exactly from
    histograms; ``combine`` must agree with them):

    - ``symbol: str | None``: how the ensemble is shown in leaderboard rows (``"<"`` for
      ``smaller``); None shows its ``name``.
    - ``pixel_rule: str | None``: a pixel is positive iff at least k backbones say so, k from
      :func:`pixel_rule_count`: ``"all"``, ``"any"``, ``"majority"`` or ``"at-least-<k>"``.
    - ``slice_rule: str | None``: per slice, the mask of the backbone with the ``"smallest"``
      or ``"largest"`` positive area (ties: the first backbone).
    - ``fuses: bool``: True when it also has ``fuse(cams float[M,B,H,W]) -> float[B,H,W]``;
      calibration then thresholds the fused CAM with ONE threshold (this wins over the rules).

    At most one of ``pixel_rule`` and ``slice_rule`` is set; with neither (and no ``fuse``) the
    ensemble is calibrated by an exact but slow generic path through ``combine``.
    """

    name: str
    description: str
    symbol: str | None
    pixel_rule: str | None
    slice_rule: str | None
    fuses: bool

    def combine(self, masks: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class Filter(Protocol):
    """The region of each slice where CAMs are kept: ``images[B,C,H,W] -> bool[B,H,W]``.

    Declared attribute: ``learned: bool``, True when the filter has
    ``fit(images, masks) -> Filter``: called with the fold's training slices only, it returns
    a new, fitted filter; the registered object is shared by every fold and must not change.
    """

    name: str
    description: str
    learned: bool

    def region(self, images: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class MethodContext:
    """What a :class:`Method`'s ``build`` and ``train`` get from the run.

    ``epochs``, ``batch_size``, ``lr`` and ``seed`` are the run's (``--epochs``,
    ``--batch-size``, ``--lr``, the unit's derived seed; a method whose optimiser is not the
    classifiers' SGD keeps its own learning rate as an option). ``device`` is where to compute,
    ``amp`` whether to use mixed precision there. ``progress(epoch, losses)`` is called by the
    method after every epoch with its mean loss terms (``{"total": …, "cls": …}``); the core
    records them and fails a unit whose losses are not finite. ``build_backbone(name, in_chans,
    output_stride)`` builds an untrained classifier of the backbone registry (``resnet34``,
    ``timm:<model>``) with two classes; its ``feature_info`` names its stages.
    """

    epochs: int
    batch_size: int
    lr: float
    seed: int
    device: torch.device
    amp: bool
    progress: Callable[[int, dict[str, float]], None]
    build_backbone: Callable[[str, int, int], nn.Module]


@runtime_checkable
class Method(Protocol):
    """An end-to-end weakly supervised method that trains its own network (SEAM, WSS-CMER).

    ``train(images float32[N,C,H,W], labels int64[N], context)`` trains a model on a fold's
    training slices with their image labels only (1 = lesion) and returns it (an
    ``nn.Module`` whose ``state_dict`` the core stores); ``build(in_chans, context)`` makes
    the same, untrained, model for that state dict to be loaded into. ``maps(model,
    images[B,C,H,W])`` (eval mode, no gradient needed) returns ``(maps, logits)``: ``maps``
    float ``torch.Tensor[K,B,H,W]`` at input resolution, in [0, 1], finite, high = lesion, K =
    ``len(outputs(C))``; ``logits`` float ``[B, 2]``, the slice predictions (``--gate``
    zeroes the maps of slices predicted 0). ``outputs(in_chans)`` names the K maps (each is a
    leaderboard row, ``method / output / filter``): e.g. ``("refined",)`` or one per input
    channel. A method uses ``context.seed`` for every random choice: the same seed gives the
    same maps.

    Declared attributes:

    - ``min_channels: int``: the input channels it needs (WSS-CMER: one network per modality,
      so 2); a run with fewer is refused before anything is trained.
    - ``cam_head: bool``: True when the trained model's ``forward(images)`` returns logits
      ``[B, 2]`` and the method has ``target_layer(model) -> nn.Module``: ``--cams`` then also
      run on it (rows ``method / gradcam / filter``).
    """

    name: str
    description: str
    min_channels: int
    cam_head: bool

    def outputs(self, in_chans: int) -> tuple[str, ...]: ...

    def build(self, in_chans: int, context: MethodContext) -> nn.Module: ...

    def train(self, images: np.ndarray, labels: np.ndarray, context: MethodContext
              ) -> nn.Module: ...

    def maps(self, model: nn.Module, images: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor]: ...


PROTOCOLS: dict[str, type] = {"datasets": Dataset, "backbones": Backbone, "cams": Cam,
                              "ensembles": Ensemble, "filters": Filter, "methods": Method}


# --- declared attributes: each a check of the value, returning what is wrong ("" = ok) ----

def _is_bool(value: Any) -> str:
    return "" if isinstance(value, bool) else "must be a bool"


def _is_int(value: Any) -> str:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool)
    return "" if ok else "must be an int"


def _is_positive_int(value: Any) -> str:
    ok = isinstance(value, int | np.integer) and not isinstance(value, bool) and value >= 1
    return "" if ok else "must be an int of at least 1"


def _is_str(value: Any) -> str:
    return "" if isinstance(value, str) else "must be a str"


def _is_name(value: Any) -> str:
    return "" if isinstance(value, str) and value else "must be a non-empty str"


def _is_optional_str(value: Any) -> str:
    return "" if value is None or isinstance(value, str) else "must be a str or None"


def _is_archive(value: Any) -> str:
    from wsss_bench.download import Archive

    ok = value is None or isinstance(value, Archive)
    return "" if ok else "must be a wsss_bench.download.Archive or None"


def _is_strides(value: Any) -> str:
    ok = (isinstance(value, tuple) and value and 32 in value
          and all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in value))
    return "" if ok else "must be a tuple of positive ints that includes 32, e.g. (8, 16, 32)"


def _is_pixel_rule(value: Any) -> str:
    if value is None:
        return ""
    try:
        pixel_rule_count(value, 2)
    except ValueError as exc:
        return f"must be None or a str: {exc}"
    return ""


def _is_slice_rule(value: Any) -> str:
    ok = value is None or value in SLICE_RULES
    return "" if ok else f"must be None or one of {', '.join(map(repr, SLICE_RULES))}"


Check = Callable[[Any], str]

DECLARED: dict[str, dict[str, Check]] = {
    "datasets": {"needs_data_dir": _is_bool, "reads_files": _is_bool, "archive": _is_archive,
                 "download_note": _is_str, "cache_version": _is_int, "cam_view": _is_bool},
    "backbones": {"model_name": _is_name, "output_strides": _is_strides},
    "cams": {},
    "ensembles": {"symbol": _is_optional_str, "pixel_rule": _is_pixel_rule,
                  "slice_rule": _is_slice_rule, "fuses": _is_bool},
    "filters": {"learned": _is_bool},
    "executors": {},
    "methods": {"min_channels": _is_positive_int, "cam_head": _is_bool},
}

# methods a declared value promises: (attribute, value) -> methods that must then exist
PROMISED: dict[str, dict[tuple[str, Any], tuple[str, ...]]] = {
    "datasets": {("reads_files", True): ("sources", "load"), ("reads_files", False): ("cases",)},
    "ensembles": {("fuses", True): ("fuse",)},
    "filters": {("learned", True): ("fit",)},
    "methods": {("cam_head", True): ("target_layer",)},
}


def declared_problems(kind: str, obj: Any) -> list[str]:
    """What is wrong with ``obj``'s declared attributes as a plugin of ``kind`` (empty: ok).

    Each problem names the attribute: missing, of the wrong type, or promising a method the
    object lacks (``fuses = True`` without ``fuse``).
    """
    problems: list[str] = []
    values: dict[str, Any] = {}
    for attr, check in DECLARED[kind].items():
        try:
            value = getattr(obj, attr)
        except AttributeError:
            problems.append(f"missing declared attribute `{attr}`")
            continue
        except Exception as exc:  # a property that raises
            problems.append(f"reading `{attr}` raised {type(exc).__name__}: {exc}")
            continue
        wrong = check(value)
        if wrong:
            problems.append(f"`{attr}` {wrong} (got {value!r})")
        else:
            values[attr] = value
    for (attr, promise), methods in PROMISED.get(kind, {}).items():
        if attr in values and values[attr] is promise:
            for method in methods:
                if not callable(getattr(obj, method, None)):
                    problems.append(f"`{attr} = {promise}` but it has no `{method}()` method")
    if (kind == "ensembles" and values.get("pixel_rule") is not None
            and values.get("slice_rule") is not None):
        problems.append("sets both `pixel_rule` and `slice_rule`; set at most one")
    return problems


@runtime_checkable
class Executor(Protocol):
    """Where a stage's units run: ``run(stage, units, context)`` calls ``stage(unit, context)``
    once for every unit (in this process, in workers, on a cluster) and yields
    ``(unit, result)`` as each finishes, in any order; it stores nothing (the driver does).

    Units and the context are picklable; ``unit.portable()`` and ``context.portable(units)``
    give copies that need no shared filesystem, and ``context.on(device)`` one that computes on
    a worker's device. A unit that fails for good raises
    :class:`wsss_bench.executors.UnitFailed` (one line naming the unit) after every finished
    unit was yielded. Options are dataclass fields, set with ``-o NAME.field=value``.
    """

    name: str
    description: str

    def run(self, stage: Callable[[Any, Any], Any], units: Sequence[Any], context: Any
            ) -> Iterator[tuple[Any, Any]]: ...
PROTOCOLS["executors"] = Executor


# --- outputs: what the core checks at the boundary, before anything is stored or used --------
# Each returns what is wrong ("" = ok). The pipeline calls them on every output of every
# plugin (wsss_bench.guards); a violation fails that unit with one line naming the
# plugin and its distribution, and nothing of that unit is stored.

CAM_TOLERANCE = 1e-3  # CAM values may exceed [0, 1] by this much (half-precision rounding)


def _values(out: Any) -> np.ndarray | None:
    if isinstance(out, torch.Tensor):
        return out.detach().cpu().numpy() if out.dtype != torch.bfloat16 else (
            out.detach().float().cpu().numpy())
    return out if isinstance(out, np.ndarray) else None


def _non_finite(values: np.ndarray) -> str:
    bad = ~np.isfinite(values)
    if not bad.any():
        return ""
    nan = int(np.isnan(values).sum())
    what = "NaN" if nan == int(bad.sum()) else ("±Inf" if nan == 0 else "NaN/±Inf")
    return f"{what} in {int(bad.sum())} of {values.size} values"


def _map_problem(out: Any, shape: tuple[int, ...], expected: tuple[int, ...], layout: str,
                 verb: str = "returned") -> str:
    """A float ``torch.Tensor`` of ``expected`` shape (for images ``shape``), finite, within
    [0, 1]: what is wrong, each message starting with ``verb``."""
    if not isinstance(out, torch.Tensor):
        return f"{verb} a {type(out).__name__}, not a torch.Tensor {layout}"
    values = _values(out)
    if tuple(values.shape) != expected:
        return (f"{verb} shape {tuple(values.shape)} for images {tuple(shape)}; "
                f"expected {expected}")
    if not np.issubdtype(values.dtype, np.floating):
        return f"{verb} dtype {values.dtype}; expected a floating-point map"
    if wrong := _non_finite(values):
        return f"{verb} {wrong}"
    low, high = float(values.min()), float(values.max())
    if low < -CAM_TOLERANCE or high > 1 + CAM_TOLERANCE:
        return f"{verb} values in [{low:.4g}, {high:.4g}]; a map must lie in [0, 1]"
    return ""


def cam_output_problem(out: Any, shape: tuple[int, ...]) -> str:
    """A CAM method's output for a batch of images ``shape`` [B,C,H,W]: a float
    ``torch.Tensor`` [B,H,W], finite, within [0, 1]."""
    return _map_problem(out, shape, (shape[0], *shape[2:]), "[B,H,W]")


def mask_output_problem(out: Any, expected: tuple[int, ...], what: str) -> str:
    """An ensemble's ``combine`` or a filter's ``region``: a bool array of ``expected`` shape."""
    values = _values(out)
    if values is None:
        return f"{what} returned a {type(out).__name__}, not a NumPy bool array"
    if tuple(values.shape) != tuple(expected):
        return f"{what} returned shape {tuple(values.shape)}; expected {tuple(expected)}"
    if values.dtype != np.bool_:
        return f"{what} returned dtype {values.dtype}; expected bool"
    return ""


def fuse_output_problem(out: Any, expected: tuple[int, ...]) -> str:
    """An ensemble's ``fuse``: a finite float array of ``expected`` shape [B,H,W]."""
    values = _values(out)
    if values is None:
        return f"fuse returned a {type(out).__name__}, not an array"
    if tuple(values.shape) != tuple(expected):
        return f"fuse returned shape {tuple(values.shape)}; expected {tuple(expected)}"
    if not np.issubdtype(values.dtype, np.floating):
        return f"fuse returned dtype {values.dtype}; expected floating point"
    if wrong := _non_finite(values):
        return f"fuse returned {wrong}"
    return ""


def case_problem(case: Any) -> str:
    """A dataset's case: float32 images [S,C,H,W] and CAM view, finite; bool masks [S,H,W]."""
    if not isinstance(case, Case):
        return f"yielded a {type(case).__name__}, not a wsss_bench.contracts.Case"
    where = f"case {case.case_id!r}"
    for field_name in ("images", "cam_images"):
        arr = getattr(case, field_name)
        if arr is None:
            continue
        if not isinstance(arr, np.ndarray) or arr.dtype != np.float32:
            dtype = getattr(arr, "dtype", type(arr).__name__)
            return f"{where}: {field_name} have dtype {dtype}; expected float32"
        if wrong := _non_finite(arr):
            return f"{where}: {field_name} contain {wrong}"
    if not isinstance(case.masks, np.ndarray) or case.masks.dtype != np.bool_:
        dtype = getattr(case.masks, "dtype", type(case.masks).__name__)
        return f"{where}: masks have dtype {dtype}; expected bool (True = lesion)"
    if len(case.images) == 0:
        return f"{where}: no slices"
    return ""


def logits_problem(out: Any, batch: int, num_classes: int) -> str:
    """A backbone's output for a batch: finite logits [B, num_classes]."""
    values = _values(out)
    if values is None:
        return f"model returned a {type(out).__name__}, not a tensor of logits"
    if tuple(values.shape) != (batch, num_classes):
        return (f"model returned shape {tuple(values.shape)} for a batch of {batch}; expected "
                f"logits ({batch}, {num_classes})")
    if wrong := _non_finite(values):
        return f"model returned {wrong} logits"
    return ""


def method_maps_problem(out: Any, shape: tuple[int, ...], k: int) -> str:
    """A method's ``maps`` for a batch of images ``shape`` [B,C,H,W]: a pair (float
    ``torch.Tensor[K,B,H,W]`` finite in [0, 1], logits ``[B, 2]`` finite)."""
    if not isinstance(out, tuple) or len(out) != 2:
        return f"maps returned a {type(out).__name__}; expected a pair (maps, logits)"
    maps, logits = out
    problem = _map_problem(maps, shape, (k, shape[0], *shape[2:]), f"[K,B,H,W] (K = {k})",
                           "maps returned maps:")
    if problem:
        return problem
    return logits_problem(logits, shape[0], 2)
