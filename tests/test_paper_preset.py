"""``--preset paper`` is the authors' pipeline: one assertion per setting, against the paper
(Section IV) and the authors' public code (ErikOstrowski/Automated_Ensemble), with the plugin
objects the runner would build; the override lines of a preset run; the one-line error on
data without the preset's T2."""

from __future__ import annotations

import timm

from tests.test_cli import run_captured
from tests.test_presets import config_of
from wsss_bench import options
from wsss_bench.core import presets
from wsss_bench.registry import load_registry

REGISTRY = load_registry()


def plugin(config, kind: str, name: str):
    """The plugin object ``name`` configured with the run's options, as the runner builds it."""
    return options.configure(REGISTRY.kind(kind)[name], config.options.get(name, {}))


def test_brats_preset_is_the_authors_brats_pipeline():
    config = config_of(["--preset", "paper", "--dataset", "brats"])
    brats = plugin(config, "datasets", "brats")
    # brats_Classifier_res34/50.py: torchvision ResNet-34 and ResNet-50
    assert config.backbones == ("resnet34", "resnet50")
    # paper: "We use T1c, T2, and FLAIR for classifier training" ([FLAIR, T1ce, T2] channels)
    assert brats.modalities == "flair,t1ce,t2"
    # brats_GradCAM_res34.py: FLAIR, `img[img < 0.8] = 0; img[img > 0] = 255`, 3 channels
    assert brats.cam_binarize == 0.8
    assert brats.cam_value == 255.0
    assert brats.cam_modality == "flair"
    # authors' preprocessing: 128 slices of 128×128 per case
    assert brats.crop == "56:184,56:184,13:141"
    # brats_Classifier_res34.py: `pretrained = False`, epoch = 10, batch_size = 32, SGD lr 1e-3
    assert config.pretrained is False
    assert config.epochs == 10
    assert config.batch_size == 32
    assert config.lr == 1e-3
    # the running BatchNorm averages of the last epoch (no recomputation)
    assert config.precise_bn == "off"
    # float32 everywhere (no autocast), on a GPU too
    assert config.amp == "off"
    # GradCam(..., index=None): the Grad-CAM of the predicted class, at layer4
    assert config.cams == ("gradcam",)
    assert config.cam_target == "predicted"
    assert config.gate is False
    # brats_eval_{AND,OR,smaller,bigger}.py
    assert config.ensembles == ("and", "or", "smaller", "bigger")
    # Table II: every method with and without the (brain) box filter
    assert config.filters == ("none", "brain-band")
    # Fig. 6: the training grid averaged over the three folds, one pair for all folds
    assert config.calibrate == "across-folds"
    assert config.folds == 3
    assert config.threshold_step == 0.1


def test_msd_brain_preset_matches_brats():
    config = config_of(["--preset", "paper", "--dataset", "msd-brain"])
    brain = plugin(config, "datasets", "msd-brain")
    assert (brain.modalities, brain.cam_binarize, brain.cam_value, brain.cam_modality) == (
        "flair,t1ce,t2", 0.8, 255.0, "flair")
    assert (config.precise_bn, config.calibrate, config.epochs, config.batch_size) == (
        "off", "across-folds", 10, 32)


def test_decathlon_preset_is_the_authors_prostate_pipeline():
    config = config_of(["--preset", "paper", "--dataset", "decathlon"])
    decathlon = plugin(config, "datasets", "decathlon")
    assert decathlon.modality == "adc"
    assert decathlon.size == 320  # deca/GradCAM_RES34.py: cv2.resize(img, (320, 320))
    assert config.backbones == ("resnet34", "resnet50")
    # deca_Classifier_res34.py: ImageNet weights (torchvision `pretrained=True`), 5 epochs, 4
    assert config.pretrained is True
    assert config.epochs == 5
    assert config.batch_size == 4
    assert config.precise_bn == "off"
    assert config.cam_target == "predicted"
    assert config.filters == ("none", "center-box")
    assert config.calibrate == "across-folds"
    # torchvision's weights are timm's `tv_in1k` tags (timm's default for both is a1_in1k)
    for name in ("resnet34", "resnet50"):
        backbone = plugin(config, "backbones", name)
        assert backbone.pretrained_tag == "tv_in1k"
        assert backbone._hub_name(True) == f"{name}.tv_in1k"
        assert backbone._hub_name(False) == name
        assert f"{name}.tv_in1k" in timm.list_pretrained(f"{name}.*")
    # and no CAM view: the authors' prostate CAM input is the training input
    assert not hasattr(decathlon, "cam_binarize")


def test_preset_options_of_replaced_backbones_are_dropped():
    config = config_of(["--preset", "paper", "--dataset", "decathlon", "--backbones",
                        "resnet18,resnet34"])
    assert "resnet50" not in config.options
    assert config.options["resnet34"] == {"pretrained_tag": "tv_in1k"}
    assert presets.overrides(config, REGISTRY) == ["backbones resnet18,resnet34 (preset: "
                                                   "resnet34,resnet50)"]


def test_overrides_list_what_a_preset_run_changed():
    def overrides(args: list[str]) -> list[str]:
        return sorted(presets.overrides(config_of(args), REGISTRY))

    assert overrides(["--preset", "paper", "--dataset", "brats"]) == []
    assert overrides([]) == []
    assert overrides(["--preset", "paper", "--dataset", "brats", "--epochs", "2", "-o",
                      "brats.modalities=flair,t1ce", "--precise-bn", "on"]) == [
        "-o brats.modalities=flair,t1ce (preset: flair,t1ce,t2)", "epochs 2 (preset: 10)",
        "precise_bn on (preset: off)"]
    # settings the preset leaves at their defaults count too, and plugin options are compared
    # as the plugin parses them
    assert overrides(["--preset", "paper", "--dataset", "brats", "--image-size", "64",
                      "--lr", "0.1", "--seeds", "0,1", "--amp", "auto", "-o",
                      "brats.cam_binarize=0.80", "-o", "brain-band.width=0.2", "-o",
                      "resnet34.pretrained_tag=tv_in1k"]) == [
        "-o brain-band.width=0.2 (preset: 0.1)",
        "-o resnet34.pretrained_tag=tv_in1k (preset: )", "amp auto (preset: off)",
        "image_size 64 (preset: None)", "lr 0.1 (preset: 0.001)", "seeds 0,1 (preset: )"]
    # where and how fast a run goes is not an override
    assert overrides(["--preset", "paper", "--dataset", "brats", "--workdir", "elsewhere",
                      "--cam-batch-size", "8", "--workers", "1", "--device", "cpu"]) == []


def test_precise_bn_and_calibrate_flags_default_as_before():
    config = config_of([])
    assert (config.precise_bn, config.calibrate) == ("on", "per-fold")
    assert config_of(["--precise-bn", "off"]).precise_bn == "off"
    assert config_of(["--calibrate", "across-folds"]).calibrate == "across-folds"


def test_preset_on_data_without_t2_names_the_missing_modality_and_the_override(
        brats_fixture, tmp_path, capsys):
    code, err = run_captured(["run", "--preset", "paper", "--dataset", "brats", "--data-dir",
                              str(brats_fixture), "--workdir", str(tmp_path / "w"),
                              "--leaderboard-dir", str(tmp_path / "b")], capsys)
    assert code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert "has no t2 file" in err and "-o brats.modalities=flair,t1ce" in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "b").exists()
