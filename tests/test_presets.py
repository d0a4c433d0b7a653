"""``--preset paper`` and ``--config run.toml``: precedence, errors, and the paper preset on the
real BraTS sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_cli import run_captured, run_main
from wsss_bench.cli import build_parser, run_config
from wsss_bench.runner import RunConfig


def config_of(args: list[str]) -> RunConfig:
    return run_config(build_parser().parse_args(["run", *args]))


def test_defaults_without_preset_or_config():
    config = config_of([])
    assert config == RunConfig(preset=None)


def test_paper_preset_per_dataset():
    """The common part; tests/test_paper_preset.py checks every setting against the
    authors'."""
    brats = config_of(["--preset", "paper", "--dataset", "brats"])
    assert brats.backbones == ("resnet34", "resnet50")
    assert brats.ensembles == ("and", "or", "smaller", "bigger")
    assert brats.filters == ("none", "brain-band")
    decathlon = config_of(["--preset", "paper", "--dataset", "decathlon"])
    assert decathlon.filters == ("none", "center-box")
    assert decathlon.preset == "paper"


def test_config_file_and_flags_override_the_preset(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('dataset = "brats"\npreset = "paper"\nepochs = 3\n'
                    'backbones = "resnet18,resnet34"\nseeds = [0, 1]\n[options.brats]\n'
                    'crop = "56:184,56:184,60:76"\ncam_binarize = 0.8\n')
    config = config_of(["--config", str(toml), "--epochs", "1", "-o", "brats.cam_binarize=0.5",
                        "--no-pretrained"])
    assert config.preset == "paper" and config.dataset == "brats"
    assert config.epochs == 1  # flag > file > preset
    assert config.batch_size == 32  # preset
    assert config.backbones == ("resnet18", "resnet34")  # file
    assert config.seeds == (0, 1) and config.pretrained is False
    assert config_of(["--config", str(toml), "--image-size", "64"]).image_size == 64
    assert config.options["brats"] == {
        "modalities": "flair,t1ce,t2", "crop": "56:184,56:184,60:76", "cam_binarize": "0.5",
        "cam_value": "255", "cam_modality": "flair"}


@pytest.mark.parametrize(("args", "content", "needle"), [
    (["--preset", "fast"], None, "--preset fast: unknown preset"),
    (["--preset", "paper"], None, "no settings for dataset 'phantom'"),
    (["--config", "{toml}"], "epochz = 3\n", "unknown setting 'epochz'"),
    (["--config", "{toml}"], "epochs = \n", "not readable TOML"),
    (["--config", "{toml}"], 'epochs = "many"\n', "epochs = 'many'"),
    (["--config", "{toml}"], "gate = 1\n", "expected true or false"),
    (["--config", "{toml}"], "options = 3\n", "must be tables"),
    (["--config", "{missing}"], None, "no such file"),
    (["--config", "{toml}"], 'image-size = "big"\n', "image_size = 'big'"),
    (["--config", "{toml}"], "device = 1\n", "device = 1: expected a string"),
    (["--config", "{toml}"], "epochs = true\n", "expected an integer"),
    (["--config", "{toml}"], 'dataset = ["brats"]\npreset = "paper"\n', "expected a name"),
    (["--config", "{toml}"], "backbones = [1, 2]\n", "expected names"),
    (["--force", "everything"], None, "--force everything: stages are prepare, train"),
    (["--amp", "maybe"], None, "--amp"),
    (["--gpus", "2"], None, "--gpus 2: this machine has 0 CUDA GPU(s)"),
    (["--seeds", "1,1"], None, "a seed is listed twice"),
    (["--seeds", "a"], None, "comma-separated integers"),
    (["--leaderboard-name", "../x"], None, "--leaderboard-name"),
    (["--weights", "{missing}"], None, "no such folder"),
])
def test_bad_settings_are_one_line(tmp_path, capsys, args, content, needle):
    toml = tmp_path / "run.toml"
    if content is not None:
        toml.write_text(content)
    args = [a.format(toml=toml, missing=tmp_path / "missing") for a in args]
    code, err = run_captured(["run", *args, "--workdir", str(tmp_path / "w"),
                              "--leaderboard-dir", str(tmp_path / "b")], capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and needle in err, err
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_paper_preset_on_the_real_brats_sample(brats_sample, tmp_path):
    """The preset with CPU-sized overrides: every paper ensemble with and without the filter
    (6 slices per case, each fold holding lesions: ResNet-34 and -50 train on every fold)."""
    boards = tmp_path / "b"
    code = run_main(["run", "--preset", "paper", "--dataset", "brats", "--data-dir",
                     str(brats_sample), "--epochs", "1", "--batch-size", "16", "--image-size",
                     "64", "-o", "brats.crop=56:184,56:184,60:66", "-o",
                     "brats.modalities=flair,t1ce", "--workdir",
                     str(tmp_path / "w"), "--leaderboard-dir", str(boards), "-q"])
    assert code == 0
    board = json.loads((boards / "brats.json").read_text())
    measured = {r["method"] for r in board["rows"] if r["source"] == "measured"}
    expected = {"Empty"} | {
        f"{core} / gradcam / {filt}" for filt in ("none", "brain-band")
        for core in ("resnet34", "resnet50", "and(resnet34,resnet50)", "or(resnet34,resnet50)",
                     "<(resnet34,resnet50)", ">(resnet34,resnet50)")}
    assert measured == expected
    row = next(r for r in board["rows"] if r["method"] == "Empty")
    assert row["run"]["config"]["preset"] == "paper"
    assert row["run"]["config"]["epochs"] == 1 and row["run"]["config"]["batch_size"] == 16
    assert row["run"]["effective"]["weights"] == {"resnet34": "random", "resnet50": "random"}
    md = (boards / "brats.md").read_text()
    assert "- Reproduce: `wsss-bench run --preset paper" in md
    assert "crop=56:184,56:184,60:66" in md  # the preprocessing line of the header
    header = board  # the header fields sit at the top level of the board
    assert "epochs 1 (preset: 10)" in header["preset_overrides"]
    assert "-o brats.modalities=flair,t1ce (preset: flair,t1ce,t2)" in header["preset_overrides"]
    assert any("CAM input" in d["topic"] for d in header["deviations"])
    thresholds = next(r for r in board["rows"]
                      if r["method"] == "and(resnet34,resnet50) / gradcam / none")["thresholds"]
    assert len(thresholds) == 3 and thresholds[0] == thresholds[1] == thresholds[2]


def test_the_synthetic_paper_grid_config_is_the_papers_grid_at_brats_size():
    """configs/paper-grid-synthetic.toml (issue 16's GPU workload): 47,232 phantom slices of
    128×128, the paper's BraTS grid and training recipe."""
    from wsss_bench.core.presets import PRESETS

    path = Path(__file__).parent.parent / "configs" / "paper-grid-synthetic.toml"
    config = config_of(["--config", str(path)])
    phantom = config.options["phantom"]
    assert int(phantom["n_cases"]) * int(phantom["n_slices"]) == 47_232
    assert phantom["size"] == "128" and config.dataset == "phantom" and config.folds == 3
    brats = PRESETS["paper"]["brats"]
    for name in ("backbones", "cams", "ensembles", "epochs", "batch_size", "lr",
                 "threshold_step", "calibrate", "precise_bn", "cam_target", "amp"):
        assert getattr(config, name) == brats[name], name
    assert config.filters == ("none", "center-box")  # phantom has no brain band
