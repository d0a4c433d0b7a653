"""Medical Segmentation Decathlon datasets: ``decathlon`` (Task05_Prostate) and ``msd-brain``
(Task01_BrainTumour).

Layout (as the MSD tars unpack): ``<TaskXX>/imagesTr/<case>.nii.gz`` (4-D: x, y, z, channel)
and ``<TaskXX>/labelsTr/<case>.nii.gz``. ``--data-dir`` may be the task folder or the folder
that holds it. Cases are found by listing both folders, never through ``dataset.json`` (whose
spelling of the file names varies between copies); hidden files (the ``._*`` companions that
macOS tar leaves) are ignored. Missing data is downloaded (md5-verified; see
:mod:`wsss_bench.download`).

``decathlon`` (the paper's prostate set): ADC by default (``modality``: adc, t2, both), labels
{0 background, 1 PZ, 2 TZ} → prostate = label > 0, each slice resized to ``size``×``size`` (320:
area averaging where a slice shrinks, bilinear where it grows; labels nearest). Intensities are
min–max normalised per slice and channel to [0, 1]: T2 is in arbitrary scanner units and ADC
scales differ between sites and protocols, so a common range is needed to train from scratch;
it is also what the authors did for BraTS and the paper says the prostate "followed a similar
scheme", and it keeps the background at 0 for the filters.

``msd-brain``: the BraTS-derived Task01 (FLAIR, T1w, T1gd, T2w = channels 0-3; labels {0,1,2,3}),
with the same preprocessing as ``brats``: per-slice min–max on the full slice, crop, and the
same optional CAM view (``cam_binarize``, ``cam_value``, ``cam_modality``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from wsss_bench import hookimpl
from wsss_bench.contracts import Case, CaseFiles
from wsss_bench.download import Archive
from wsss_bench.hookspecs import Register
from wsss_bench.options import option
from wsss_bench.volumes import (
    DataError,
    FileDatasetBase,
    MissingData,
    brain_case,
    channels,
    is_nifti,
    mask_slices,
    minmax_slices,
    parse_crop,
    read_image,
    read_mask,
    resize_slices,
    stem,
    to_slices,
)
from wsss_bench_plugins.brats import (
    BRAIN_HELP,
    DEFAULT_CROP,
    cam_view,
    check_brain_options,
    needed_modalities,
    parse_modalities,
)

HOST = "https://msd-for-monai.s3-us-west-2.amazonaws.com"
PROSTATE_MODALITIES = {"t2": (0,), "adc": (1,), "both": (0, 1)}
BRAIN_CHANNELS = {"flair": 0, "t1": 1, "t1ce": 2, "t2": 3}


def task_root(data_dir: Path, task: str) -> Path:
    """``data_dir`` itself when it is the task folder, else ``data_dir/<task>``."""
    data_dir = Path(data_dir)
    if data_dir.name == task and (data_dir / "imagesTr").is_dir():
        return data_dir
    return data_dir / task


def msd_sources(data_dir: Path, task: str) -> list[CaseFiles]:
    """Pair ``imagesTr`` and ``labelsTr`` files by name; a file without its partner is an error."""
    root = task_root(data_dir, task)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        raise MissingData(f"--data-dir {data_dir}: no {task}/imagesTr folder")
    images = {stem(p): p for p in images_dir.iterdir() if is_nifti(p)}
    labels = ({stem(p): p for p in labels_dir.iterdir() if is_nifti(p)}
              if labels_dir.is_dir() else {})
    if not images:
        raise DataError(f"{images_dir}: no cases (no .nii.gz files); download or copy {task} "
                        f"again")
    for case, path in sorted(images.items()):
        if case not in labels:
            raise DataError(f"{path}: case {case} has no label file ({labels_dir}/"
                            f"{case}.nii.gz); restore it or remove the image")
    for case, path in sorted(labels.items()):
        if case not in images:
            raise DataError(f"{path}: label of case {case} has no image ({images_dir}/"
                            f"{case}.nii.gz); restore it or remove the label")
    return [CaseFiles(c, {"image": images[c], "label": labels[c]}) for c in sorted(images)]


class MsdTask(FileDatasetBase):
    """What every MSD task shares: the archive (``url``, ``md5``, ``task``) and the layout."""

    url: str
    md5: str
    task: str
    download_note: ClassVar[str] = ""  # declared; it has an archive

    @property
    def archive(self) -> Archive:
        """Declared: the MSD tar of the task."""
        return Archive(self.url, self.md5, self.task)

    def sources(self, data_dir: Path) -> list[CaseFiles]:
        return msd_sources(data_dir, self.task)


@dataclass(frozen=True)
class Decathlon(MsdTask):
    """MSD Task05_Prostate: prostate (PZ + TZ) from ADC slices at 320×320."""

    name: str = "decathlon"
    description: str = "MSD Task05 prostate (CC-BY-SA 4.0), ADC slices at 320x320, downloadable"
    needs_data_dir: bool = True
    modality: str = option("adc", "channels: adc, t2, or both (t2 then adc)")
    size: int = option(320, "slice side in pixels after resizing (at least 32; area averaging "
                            "to shrink, bilinear to grow, labels nearest)")
    url: str = option(f"{HOST}/Task05_Prostate.tar",
                      "where Task05_Prostate.tar is downloaded from (e.g. a mirror)")
    md5: str = option("35138f08b1efaef89d7424d2bcc928db",
                      "md5 the downloaded archive must have (checked before unpacking)")
    cache_version: int = 1
    task = "Task05_Prostate"
    labels = (0, 1, 2)
    fixed_fields = ("needs_data_dir", "cache_version")
    cam_view: ClassVar[bool] = False  # declared: CAMs see the training view

    def __post_init__(self) -> None:
        if self.modality not in PROSTATE_MODALITIES:
            raise ValueError(f"{self.name}: modality must be one of "
                             f"{', '.join(PROSTATE_MODALITIES)}, got {self.modality!r}")
        if self.size < 32:
            raise ValueError(f"{self.name}: size must be at least 32, got {self.size}")

    def load(self, source: CaseFiles) -> Case:
        path = source.files["image"]
        volume = read_image(path, 4)
        volume = channels(path, volume, PROSTATE_MODALITIES[self.modality],
                          f"{self.name} modality {self.modality}")
        mask = read_mask(source.files["label"], self.labels, volume.shape[:3])
        images, masks = resize_slices(to_slices(minmax_slices(volume)), mask_slices(mask),
                                      self.size)
        return Case(source.case_id, images, masks)


@dataclass(frozen=True)
class MsdBrain(MsdTask):
    """MSD Task01_BrainTumour (BraTS-derived): whole tumour, preprocessed as ``brats``."""

    name: str = "msd-brain"
    description: str = "MSD Task01 brain tumour (CC-BY-SA 4.0), FLAIR 128x128 crops, downloadable"
    needs_data_dir: bool = True
    modalities: str = option("flair", BRAIN_HELP["modalities"])
    crop: str = option(DEFAULT_CROP, BRAIN_HELP["crop"])
    cam_binarize: float = option(0.0, BRAIN_HELP["cam_binarize"])
    cam_value: float = option(255.0, BRAIN_HELP["cam_value"])
    cam_modality: str = option("flair", BRAIN_HELP["cam_modality"])
    url: str = option(f"{HOST}/Task01_BrainTumour.tar",
                      "where Task01_BrainTumour.tar is downloaded from (e.g. a mirror)")
    md5: str = option("240a19d752f0d9e9101544901065d872",
                      "md5 the downloaded archive must have (checked before unpacking)")
    cache_version: int = 2
    task = "Task01_BrainTumour"
    labels = (0, 1, 2, 3)
    fixed_fields = ("needs_data_dir", "cache_version")

    def __post_init__(self) -> None:
        check_brain_options(self)

    @property
    def cam_view(self) -> bool:
        """Declared: its cases carry a CAM view when ``cam_binarize > 0``."""
        return self.cam_binarize > 0

    def load(self, source: CaseFiles) -> Case:
        path = source.files["image"]
        names = needed_modalities(self)
        volume = read_image(path, 4)
        volume = channels(path, volume, [BRAIN_CHANNELS[m] for m in names],
                          f"{self.name} modalities {','.join(names)}")
        mask = read_mask(source.files["label"], self.labels, volume.shape[:3])
        volumes = {m: (path, volume[..., i]) for i, m in enumerate(names)}
        images = [volumes[m] for m in parse_modalities(self.modalities, self.name)]
        box = parse_crop(self.crop, self.name)
        slices, masks = brain_case(source.case_id, path.parent, images, mask, box)
        return Case(source.case_id, slices, masks,
                    cam_view(self, volumes, box, slices.shape[1]))


@hookimpl
def register_datasets(register: Register) -> None:
    register(Decathlon())
    register(MsdBrain())
