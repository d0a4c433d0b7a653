"""One pipeline stage in a fresh process, for ``test_memory.py``: its peak resident memory.

``python -m tests.benchmarks.memory_stages STAGE ROOT`` runs STAGE on the synthetic BraTS-like
set under ROOT and prints one JSON line: the resident set before the stage (``base_mib``, after
the imports and the model), the peak over the whole process (``peak_mib``, ``VmHWM``) and the
anonymous / file-backed resident memory at the end. Stages:

* ``data N``: writes ROOT/data (N cases of ``SLICES`` slices; not measured);
* ``prepare``: builds the slice cache of ROOT/data (``slice_cache.prepare``, one worker: the
  decoding runs in the measured process) into ROOT/cache;
* ``cams``: the ``cams`` stage function (:func:`wsss_bench.pipeline.cams.make_cams`) of the
  fold-1 classifier of ``BACKBONES[0]`` (random init) over every slice, then ``store_files``
  into the unit folder, as the driver does. Afterwards (not measured) the second backbone's
  CAMs are written too: the first one's mirrored left-right;
* ``evaluate-single`` / ``evaluate-and``: the ``evaluate`` stage function (grid search on the
  fold's training slices, then the chosen thresholds applied to its validation slices) of the
  single first backbone, or of the ``and`` ensemble of both, on fold 1.

The dataset is a file dataset (so ``prepare`` goes through the slice cache, as BraTS does):
``memtest``, registered the way tests register extra plugins. Its case files hold only the
number of one of ``BASES`` phantom volumes (``phantom``, 128×128, 125 slices) generated once
into ROOT/data; loading a case reads that volume from its ``.npy`` files.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from wsss_bench import hookimpl
from wsss_bench.contracts import Case, CaseFiles

SLICES = 125  # per case, as a BraTS volume cropped to 128 slices, give or take
SIZE = 128
BASES = 4  # distinct phantom volumes the cases cycle through
BACKBONES = ("timm:mobilenetv3_small_050", "timm:lcnet_050")


@dataclass(frozen=True)
class MemTest:
    """BraTS-like file dataset: ROOT/case_XXX.txt names a phantom volume in ROOT/base_K_*.npy."""

    name: str = "memtest"
    description: str = "synthetic BraTS-like file dataset of the memory benchmark"
    needs_data_dir: bool = True
    reads_files: ClassVar[bool] = True
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = "written by tests/benchmarks/memory_stages.py"
    cache_version: ClassVar[int] = 0
    cam_view: ClassVar[bool] = False

    def sources(self, data_dir: Path) -> list[CaseFiles]:
        return [CaseFiles(p.stem, {"case": p}) for p in sorted(Path(data_dir).glob("case_*.txt"))]

    def load(self, source: CaseFiles) -> Case:
        path = Path(source.files["case"])
        base = int(path.read_text())
        images = np.load(path.parent / f"base_{base}_images.npy")
        masks = np.load(path.parent / f"base_{base}_masks.npy")
        return Case(source.case_id, images, masks)

    def cases(self, data_dir: Path | None) -> Iterator[Case]:
        for source in self.sources(Path(data_dir or ".")):
            yield self.load(source)


@hookimpl
def register_datasets(register) -> None:
    register(MemTest())


def _status() -> dict[str, float]:
    """VmHWM, VmRSS, RssAnon, RssFile of this process in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


def write_data(root: Path, n_cases: int) -> None:
    from wsss_bench_plugins.phantom import Phantom

    data = root / "data"
    data.mkdir(parents=True, exist_ok=True)
    phantom = Phantom(n_slices=SLICES, size=SIZE)
    for k in range(BASES):
        if not (data / f"base_{k}_masks.npy").is_file():
            images, masks, _ = phantom.generate(k)
            np.save(data / f"base_{k}_images.npy", images)
            np.save(data / f"base_{k}_masks.npy", masks)
    for i in range(n_cases):
        (data / f"case_{i:03d}.txt").write_text(str(i % BASES))


def _plan(root: Path):
    from wsss_bench.core import slice_cache
    from wsss_bench.pipeline.context import Context
    from wsss_bench.pipeline.folds import split
    from wsss_bench.pipeline.plan import Plan
    from wsss_bench.pipeline.settings import RunConfig
    from wsss_bench.registry import load_registry

    registry = load_registry(extra_plugins={"memtest": sys.modules[__name__]})
    config = RunConfig(dataset="memtest", data_dir=str(root / "data"), backbones=BACKBONES,
                       cams=("gradcam",), ensembles=("and",), filters=("none",), folds=3,
                       workdir=str(root / "run"), device="cpu")
    plan = Plan.build(config, registry)
    (folder,) = (root / "cache").glob("memtest-*")
    data = slice_cache.load(folder)
    plan = plan.with_data(data.origin, data.images.shape, data.case_ids.tolist(),
                          split(config, data))
    return Context(plan, data, root / "units", "cpu", registry=registry)


def _cam_unit(ctx, backbone: str):
    return next(u for u in ctx.plan.cams if u.train.fold == 0 and u.train.backbone == backbone)


def main(stage: str, root: Path, arg: str | None = None) -> dict[str, float]:
    if stage == "data":
        write_data(root, int(arg or 0))
        return {}
    import torch

    torch.set_num_threads(2)
    info: dict[str, float] = {}
    if stage == "prepare":
        from wsss_bench.core import slice_cache

        base = _status()
        slice_cache.prepare(MemTest(), root / "data", root / "cache", workers=1)
    elif stage == "cams":
        from wsss_bench.pipeline import cams

        ctx = _plan(root)
        unit = _cam_unit(ctx, BACKBONES[0])
        model = ctx.plugin("backbones", BACKBONES[0]).build(
            in_chans=1, num_classes=2, pretrained=False)
        checkpoint = root / "model.pt"
        torch.save(model.state_dict(), checkpoint)
        unit = dataclasses.replace(unit, todo=("gradcam",), model_path=str(checkpoint))
        base = _status()
        result = cams.make_cams(unit, ctx)
        folder = ctx.store_root / "cams" / unit.keys["gradcam"][0]
        folder.mkdir(parents=True, exist_ok=True)
        cams.store_files(result.maps["gradcam"], folder)
        info["cam_seconds"] = result.seconds["gradcam"]
        end = _status()
        del result
        # not measured: the second backbone's CAMs, the first one's mirrored
        other = ctx.store_root / "cams" / _cam_unit(ctx, BACKBONES[1]).keys["gradcam"][0]
        other.mkdir(parents=True, exist_ok=True)
        first = np.load(folder / "cams.npy", mmap_mode="r")
        out = np.lib.format.open_memmap(other / "cams.npy", mode="w+", dtype=np.float16,
                                        shape=first.shape)
        for s in range(0, len(first), 512):
            out[s : s + 512] = first[s : s + 512, :, ::-1]
        out.flush()
        del out
        return {"base_mib": base["VmRSS"], "peak_mib": end["VmHWM"], "anon_mib": end["RssAnon"],
                "file_mib": end["RssFile"], **info}
    elif stage.startswith("evaluate-"):
        from wsss_bench.pipeline import evaluate

        ctx = _plan(root)
        ensemble = None if stage == "evaluate-single" else stage.split("-", 1)[1]
        group = BACKBONES[:1] if ensemble is None else BACKBONES
        unit = next(u for u in ctx.plan.evaluate
                    if u.ensemble == ensemble and u.group == group and u.folds == (0,))
        base = _status()
        (result,) = evaluate.evaluate(unit, ctx)
        info["paper_miou"] = result["metrics"]["paper_miou"]
    else:
        raise SystemExit(f"unknown stage {stage!r}")
    end = _status()
    return {"base_mib": base["VmRSS"], "peak_mib": end["VmHWM"], "anon_mib": end["RssAnon"],
            "file_mib": end["RssFile"], **info}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), *sys.argv[3:])))
