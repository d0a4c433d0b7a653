"""The ``brats`` dataset: BraTS 2020 training data, laid out as the challenge publishes it.

Accepted roots (``--data-dir``): ``MICCAI_BraTS2020_TrainingData`` itself, a folder that holds
it (or another folder of case folders), or a folder of case folders. A case is
``<case>/<case>_{flair,t1,t1ce,t2,seg}.nii.gz`` (``.nii`` too). The official release names one
segmentation file differently (case 355: ``W39_1998.09.19_Segm.nii``); when ``<case>_seg`` is
missing, the one other NIfTI file in the folder whose name contains "seg" is taken. Labels may be
uint8 {0,1,2,4} (BraTS 2020) or float {0..4} (BraTS 2015); whole tumour = label > 0.

Preprocessing (the authors' code): per-slice min–max per modality on the full 240×240 slice,
crop ``[56:184, 56:184, 13:141]`` (128 slices of 128×128). That is the training view
(``modalities``, stacked as channels in the order given). The CAM view (``cam_binarize > 0``):
``cam_modality`` (FLAIR) normalised the same way, every pixel ``>= cam_binarize`` set to
``cam_value`` and the rest to 0, repeated over the training view's channels — the authors'
Grad-CAM input (brats_GradCAM_res34.py: the paper's "threshold of 0.8 to the normalized
frame", written as 0/255). Filters always see the training view. No download: BraTS needs
registration.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from wsss_bench import hookimpl
from wsss_bench.contracts import Case, CaseFiles
from wsss_bench.hookspecs import Register
from wsss_bench.options import option
from wsss_bench.volumes import (
    DataError,
    FileDatasetBase,
    MissingData,
    binarized_view,
    brain_case,
    is_nifti,
    parse_crop,
    read_image,
    read_mask,
    stem,
)

MODALITIES = ("flair", "t1", "t1ce", "t2")
LABELS = (0, 1, 2, 3, 4)
RELEASE = "MICCAI_BraTS2020_TrainingData"
WHERE = "https://www.med.upenn.edu/cbica/brats2020/registration.html"
DEFAULT_CROP = "56:184,56:184,13:141"
FLOAT16_MAX = float(np.finfo(np.float16).max)
# the help of the options brats and msd-brain share
BRAIN_HELP = {
    "modalities": "training-view channels in this order, comma-separated, from flair, t1, t1ce, "
                  "t2",
    "crop": "x0:x1,y0:y1,z0:z1 voxel box kept after the per-slice min-max, or none (default: "
            "128 slices of 128x128)",
    "cam_binarize": "CAM view: pixels of cam_modality >= this become cam_value, the rest 0; "
                    "0 = no CAM view (CAMs see the training view)",
    "cam_value": "value of the CAM view's pixels at or above cam_binarize (the authors' 255; 1 = "
                 "the training view's range)",
    "cam_modality": "modality the CAM view is made from when cam_binarize > 0: flair, t1, t1ce "
                    "or t2",
}


def parse_modalities(text: str, owner: str, one: bool = False) -> tuple[str, ...]:
    names = tuple(p.strip().lower() for p in text.split(",") if p.strip())
    bad = [n for n in names if n not in MODALITIES]
    if one and (len(names) != 1 or bad):
        raise ValueError(f"{owner}: cam_modality must be one of {', '.join(MODALITIES)}; got "
                         f"{text!r}")
    if not names or bad or len(set(names)) != len(names):
        raise ValueError(f"{owner}: modalities must be distinct names from "
                         f"{', '.join(MODALITIES)}, comma-separated; got {text!r}")
    return names


def check_brain_options(dataset: Any) -> None:
    """The options ``brats`` and ``msd-brain`` share; a bad value is a ValueError."""
    owner = dataset.name
    parse_modalities(dataset.modalities, owner)
    parse_crop(dataset.crop, owner)
    if not 0 <= dataset.cam_binarize <= 1:
        raise ValueError(f"{owner}: cam_binarize must be in [0, 1] (0 = no CAM view: CAMs see "
                         f"the training input), got {dataset.cam_binarize}")
    if not (np.isfinite(dataset.cam_value) and 0 < dataset.cam_value <= FLOAT16_MAX):
        raise ValueError(f"{owner}: cam_value must be a positive number up to {FLOAT16_MAX:g} "
                         f"(the slice cache stores float16; the authors' 255, or 1 for the "
                         f"training input's range), got {dataset.cam_value}")
    parse_modalities(dataset.cam_modality, owner, one=True)


def cam_view(dataset: Any, volumes: dict[str, tuple[Path, np.ndarray]],
             box: tuple[slice, slice, slice] | None, channels: int) -> np.ndarray | None:
    """The CAM view of one case (see the module docstring), or None when ``cam_binarize`` is 0."""
    if dataset.cam_binarize <= 0:
        return None
    path, volume = volumes[dataset.cam_modality.strip().lower()]
    return binarized_view(path, volume, box, dataset.cam_binarize, dataset.cam_value, channels)


def needed_modalities(dataset: Any) -> tuple[str, ...]:
    """The training modalities, plus the CAM view's modality when there is a CAM view."""
    names = parse_modalities(dataset.modalities, dataset.name)
    cam = dataset.cam_modality.strip().lower()
    return names + ((cam,) if dataset.cam_binarize > 0 and cam not in names else ())


def _nifti_files(folder: Path) -> dict[str, Path]:
    return {stem(p): p for p in folder.iterdir() if is_nifti(p)}


def _is_case(folder: Path) -> bool:
    return folder.is_dir() and any(stem(p).startswith(f"{folder.name}_")
                                   for p in folder.iterdir() if is_nifti(p))


def case_folders(root: Path) -> list[Path]:
    """The case folders under ``root``, which may hold them directly or one level down."""
    if not root.is_dir():
        raise MissingData(f"--data-dir {root}: no such folder; BraTS 2020 needs registration: "
                          f"get {RELEASE} from {WHERE} and put it in {root} (or pass "
                          f"--data-dir)")
    children = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    cases = [p for p in children if _is_case(p)]
    if cases:
        return cases
    for child in sorted(children, key=lambda p: p.name != RELEASE):
        cases = sorted(p for p in child.iterdir() if _is_case(p))
        if cases:
            return cases
    raise DataError(f"--data-dir {root}: no BraTS cases found (expected <case>/<case>_flair.nii.gz "
                    f"…, or {RELEASE}/ holding them); get the data from {WHERE}")


def find_seg(folder: Path, files: dict[str, Path]) -> Path:
    """``<case>_seg``, or the one other file whose name contains 'seg' (case 355)."""
    exact = files.get(f"{folder.name}_seg")
    if exact is not None:
        return exact
    modality_files = {f"{folder.name}_{m}" for m in MODALITIES}
    others = [p for s, p in files.items() if "seg" in s.lower() and s not in modality_files]
    if len(others) == 1:
        return others[0]
    if not others:
        raise DataError(f"{folder}: case {folder.name} has no label file "
                        f"({folder.name}_seg.nii.gz); restore it or remove the case folder")
    raise DataError(f"{folder}: several candidate label files "
                    f"({', '.join(sorted(p.name for p in others))}); keep only "
                    f"{folder.name}_seg.nii.gz")


@dataclass(frozen=True)
class Brats(FileDatasetBase):
    """BraTS 2020 training data (whole tumour), the authors' preprocessing."""

    name: str = "brats"
    description: str = "BraTS 2020 training data, whole tumour, FLAIR 128x128 crops (no download)"
    needs_data_dir: bool = True
    modalities: str = option("flair", BRAIN_HELP["modalities"])
    crop: str = option(DEFAULT_CROP, BRAIN_HELP["crop"])
    cam_binarize: float = option(0.0, BRAIN_HELP["cam_binarize"])
    cam_value: float = option(255.0, BRAIN_HELP["cam_value"])
    cam_modality: str = option("flair", BRAIN_HELP["cam_modality"])
    cache_version: int = 2
    fixed_fields = ("needs_data_dir", "cache_version")
    # declared (wsss_bench.contracts.Dataset); reads_files comes from FileDatasetBase
    archive: ClassVar[None] = None
    download_note: ClassVar[str] = (f"BraTS 2020 needs registration: get {RELEASE} from "
                                    f"{WHERE} and pass the folder that holds it as --data-dir")

    @property
    def cam_view(self) -> bool:
        """Declared: its cases carry a CAM view when ``cam_binarize > 0``."""
        return self.cam_binarize > 0

    def __post_init__(self) -> None:
        check_brain_options(self)

    def sources(self, data_dir: Path) -> list[CaseFiles]:
        out = []
        for folder in case_folders(Path(data_dir)):
            files = _nifti_files(folder)
            found: dict[str, Path] = {}
            for m in needed_modalities(self):
                path = files.get(f"{folder.name}_{m}")
                if path is None:
                    raise DataError(self._missing(folder, files, m))
                found[m] = path
            found["seg"] = find_seg(folder, files)
            out.append(CaseFiles(folder.name, found))
        return out

    def _missing(self, folder: Path, files: dict[str, Path], modality: str) -> str:
        """The message for a missing modality file, with the override(s) that would work."""
        have = [m for m in MODALITIES if f"{folder.name}_{m}" in files]
        fixes = []
        keep = [m for m in parse_modalities(self.modalities, self.name) if m in have] or have
        if modality in parse_modalities(self.modalities, self.name) and keep:
            fixes.append(f"-o {self.name}.modalities={','.join(keep)}")
        cam = self.cam_modality.strip().lower()
        if self.cam_binarize > 0 and cam not in have:  # the CAM view's modality is missing too
            fixes.append(f"-o {self.name}.cam_modality={keep[0]}" if keep
                         else f"-o {self.name}.cam_binarize=0")
        fix = f"pass {' '.join(fixes)}" if fixes else "restore the files"
        return (f"{folder}: case {folder.name} has no {modality} file ({folder.name}_{modality}"
                f".nii.gz; it has {', '.join(have) or 'no modality'}): {fix}")

    def load(self, source: CaseFiles) -> Case:
        volumes = {m: (source.files[m], read_image(source.files[m], 3))
                   for m in needed_modalities(self)}
        images = [volumes[m] for m in parse_modalities(self.modalities, self.name)]
        mask = read_mask(source.files["seg"], LABELS, images[0][1].shape)
        box = parse_crop(self.crop, self.name)
        slices, masks = brain_case(source.case_id, source.files["seg"].parent, images, mask, box)
        return Case(source.case_id, slices, masks,
                    cam_view(self, volumes, box, slices.shape[1]))


@hookimpl
def register_datasets(register: Register) -> None:
    register(Brats())
