"""Make the small real-data fixture in ``tests/data`` from the larger real sample.

Usage (from the repository root)::

    python tests/data/make_fixture.py SOURCE

``SOURCE`` is the folder holding ``brats-sample/`` and ``msd-prostate-labels/`` (the same folder
``WSSS_BENCH_TEST_DATA`` names for the tests). The script writes, next to itself:

* ``brats/BraTS15_pat0001/BraTS15_pat0001_{flair,t1ce,seg}.nii.gz``: case ``BraTS15_pat0001``
  cut to ``BOX`` (voxel indices ``[x0:x1, y0:y1, z0:z1]`` of the original 240×240×155 volumes).
  The data values, dtype (float32) and header are the original ones; the affine's translation
  moves by ``affine[:3, :3] @ (x0, y0, z0)`` (nibabel's ``slicer``), so every kept voxel has
  its original world position. gzip level 9 with a zero timestamp: re-running the script gives
  identical bytes.
* ``brats/LICENSE.txt``: the sample's licence and attribution, copied unchanged.
* ``msd-prostate/labelsTr/<name>``: the smallest (in bytes) of the real Task05 label files,
  copied unchanged.

See ``README.md`` beside this script for what the files are and where they come from.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

HERE = Path(__file__).resolve().parent
CASE = "BraTS15_pat0001"
KINDS = ("flair", "t1ce", "seg")
# x 48:144, y 72:184 (96×112, not square: a reader that swaps x and y gets the wrong shape),
# z 24:36 (12 axial slices: 24–28 without tumour, 29–35 with 3 to 413 tumour pixels). Every
# kept slice holds background (53–72 % of its pixels), so per-slice min–max maps it to 0.
BOX = (slice(48, 144), slice(72, 184), slice(24, 36))


def cut_brats(source: Path, out: Path) -> None:
    case_in = source / "brats-sample" / CASE
    case_out = out / "brats" / CASE
    case_out.mkdir(parents=True, exist_ok=True)
    for kind in KINDS:
        img = nib.load(str(case_in / f"{CASE}_{kind}.nii.gz"))
        cut = img.slicer[BOX]
        original = np.asarray(img.dataobj)[BOX]
        assert np.array_equal(np.asarray(cut.dataobj), original)  # values unchanged
        assert cut.get_data_dtype() == img.get_data_dtype()
        (case_out / f"{CASE}_{kind}.nii.gz").write_bytes(
            gzip.compress(cut.to_bytes(), compresslevel=9, mtime=0))
    shutil.copyfile(source / "brats-sample" / "LICENSE.txt", out / "brats" / "LICENSE.txt")


def copy_smallest_label(source: Path, out: Path) -> Path:
    labels = source / "msd-prostate-labels" / "Task05_Prostate" / "labelsTr"
    smallest = min(sorted(labels.glob("prostate_*.nii.gz")), key=lambda p: p.stat().st_size)
    target = out / "msd-prostate" / "labelsTr" / smallest.name
    target.parent.mkdir(parents=True, exist_ok=True)
    for old in target.parent.glob("prostate_*.nii.gz"):
        old.unlink()
    shutil.copyfile(smallest, target)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path,
                        help="folder holding brats-sample/ and msd-prostate-labels/")
    parser.add_argument("--out", type=Path, default=HERE,
                        help="where to write (default: %(default)s)")
    args = parser.parse_args(argv)
    cut_brats(args.source, args.out)
    label = copy_smallest_label(args.source, args.out)
    files = sorted(p for p in args.out.rglob("*") if p.is_file() and p.suffix in {".gz", ".txt"})
    for p in files:
        print(f"{p.stat().st_size:>8}  {p.relative_to(args.out)}")
    print(f"{sum(p.stat().st_size for p in files):>8}  total (label: {label.name})")


if __name__ == "__main__":
    main()
