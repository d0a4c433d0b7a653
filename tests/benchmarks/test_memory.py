"""Peak memory of prepare, CAMs and evaluate on 1×, 2× and 4× a BraTS-like synthetic set.

2,000 / 4,000 / 8,000 slices of 1×128×128 (16 / 32 / 64 cases of 125 slices; the file
dataset ``memtest`` of ``memory_stages.py``). Each stage runs in a fresh process, so that its
peak resident set (``VmHWM``: anonymous plus memory-mapped file pages) is that stage's alone:

* prepare: the slice cache build (``slice_cache.prepare``, one worker, decoding in-process);
* cams: the ``cams`` stage function, ``gradcam`` of a random-init ``timm:mobilenetv3_small_050``
  (resnet18 does about 50 slices/s on this machine's 2 cores, minutes per scale; the CAM
  stage's memory does not depend on the network) over every slice, then ``store_files``;
* evaluate single / and: the ``evaluate`` stage function on fold 1 (grid search on the
  training slices, thresholds applied to the validation slices), one backbone or the ``and``
  ensemble of two.

Target (issue 12): from 1× to 4× a stage's peak grows by at most the growth of what it keeps
resident by design: the stored arrays it writes or maps (images float16, masks bool, CAMs
float16 per backbone; the masks are mapped by the fold split in every stage after prepare)
plus, for evaluate, the filter's region (bool[N,H,W], cached by
``Context.region``), plus ``SLACK_MIB``; not with intermediate copies (float32 CAMs, stacks,
fold subsets). Skipped unless benchmarks are enabled; run with::

    .venv/bin/python -m pytest tests/benchmarks/test_memory.py --benchmark-enable \\
        -p no:cacheprovider -s
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.memory_stages import SIZE, SLICES
from tests.benchmarks.report import cpu_name

ROOT = Path(__file__).resolve().parents[2]
SCALES = {"1×": 16, "2×": 32, "4×": 64}  # cases of SLICES slices: 2,000 / 4,000 / 8,000
STAGES = ("prepare", "cams", "evaluate-single", "evaluate-and")
SLACK_MIB = 64.0
RESULTS: dict[tuple[str, str], dict[str, float]] = {}
STORED: dict[str, dict[str, float]] = {}  # scale -> MiB of images, masks, one CAM array


def _run(stage: str, root: Path, *args: str) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    done = subprocess.run([sys.executable, "-m", "tests.benchmarks.memory_stages", stage,
                           str(root), *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, Path]:
    out = {}
    for scale, cases in SCALES.items():
        out[scale] = tmp_path_factory.mktemp(f"memory-{cases}")
        _run("data", out[scale], str(cases))
    return out


def _mib(path: Path) -> float:
    return path.stat().st_size / 2**20


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize("scale", SCALES)
def test_peak_memory(benchmark, roots, scale: str, stage: str) -> None:
    benchmark.group = f"peak memory {stage}"
    root = roots[scale]
    result = benchmark.pedantic(lambda: _run(stage, root), rounds=1, iterations=1)
    benchmark.extra_info.update(result, slices=SCALES[scale] * SLICES)
    RESULTS[(scale, stage)] = result
    if stage == "cams":
        (cache,) = (root / "cache").glob("memtest-*")
        cams = sorted((root / "units" / "cams").glob("*/cams.npy"))
        STORED[scale] = {"images": _mib(cache / "images.npy"), "masks": _mib(cache / "masks.npy"),
                         "cams": _mib(cams[0])}
        benchmark.extra_info.update({f"stored_{k}_mib": v for k, v in STORED[scale].items()})


def _allowed(scale: str, stage: str) -> float:
    """MiB a stage keeps resident by design (see the module). The cams and evaluate processes
    map the masks too: the fold split reads the image-level labels."""
    s = STORED[scale]
    region = s["masks"]  # bool[N,H,W], as the masks
    return {"prepare": s["images"] + s["masks"],
            "cams": s["images"] + s["masks"] + s["cams"],
            "evaluate-single": s["images"] + s["masks"] + region + s["cams"],
            "evaluate-and": s["images"] + s["masks"] + region + 2 * s["cams"]}[stage]


def test_memory_targets() -> None:
    """Runs last (file order): the table and the growth targets from this run."""
    if len(RESULTS) < len(SCALES) * len(STAGES):
        pytest.skip("benchmarks disabled or deselected")
    lines = [f"Peak RSS (MiB, VmHWM of a fresh process per stage; base = resident before the "
             f"stage, after imports), {cpu_name()}, {os.cpu_count()} CPUs", "",
             "| scale | slices | images MiB | CAMs MiB (one backbone) | "
             + " | ".join(f"{s} peak (base)" for s in STAGES) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(STAGES)]
    for scale, cases in SCALES.items():
        cells = [f"{RESULTS[(scale, s)]['peak_mib']:.0f} ({RESULTS[(scale, s)]['base_mib']:.0f})"
                 for s in STAGES]
        lines.append(f"| {scale} | {cases * SLICES} ({SIZE}×{SIZE}) | "
                     f"{STORED[scale]['images']:.0f} | {STORED[scale]['cams']:.0f} | "
                     + " | ".join(cells) + " |")
    lines += ["", "| stage | peak growth 1×→4× MiB | allowed MiB | met |", "|---|---:|---:|---|"]
    missed = []
    for stage in STAGES:
        grown = RESULTS[("4×", stage)]["peak_mib"] - RESULTS[("1×", stage)]["peak_mib"]
        allowed = _allowed("4×", stage) - _allowed("1×", stage) + SLACK_MIB
        lines.append(f"| {stage} | {grown:.0f} | {allowed:.0f} | "
                     f"{'yes' if grown <= allowed else 'NO'} |")
        if grown > allowed:
            missed.append(f"{stage}: peak grew {grown:.0f} MiB > {allowed:.0f} MiB")
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    if out := os.environ.get("WSSS_BENCH_TABLE"):
        Path(out).write_text(text, encoding="utf-8")
    assert not missed, "memory targets missed:\n" + "\n".join(missed)
