"""Where wsss-bench differs from the paper or from the authors' public code: the one list.

The paper: E. Ostrowski, B. S. Prabakaran and M. Shafique, "A Novel Weakly Supervised Semantic
Segmentation Ensemble Framework for Medical Imaging", IEEE conference paper, 2024 (earlier
version: arXiv:2303.07896); the authors' code: ErikOstrowski/Automated_Ensemble on GitHub.

Every entry says what the paper or the code does (``paper``, naming the code's file where it
comes from the code), what wsss-bench does (``here``), why (``why``), what kind of difference it
is (``kind``, one of ``KINDS``) and which datasets it concerns (``datasets``; () = all). The
README's "Deviations from the paper" section holds ``render_markdown(DEVIATIONS)`` between the
``START`` and ``END`` markers (a test keeps them equal; ``python -m wsss_bench.core.deviations
README.md`` rewrites the block), and a ``--preset`` run stores ``for_run(dataset)`` in its
leaderboard header.
"""

from __future__ import annotations

import dataclasses
import re
import textwrap
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

START = "<!-- deviations:start (python -m wsss_bench.core.deviations README.md writes this) -->"
END = "<!-- deviations:end -->"
KINDS = ("data we cannot get", "invented by us", "bug not copied", "default we chose",
         "reproduced as the code does")
BRAIN = ("brats", "msd-brain")


@dataclass(frozen=True)
class Deviation:
    topic: str
    paper: str  # what the paper or the authors' code does (with the code's file name)
    here: str   # what wsss-bench does
    why: str
    kind: str   # one of KINDS
    datasets: tuple[str, ...] = ()  # the datasets it concerns; () = all
    # an end-to-end method's port (``paper`` is then its reference implementation): the entry
    # concerns the runs that use one of these methods
    methods: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"deviation {self.topic!r}: kind must be one of {KINDS}, "
                             f"got {self.kind!r}")

    def concerns(self, dataset: str) -> bool:
        return not self.datasets or dataset in self.datasets


DEVIATIONS: tuple[Deviation, ...] = (
    Deviation(
        topic="Prostate data and split",
        paper="The paper took WSS-CMER's prostate slices (PNG) and its 3-fold split; neither is "
              "public. The authors' CAM script reads 8-bit PNGs and divides by 255.",
        here="Reads the MSD Task05_Prostate NIfTI volumes: ADC, each slice min–max normalised "
             "to [0, 1] and resized to 320×320; its own seeded patient-level split, written to "
             "`<workdir>/<dataset>/folds.json` and shown in every leaderboard header "
             "(`--folds-file` takes a published split instead).",
        why="WSS-CMER's slices and folds cannot be downloaded; MSD Task05_Prostate is the "
            "public dataset the paper names (32 cases).",
        kind="data we cannot get",
        datasets=("decathlon",),
    ),
    Deviation(
        topic="BraTS cases",
        paper="47,232 slices = 369 BraTS 2020 training cases × 128 slices.",
        here="Every case found under `--data-dir`, however many; `msd-brain` reads the cases of "
             "MSD Task01_BrainTumour, a BraTS-derived set, in place of BraTS 2020.",
        why="BraTS 2020 needs registration, so wsss-bench cannot download it; its full training "
            "release has the paper's 369 cases, a smaller folder (such as a test sample) fewer.",
        kind="data we cannot get",
        datasets=BRAIN,
    ),
    Deviation(
        topic="Filter sizes and order",
        paper="Decathlon: \"a small box area around the center\"; BraTS: brain pixels only, "
              "minus the pixels along the central horizontal line. The paper gives no sizes, "
              "and no public code of the authors contains a filter.",
        here="`center-box` (decathlon): a centred box, side 0.5 of the slice side; "
             "`brain-band` (brats, msd-brain): the brain pixels minus a centred horizontal band "
             "0.1 of the slice height wide. The filter zeroes the CAM before thresholding, so "
             "also before the per-slice '<' / '>' comparison of mask sizes.",
        why="The sizes are ours (options `side` and `width`), and so is the order: the paper "
            "does not say whether the box acts before or after the ensemble.",
        kind="invented by us",
        datasets=("decathlon", *BRAIN),
    ),
    Deviation(
        topic="Threshold calibration",
        paper="Fig. 6 shows the threshold grid on the training folds, averaged over the three "
              "folds; the code (brats/brats_eval_smaller.py and the other evaluation scripts) "
              "uses one fixed pair for every fold (TH34 = 0.6, TH50 = 0.8).",
        here="By default (`--calibrate per-fold`) one threshold tuple per fold, chosen on that "
             "fold's training slices. `--calibrate across-folds`, which `--preset paper` uses, "
             "picks one tuple maximising the mean of the folds' training grids (the paper's "
             "Fig. 6).",
        why="Per-fold calibration never sees a fold's validation cases. Across folds, each "
            "fold's validation cases are in the other folds' training sets, so the chosen tuple "
            "has seen them: the paper's protocol, but a less clean held-out estimate.",
        kind="default we chose",
    ),
    Deviation(
        topic="CAM input (BraTS)",
        paper="The code trains on [FLAIR, T1ce, T2] stacked as channels (each slice min–max "
              "normalised) but takes the Grad-CAM of FLAIR binarised at 0.8 (`>= 0.8` → 255, "
              "else 0) copied into all three channels (brats/brats_GradCAM_res34.py).",
        here="Reproduced by the dataset options `cam_binarize=0.8` (the threshold, `>=`), "
             "`cam_value=255` (the value of the pixels at or above it: the code's 255, although "
             "the network was trained on [0, 1] inputs; `cam_value=1` gives the training range) "
             "and `cam_modality=flair`, stored as a CAM-time view beside the training view in "
             "the slice cache. Filters always see the un-binarised training view.",
        why="`--preset paper` reproduces the published pipeline, including the difference "
            "between training input and CAM input; the options make each part of it visible "
            "and changeable (`cam_binarize=0`, the default outside the preset: CAMs of the "
            "training input).",
        kind="reproduced as the code does",
        datasets=BRAIN,
    ),
    Deviation(
        topic="Class the CAM explains",
        paper="The code takes the Grad-CAM of the class predicted for the CAM input (the "
              "binarised image).",
        here="`--cam-target predicted` does the same and is what `--preset paper` uses; "
             "outside the preset the default is `--cam-target positive` (the lesion class on "
             "every slice).",
        why="With `predicted`, almost no row of a short CPU run beats `Empty`.",
        kind="default we chose",
    ),
    Deviation(
        topic="BatchNorm statistics (precise BN)",
        paper="The authors evaluate with BatchNorm's running averages from training.",
        here="After training, the BatchNorm statistics of the final weights are recomputed over "
             "the training slices (`--precise-bn on`, the default); `--precise-bn off`, which "
             "`--preset paper` uses, keeps the running averages as the authors do.",
        why="Without it the eval-mode classifiers of a 3-epoch run were at chance (measured: "
            "accuracy 0.47, against 0.93 training accuracy).",
        kind="default we chose",
    ),
    Deviation(
        topic="Backbones and training of the default run",
        paper="ResNet-34 and ResNet-50, SGD with lr 1e-3 and momentum 0.9, 10 epochs (BraTS) "
              "or 5 (prostate).",
        here="`--preset paper` trains exactly that. Without a preset, `wsss-bench run` trains "
             "timm's two smallest CNNs, `timm:test_resnet` (0.37 M parameters) and "
             "`timm:test_byobnet` (0.20 M), for 3 epochs at lr 0.02 (momentum 0.9); on the "
             "64×64 phantom `--output-stride auto` builds them at stride 16 (4×4 CAMs). The lr "
             "applies to any backbone run without a preset; set `--lr` for larger models.",
        why="The default run is the README's quick first command. ResNet-18/34 for 2 epochs "
            "at lr 1e-3 (the earlier default) took 3–4 minutes on 2 CPU cores and left the "
            "classifiers barely trained (best row 0.675 paper_dsc against `Empty` 0.657, "
            "foreground Dice 0.13); the small models train 6–10× more images per second, and "
            "3 epochs at lr 0.02 give the `and` ensemble 0.833–0.846 paper_dsc (0.823–0.853 "
            "on each fold) against `Empty` 0.654–0.659, foreground Dice 0.62–0.66 (phantom "
            "and training seeds 0, 1 and 2), in 24 s of training.",
        kind="default we chose",
    ),
    Deviation(
        topic="Numeric precision on a GPU",
        paper="The authors' code trains and maps in float32.",
        here="On CUDA, training and CAMs use float16 autocast with a gradient scaler by default "
             "(`--amp auto`); `--preset paper` sets `--amp off`, float32 as the authors.",
        why="Mixed precision roughly halves the time and memory of a GPU run; the CAM "
            "arithmetic itself stays float32 either way.",
        kind="default we chose",
    ),
    Deviation(
        topic="Classifier head",
        paper="The code replaces the fc layer by `nn.Linear(512 or 2048, 2, bias=False)`.",
        here="timm's classifier layer for 2 classes, which has a bias.",
        why="Every backbone is built the same way through timm. The bias does not enter the "
            "gradient Grad-CAM uses (∂y_c/∂A), but it takes part in training and in which class "
            "is predicted.",
        kind="default we chose",
    ),
    Deviation(
        topic="ImageNet weights",
        paper="torchvision's `pretrained=True` ImageNet weights.",
        here="`--pretrained` (in `--preset paper`) loads timm's `resnet34.tv_in1k` / "
             "`resnet50.tv_in1k`, the same torchvision weights; when the hub cannot be reached "
             "the run falls back to random weights and records it (`run.effective.weights`).",
        why="wsss-bench builds every backbone through timm; the fallback keeps offline runs "
            "possible, and the record keeps them apart.",
        kind="reproduced as the code does",
        datasets=("decathlon",),
    ),
    Deviation(
        topic="Bugs in the public code",
        paper="brats/brats_GradCAM_res34.py mixes tabs and spaces in its main loop (a TabError); "
              "CAMs are saved as `*.png.npy` (np.save adds .npy to a name ending in .png); "
              "where the ReLU'd Grad-CAM is all zero, cam / max(cam) = 0/0 gives a NaN map.",
        here="None of them is copied: CAMs go to wsss-bench's artifact store, and a flat map is "
             "all 0, never NaN.",
        why="They are bugs. Under the rule `cam > t` an all-0 map and a NaN map both give the "
            "empty mask for every threshold t ≥ 0, so the masks are the same; the stored maps "
            "stay finite.",
        kind="bug not copied",
    ),
    Deviation(
        topic="Seeds",
        paper="The authors' DataLoader shuffles without a seed.",
        here="Everything is seeded (split, initial weights, shuffling, noise): the same settings "
             "give the same numbers to the bit on one machine.",
        why="Reproducible runs; `--seeds 0,1,2` averages over several seeds instead.",
        kind="default we chose",
    ),
    Deviation(
        topic="A reported number",
        paper="Table III gives ResNet-34-GradCAM a DSC of 78.0 with mIoU 63.8.",
        here="Shown as reported, with a note beside the row on the leaderboard; every other "
             "reported row satisfies DSC = 2·mIoU/(1 + mIoU) within rounding (tested).",
        why="2·63.8/163.8 = 77.9, and no mIoU that rounds to 63.8 gives a DSC that rounds to "
            "78.0: the paper's rounding or a typo.",
        kind="default we chose",
        datasets=("decathlon",),
    ),
    Deviation(
        topic="SEAM: optimiser momentum",
        paper="`tool/torchutils.py` `PolyOptimizer` calls `SGD(params, lr, weight_decay)`, so "
              "the weight decay 5e-4 lands in SGD's momentum slot: momentum 5e-4, no weight "
              "decay.",
        here="SGD with momentum 0.9 and weight decay 5e-4 on the weights (`seam.momentum`, "
             "`seam.weight_decay`), poly decay (power 0.9) as in the reference.",
        why="A confirmed bug: the reference's call passes the arguments by position.",
        kind="bug not copied", methods=("seam",),
    ),
    Deviation(
        topic="SEAM: BatchNorm and backbone",
        paper="`network/resnet38_SEAM.py`: an ImageNet-pretrained wide ResNet-38 (output stride "
              "8) with every BatchNorm frozen; new layers at 10× (weights) and 20× (biases) the "
              "learning rate; Dropout2d(0.5) before the CAM head.",
        here="A backbone of the registry (`seam.backbone`, default resnet34 at output stride "
             "16), randomly initialised like every classifier here, BatchNorm trained, one "
             "learning rate (`seam.lr` 0.01), no dropout; the PCM reads the two stages before "
             "the last, detached as in the reference.",
        why="Frozen BatchNorm statistics cannot work from random initialisation, and the runs "
            "here start from random weights (no hub); the paper's classifiers are ResNets.",
        kind="default we chose", methods=("seam",),
    ),
    Deviation(
        topic="SEAM: two classes, ECR and ER",
        paper="`train_SEAM.py`: ECR averages the top int(21·h·w·0.2) differences (21 VOC "
              "classes hard-coded: it crashes with 2 channels); ER is the mean over 20 "
              "foreground channels, most of them zero for an image (an implicit small weight); "
              "the second view is rescaled by 0.3.",
        here="Two CAM channels (background, lesion); ECR's top-k from the actual channel count "
             "(int(2·h·w·0.2)); ER's weight is an option (`seam.er_weight`, default 1); the "
             "second view at 0.5 (`seam.view_scale`).",
        why="A binary task; at 128 px and stride 16 a 0.3 view gives 2×2 CAMs.",
        kind="bug not copied", methods=("seam",),
    ),
    Deviation(
        topic="SEAM: inference",
        paper="`infer_SEAM.py` multiplies each refined map by the image's ground-truth label "
              "before summing over scales 0.5, 1, 1.5, 2 × flips.",
        here="The refined lesion maps summed over `seam.scales` × flips and min–max normalised "
             "per slice as the reference does, without labels; `--gate` zeroes the slices "
             "SEAM's own classifier calls negative.",
        why="Ground-truth labels of the validation slices are not available to a weakly "
            "supervised method at test time; the CAM rows do not get them either.",
        kind="bug not copied", methods=("seam",),
    ),
    Deviation(
        topic="WSS-CMER: crashes",
        paper="`agents/wscmer.py` uses an undefined `HFlip` (NameError), and "
              "`graphs/losses/CMER_loss.py` `MapLossL2Norm.forward` an undefined `epsilon`.",
        here="The transform of both configs (`\"transformation\": \"all\"`: one of flip, "
             "rot90, translate ≤ 30 %, rescale 0.8–1.2 per batch) and the loss's default "
             "epsilon 1e-12.",
        why="Code that cannot run is not copied; what the configs select is.",
        kind="bug not copied", methods=("wss-cmer",),
    ),
    Deviation(
        topic="WSS-CMER: normalisation and upsampling",
        paper="The inference CAMs are min–max normalised over the whole batch (right only at "
              "batch size 1); the U-Net's \"bilinear\" upsampling is `nn.Upsample("
              "scale_factor=2)`, i.e. nearest.",
        here="Each slice's CAM min–max normalised on its own onto [0, 1]; true bilinear "
             "upsampling (align_corners=False).",
        why="A slice's map must not depend on the other slices of its batch (the contract "
            "kit checks it); bilinear is what the code names.",
        kind="bug not copied", methods=("wss-cmer",),
    ),
    Deviation(
        topic="WSS-CMER: model selection, randomness",
        paper="Each network is kept at its best validation accuracy (of the last validation "
              "batch only); the transforms are drawn with unseeded Python `random` and kornia "
              "(per slice), on BraTS 2019 at 240 px with T1 and T2.",
        here="The last epoch is kept; every draw comes from the unit's seeded generator, once "
             "per batch (exact rot90, integer shifts); the dataset's own channels (one network "
             "each) and folds, `--epochs` as for the classifiers.",
        why="Choosing by validation accuracy would look at the held-out fold; the same seed "
            "gives the same maps; every row is measured on the same folds and inputs.",
        kind="default we chose", methods=("wss-cmer",),
    ),
)


def for_run(dataset: str, methods: Iterable[str] = ()) -> list[Deviation]:
    """The entries that concern ``dataset`` (those for all datasets included) and, of the
    entries about an end-to-end method's port, those of ``methods``, in list order."""
    used = set(methods)
    return [d for d in DEVIATIONS
            if d.concerns(dataset) and (not d.methods or used & set(d.methods))]


def _as_dict(entry: Deviation | Mapping[str, Any]) -> Mapping[str, Any]:
    return dataclasses.asdict(entry) if isinstance(entry, Deviation) else entry


_CODE = re.compile(r"`[^`]*`")
_WIDTH = 100


def _wrap(text: str, first: str, rest: str) -> list[str]:
    """``text`` wrapped at ``_WIDTH`` columns, never inside a `code span`."""
    keep = _CODE.sub(lambda m: m.group(0).replace(" ", "\0"), text)
    lines = textwrap.wrap(keep, _WIDTH, initial_indent=first, subsequent_indent=rest,
                          break_long_words=False, break_on_hyphens=False)
    return [line.replace("\0", " ") for line in lines]


def render_markdown(entries: Iterable[Deviation | Mapping[str, Any]]) -> str:
    """A markdown list, one item per entry: topic, kind and datasets, then what the paper or
    its code does, what wsss-bench does and why. Takes entries or their ``asdict`` form (as
    stored in a leaderboard header)."""
    lines: list[str] = []
    for entry in map(_as_dict, entries):
        datasets = ", ".join(f"`{d}`" for d in entry.get("datasets") or ()) or "all datasets"
        methods = entry.get("methods") or ()
        used = f"; `--methods {','.join(methods)}`" if methods else ""
        lines.append(f"- **{entry['topic']}** ({entry['kind']}; {datasets}{used})")
        source = "Reference implementation" if methods else "Paper / authors' code"
        for label, key in ((source, "paper"), ("wsss-bench", "here"), ("Why", "why")):
            lines += _wrap(f"{label}: {entry[key]}", "  - ", "    ")
    return "\n".join(lines) + "\n"


def with_block(text: str) -> str:
    """``text`` (the README) with the block between ``START`` and ``END`` set to
    ``render_markdown(DEVIATIONS)``; ValueError when the markers are missing."""
    start, end = text.find(START), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"no {START} ... {END} block")
    head = text[:start + len(START)]
    return f"{head}\n{render_markdown(DEVIATIONS)}{text[end:]}"


if __name__ == "__main__":  # python -m wsss_bench.core.deviations [README.md]
    import sys
    from pathlib import Path

    if len(sys.argv) > 1:
        path = Path(sys.argv[1])
        path.write_text(with_block(path.read_text(encoding="utf-8")), encoding="utf-8")
    else:
        print(render_markdown(DEVIATIONS), end="")
