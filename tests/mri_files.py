"""Helpers that write MRI files for tests: NIfTI volumes, MSD-layout task folders, tars."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import nibabel as nib
import numpy as np


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def prostate_image(label: np.ndarray) -> np.ndarray:
    """A 4-D float32 (x, y, z, 2) image of the label's exact geometry: channel 0 "T2",
    channel 1 "ADC", each a smooth pattern plus zone-dependent intensity."""
    x, y, z = np.meshgrid(*(np.linspace(0, 1, n, dtype=np.float32) for n in label.shape),
                          indexing="ij")
    pattern = np.sin(7 * x) * np.cos(5 * y) + z
    t2 = 300 + 80 * pattern + 250 * (label > 0)
    adc = 1400 + 150 * pattern - 500 * (label == 1) - 300 * (label == 2)
    return np.stack([t2, adc], axis=-1).astype(np.float32)


def build_decathlon(root: Path, label_files: list[Path]) -> Path:
    """``root/Task05_Prostate`` with 4-D images of the exact geometry of real label files (the
    labels are linked, the images written as ``.nii``).

    Also writes a ``dataset.json`` that misspells the file names and a macOS ``._`` file, which
    a loader must ignore.
    """
    task = root / "Task05_Prostate"
    (task / "labelsTr").mkdir(parents=True)
    for label_file in label_files:
        img = nib.load(str(label_file))
        label = np.asarray(img.dataobj)
        # uncompressed .nii (fast to write; the loader pairs it with the label's .nii.gz)
        name = label_file.name.replace(".nii.gz", ".nii")
        write_nifti(task / "imagesTr" / name, prostate_image(label), img.affine)
        (task / "labelsTr" / label_file.name).symlink_to(label_file)
    (task / "dataset.json").write_text('{"training": [{"image": "imagesTr/wrong_name.nii"}]}')
    (task / "imagesTr" / f"._{label_files[0].name}").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return task


def tiny_decathlon(root: Path, n_cases: int = 4, shape: tuple[int, int, int] = (24, 24, 4),
                   seed: int = 0) -> Path:
    """A small synthetic Task05_Prostate: every case has a lesion (prostate) in some slices."""
    rng = np.random.default_rng(seed)
    task = root / "Task05_Prostate"
    for i in range(n_cases):
        label = np.zeros(shape, dtype=np.uint8)
        c = rng.integers(6, shape[0] - 6, size=2)
        label[c[0] - 3 : c[0] + 3, c[1] - 3 : c[1] + 3, 1:-1] = 1
        label[c[0] - 1 : c[0] + 1, c[1] - 1 : c[1] + 1, 1:-1] = 2
        write_nifti(task / "labelsTr" / f"prostate_{i:02d}.nii.gz", label)
        write_nifti(task / "imagesTr" / f"prostate_{i:02d}.nii.gz", prostate_image(label))
    return task


def tar_of(folder: Path, arcname: str, extra: list[tuple[tarfile.TarInfo, bytes | None]] = ()
           ) -> bytes:
    """An uncompressed tar of ``folder`` under ``arcname`` plus ``extra`` raw members."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        tar.add(folder, arcname=arcname)
        for info, data in extra:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def member(name: str, data: bytes = b"x", kind: bytes = tarfile.REGTYPE, linkname: str = ""
           ) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None
