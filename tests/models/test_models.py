"""Contract tests for segaudit.models: every arch builds and trains a step, its parameters split into
layer groups exactly once, the sigmoid option leaves no ReLU, and loading accepts safe formats only."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from segaudit import models as M
from segaudit.errors import SegauditError
from segaudit.models.activations import relu_calls
from segaudit.models.catalog import import_smp

SEGMENTATION = list(M.SEGMENTATION_ARCHS)  # smp's; the MONAI networks: tests/models/test_monai.py
CLASSIFICATION = M.available_archs()["classification"]
KINDS = {"encoder", "decoder", "skip", "head", "other"}
# aten ops a ReLU/ReLU6 lowers to, whether called as a module, F.relu or Tensor.relu_.
RELU_OPS = {"relu", "relu_", "hardtanh", "hardtanh_", "threshold", "threshold_"}


class AtenOps(TorchDispatchMode):
    """Records every aten op run under it: an oracle independent of segaudit's own check."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def relu_ops(model: torch.nn.Module, x: torch.Tensor) -> set[str]:
    model.eval()
    with torch.no_grad(), AtenOps() as ops:
        model(x)
    return ops.names & RELU_OPS


def sample_input(arch: str, batch: int = 2, channels: int = 3) -> torch.Tensor:
    rules = M.size_rules(arch)
    height, width = rules.fixed_size or (max(64, rules.min_size),) * 2
    return torch.randn(batch, channels, height, width, generator=torch.Generator().manual_seed(0))


def assert_groups_partition(model: torch.nn.Module) -> list[M.LayerGroup]:
    groups = M.layer_groups(model)
    names = [n for n, _ in model.named_parameters()]
    grouped = [p for g in groups for p in g.params]
    assert sorted(grouped) == sorted(names)
    assert len(grouped) == len(set(grouped)), "a parameter is in two groups"
    assert len({g.name for g in groups}) == len(groups), "two groups share a name"
    assert all(g.kind in KINDS and g.params for g in groups)
    return groups


# --------------------------------------------------------------------------------------------------
# Building and training


@pytest.mark.parametrize("arch", SEGMENTATION)
def test_segmentation_arch_trains_one_step(arch):
    torch.manual_seed(0)
    model = M.build_model(arch, "resnet18", in_channels=3, classes=3).train()
    x = sample_input(arch)  # 64 px (PAN: 128), batch 2: ASPP/PSP pooling BatchNorm needs 2 in train mode
    logits = model(x)
    assert logits.shape == (2, 3, *x.shape[-2:])
    target = torch.randint(0, 3, (2, *x.shape[-2:]))
    torch.nn.functional.cross_entropy(logits, target).backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"parameters without gradient: {no_grad[:3]}"
    frozen = {n.split(".")[1] for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == ({"layer3", "layer4"} if arch == "pspnet" else set())  # PSPNet: encoder_depth=3
    assert M.is_segmentation(model)


@pytest.mark.parametrize("arch", ["lenet", "resnet18"])
def test_classifier_trains_one_step(arch):
    model = M.build_model(arch, in_channels=1, classes=10).train()
    x = sample_input(arch, channels=1)
    logits = model(x)
    assert logits.shape == (2, 10)
    torch.nn.functional.cross_entropy(logits, torch.tensor([1, 7])).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert not M.is_segmentation(model)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["densenet121", "inception_v3"])
def test_large_classifier_trains_one_step(arch):
    model = M.build_model(arch, in_channels=1, classes=4).train()
    logits = model(sample_input(arch, channels=1))
    assert logits.shape == (2, 4)
    logits.sum().backward()


def test_lenet_is_the_dlg_lenet():
    model = M.build_model("lenet", in_channels=3, classes=10)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    assert shapes == {
        "body.0.weight": (12, 3, 5, 5), "body.0.bias": (12,),
        "body.2.weight": (12, 12, 5, 5), "body.2.bias": (12,),
        "body.4.weight": (12, 12, 5, 5), "body.4.bias": (12,),
        "fc.0.weight": (10, 768), "fc.0.bias": (10,),
    }
    assert sum(p.numel() for p in model.parameters()) == 15826
    assert all(p.abs().max() <= 0.5 for p in model.parameters())  # DLG's uniform(-0.5, 0.5) init
    x = torch.randn(4, 3, 32, 32)
    assert model(x).shape == (4, 10)


def test_lenet_matches_a_manual_sigmoid_forward():
    model = M.build_model("lenet", classes=10).eval()
    p = dict(model.named_parameters())
    x = torch.randn(2, 3, 32, 32)
    h = torch.sigmoid(torch.nn.functional.conv2d(x, p["body.0.weight"], p["body.0.bias"], stride=2, padding=2))
    h = torch.sigmoid(torch.nn.functional.conv2d(h, p["body.2.weight"], p["body.2.bias"], stride=2, padding=2))
    h = torch.sigmoid(torch.nn.functional.conv2d(h, p["body.4.weight"], p["body.4.bias"], stride=1, padding=2))
    expected = torch.nn.functional.linear(h.flatten(1), p["fc.0.weight"], p["fc.0.bias"])
    torch.testing.assert_close(model(x), expected)


def test_lenet_hidden_size_follows_the_input_size():
    model = M.build_model("lenet", in_channels=1, classes=10, size=28)
    assert model.fc[0].in_features == 12 * 7 * 7
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(SegauditError, match=r"takes 28x28 images, got 32x32.*size=32"):
        model(torch.zeros(1, 1, 32, 32))


def test_in_channels_adapt_the_first_conv_of_classifiers():
    firsts = [("resnet18", "conv1"), ("densenet121", "features.conv0"), ("inception_v3", "Conv2d_1a_3x3.conv")]
    for arch, first in firsts:
        model = M.build_model(arch, in_channels=1, classes=5)
        assert model.get_submodule(first).in_channels == 1, arch


# --------------------------------------------------------------------------------------------------
# Activations


def smallest_input(arch: str) -> torch.Tensor:
    rules = M.size_rules(arch)
    return torch.randn(1, 3, *(rules.fixed_size or (rules.min_size, rules.min_size)))


@pytest.mark.parametrize("arch", SEGMENTATION + CLASSIFICATION)
def test_sigmoid_option_removes_every_relu(arch):
    model = M.build_model(arch, activation="sigmoid", classes=2)
    assert relu_ops(model, smallest_input(arch)) == set()
    assert not any(isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6)) for m in model.modules())
    assert M.model_spec(model)["activation"] == "sigmoid"


@pytest.mark.parametrize("arch", ["unet", "densenet121", "inception_v3"])
def test_relu_models_do_use_relu(arch):
    assert relu_ops(M.build_model(arch), smallest_input(arch)), "the oracle sees no ReLU in a ReLU model"


class FunctionalRelu(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.nn.functional.relu(self.conv(x))


def test_functional_relu_is_seen_by_the_oracle_and_by_segaudit():
    x = torch.randn(1, 3, 8, 8)
    assert relu_ops(FunctionalRelu(), x) == {"relu"}
    assert relu_calls(FunctionalRelu(), x) == {"relu"}


def test_sigmoid_is_refused_for_an_encoder_with_functional_relu():
    with pytest.raises(SegauditError, match=r"dpn68 applies ReLU functionally .* use activation='relu'"):
        M.build_model("unet", "dpn68", activation="sigmoid")


def test_sigmoid_does_not_zero_negative_preactivations():
    model = M.build_model("resnet18", activation="sigmoid", classes=2).eval()
    seen = []
    model.layer1[0].bn1.register_forward_hook(lambda m, i, out: seen.append(out))
    model.layer1[0].conv2.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    model(torch.randn(1, 3, 32, 32))
    pre, post = seen
    assert (pre < 0).any()
    torch.testing.assert_close(post, torch.sigmoid(pre))


def test_lenet_defaults_to_sigmoid_and_can_use_relu():
    assert M.model_spec(M.build_model("lenet"))["activation"] == "sigmoid"
    relu_lenet = M.build_model("lenet", activation="relu")
    assert sum(isinstance(m, torch.nn.ReLU) for m in relu_lenet.modules()) == 3


# --------------------------------------------------------------------------------------------------
# Sizes


def test_output_strides_and_min_sizes():
    assert M.output_stride("unet", "resnet18") == 32
    assert M.output_stride("unet", "resnet18", encoder_depth=4, decoder_channels=[64, 32, 16, 8]) == 16
    assert M.output_stride("deeplabv3") == 8
    assert M.output_stride("deeplabv3plus") == 16
    assert M.output_stride("pspnet") == 8
    assert M.output_stride("pan") == 16
    assert M.min_size("pan") == 128
    assert M.min_size("unet") == 32
    assert M.size_rules("unet").multiple == 1  # smp's Unet interpolates odd sizes
    assert M.size_rules("fpn").multiple == 32
    assert M.size_rules("lenet", size=28).fixed_size == (28, 28)


def test_check_input_size_says_the_fix():
    model = M.build_model("unetplusplus")
    M.check_input_size(model, 64, 96, batch=2)
    with pytest.raises(SegauditError, match=r"divisible by 32, got 50x64: pad them to 64x64"):
        M.check_input_size(model, 50, 64)
    with pytest.raises(SegauditError, match=r"at least 128x128"):
        M.check_input_size(M.build_model("pan"), 64, 64)
    deeplab = M.build_model("deeplabv3").train()
    with pytest.raises(SegauditError, match=r"at least 2 images per batch"):
        M.check_input_size(deeplab, 64, 64, batch=1)
    M.check_input_size(deeplab.eval(), 64, 64, batch=1)


# --------------------------------------------------------------------------------------------------
# Layer groups


@pytest.mark.parametrize("arch", SEGMENTATION + CLASSIFICATION)
def test_layer_groups_cover_every_parameter_once(arch):
    assert_groups_partition(M.build_model(arch))


@pytest.mark.filterwarnings("ignore:`timm-` encoders are deprecated:DeprecationWarning")
@pytest.mark.parametrize("encoder", ["efficientnet-b0", "mobilenet_v2", "timm-efficientnet-b0", "tu-resnet18"])
def test_layer_groups_for_other_encoders(encoder):
    groups = assert_groups_partition(M.build_model("unet", encoder))
    encoder_groups = [g for g in groups if g.kind == "encoder"]
    assert len(encoder_groups) >= 5
    assert all(g.name.startswith("encoder.") for g in encoder_groups)


def test_unet_resnet18_groups():
    groups = M.layer_groups(M.build_model("unet", "resnet18"))
    assert [(g.name, g.kind) for g in groups] == [
        ("encoder.stem", "encoder"),
        ("encoder.layer1", "encoder"),
        ("encoder.layer2", "encoder"),
        ("encoder.layer3", "encoder"),
        ("encoder.layer4", "encoder"),
        ("decoder.blocks.0", "decoder"),
        ("decoder.blocks.1", "decoder"),
        ("decoder.blocks.2", "decoder"),
        ("decoder.blocks.3", "decoder"),
        ("decoder.blocks.4", "decoder"),
        ("segmentation_head", "head"),
    ]
    assert groups[0].params == ("encoder.conv1.weight", "encoder.bn1.weight", "encoder.bn1.bias")


@pytest.mark.parametrize(
    "arch, skips",
    [
        ("unet", []),
        ("linknet", []),
        ("fpn", ["decoder.p4", "decoder.p3", "decoder.p2"]),
        ("deeplabv3plus", ["decoder.block1"]),
        ("unetplusplus", ["decoder.blocks.x_1_1", "decoder.blocks.x_1_2", "decoder.blocks.x_2_2",
                          "decoder.blocks.x_1_3", "decoder.blocks.x_2_3", "decoder.blocks.x_3_3"]),
        ("manet", [f"decoder.blocks.{i}.SE_ll" for i in range(4)]),
        ("pan", ["decoder.gau3.conv2", "decoder.gau2.conv2", "decoder.gau1.conv2"]),
        ("segformer", [f"decoder.mlp_stage.{i}" for i in range(1, 5)]),
    ],
)
def test_skip_groups(arch, skips):
    groups = M.layer_groups(M.build_model(arch))
    assert [g.name for g in groups if g.kind == "skip"] == skips


@pytest.mark.parametrize(
    "arch, names",
    [
        ("lenet", ["body.0", "body.2", "body.4", "fc"]),
        ("resnet18", ["stem", "layer1", "layer2", "layer3", "layer4", "fc"]),
        ("densenet121", ["features.stem", "features.denseblock1", "features.transition1", "features.denseblock2",
                         "features.transition2", "features.denseblock3", "features.transition3",
                         "features.denseblock4", "features.norm5", "classifier"]),
    ],
)
def test_classifier_groups(arch, names):
    groups = M.layer_groups(M.build_model(arch))
    assert [g.name for g in groups] == names
    assert [g.kind for g in groups] == ["encoder"] * (len(names) - 1) + ["head"]


def test_inception_groups_are_its_mixed_blocks():
    names = [g.name for g in M.layer_groups(M.build_model("inception_v3"))]
    assert names[:5] == ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]
    assert [n for n in names if n.startswith("Mixed_")] == [
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
        "Mixed_7a", "Mixed_7b", "Mixed_7c",
    ]
    assert names[-1] == "fc"


def test_models_built_by_smp_itself_get_a_spec_and_groups(tmp_path):
    model = import_smp().FPN("resnet18", encoder_weights=None, classes=3)
    spec = M.model_spec(model)
    assert (spec["arch"], spec["encoder"], spec["classes"], spec["activation"]) == ("fpn", "resnet18", 3, "relu")
    assert M.is_segmentation(model)
    groups = assert_groups_partition(model)
    assert [g.name for g in groups if g.kind == "skip"] == ["decoder.p4", "decoder.p3", "decoder.p2"]
    outputs_match(model, M.load_model(M.save_model(model, tmp_path)), torch.randn(1, 3, 64, 64))


def test_layer_groups_see_through_wrappers():
    model = torch.nn.DataParallel(M.build_model("lenet"))
    groups = assert_groups_partition(model)
    assert groups[0].name == "module.body.0"


def test_layer_group_is_frozen():
    group = M.layer_groups(M.build_model("lenet"))[0]
    with pytest.raises(AttributeError):
        group.name = "x"


# --------------------------------------------------------------------------------------------------
# Specs, saving and loading


def outputs_match(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b.eval()(x), rtol=0, atol=0)


def test_spec_is_json_and_rebuilds_the_same_network():
    model = M.build_model("Unet", "resnet18", 1, 4, activation="sigmoid", decoder_channels=(64, 32, 16, 8, 8))
    spec = M.model_spec(model)
    assert json.loads(json.dumps(spec)) == spec
    assert spec == {
        "arch": "unet", "encoder": "resnet18", "in_channels": 1, "classes": 4, "activation": "sigmoid",
        "task": "segmentation", "options": {"decoder_channels": [64, 32, 16, 8, 8]},
        "preprocessing": {"mean": [0.5], "std": [0.5], "scale": 1.0},  # segaudit's own, recorded
    }
    rebuilt = M.build_from_spec(spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert M.model_spec(rebuilt) == spec  # the preprocessing travels with the spec


def test_preprocessing_is_recorded_never_assumed(tmp_path):
    """A checkpoint that records no normalisation loads, but nothing computes on it until one is given."""
    from segaudit.preprocessing import Preprocessing, normalisation, of

    model = M.build_model("unet", in_channels=3, classes=2, preprocessing={"mean": [123.7, 116.3, 103.5],
                                                                            "std": [58.4, 57.1, 57.4], "scale": 255})
    assert normalisation(model)["mean"] == pytest.approx((0.485, 0.456, 0.406), abs=1e-3)
    model.save_pretrained(tmp_path / "smp")  # smp's own format: config.json holds no preprocessing
    loaded = M.load_model(tmp_path / "smp")
    with pytest.raises(SegauditError, match=r"^the model x does not say how its inputs were normalised, and segaudit "
                                            r"never assumes it: give --mean and --std"):
        of(loaded, source="x")
    given = M.load_model(tmp_path / "smp", preprocessing=Preprocessing.parse("0", "1", channels=3))
    assert normalisation(given) == {"mean": (0.0,) * 3, "std": (1.0,) * 3}
    config = json.loads((tmp_path / "smp" / "config.json").read_text())
    (tmp_path / "smp" / "config.json").write_text(json.dumps({**config, "_preprocessing": {"mean": 0, "std": 1}}))
    assert of(M.load_model(tmp_path / "smp")).std == (1.0, 1.0, 1.0)  # smp's loader ignores "_" keys
    with pytest.raises(SegauditError, match=r"scale must be 1 \(pixel values in \[0, 1\]\) or 255"):
        Preprocessing.parse("0", "1", 100, channels=3)
    with pytest.raises(SegauditError, match="mean has 2 values but the model takes 3 channels"):
        Preprocessing.parse("0,0", "1", channels=3)
    with pytest.raises(SegauditError, match="std must be positive"):
        Preprocessing.parse("0", "0", channels=1)
    with pytest.raises(SegauditError, match="give --mean and --std together"):
        Preprocessing.parse("0", None, channels=1)


@pytest.mark.parametrize("arch", ["unet", "deeplabv3plus", "lenet", "resnet18"])
def test_save_load_round_trip(tmp_path, arch):
    model = M.build_model(arch, in_channels=1, classes=3, activation="sigmoid")
    model.train()(sample_input(arch, channels=1))  # move BatchNorm statistics away from their init
    M.save_model(model, tmp_path / "saved")
    loaded = M.load_model(tmp_path / "saved")
    assert M.model_spec(loaded) == M.model_spec(model)
    assert not loaded.training
    outputs_match(model, loaded, sample_input(arch, channels=1))


def test_loads_a_plain_smp_save_pretrained_folder(tmp_path):
    smp = import_smp()
    model = smp.Unet("resnet18", encoder_weights=None, in_channels=1, classes=2, decoder_channels=(32, 16, 8, 8, 8))
    model.save_pretrained(tmp_path)
    loaded = M.load_model(tmp_path)
    assert M.model_spec(loaded)["options"]["decoder_channels"] == [32, 16, 8, 8, 8]
    outputs_match(model, loaded, torch.randn(1, 1, 64, 64))


def test_loads_safetensors_with_spec_or_sidecar(tmp_path):
    from safetensors.torch import save_file

    model = M.build_model("fpn", classes=2)
    path = tmp_path / "fpn.safetensors"
    save_file(model.state_dict(), path)
    outputs_match(model, M.load_model(path, spec=M.model_spec(model)), torch.randn(1, 3, 64, 64))
    (tmp_path / "fpn.safetensors.json").write_text(json.dumps({"arch": "fpn", "encoder": "resnet18", "classes": 2}))
    outputs_match(model, M.load_model(path), torch.randn(1, 3, 64, 64))


@pytest.mark.parametrize("wrap", [lambda sd: sd, lambda sd: {"state_dict": sd, "epoch": 3},
                                  lambda sd: {"model": {"module." + k: v for k, v in sd.items()}}])
def test_loads_torch_state_dicts(tmp_path, wrap):
    model = M.build_model("lenet", classes=10)
    path = tmp_path / "lenet.pt"
    torch.save(wrap(model.state_dict()), path)
    outputs_match(model, M.load_model(path, spec={"arch": "lenet", "classes": 10}), torch.randn(2, 3, 32, 32))


# --------------------------------------------------------------------------------------------------
# Refusals


def test_unknown_arch_lists_the_available_ones():
    with pytest.raises(SegauditError, match=r"unknown model arch 'segnet'; available: segmentation: unet, .*lenet"):
        M.build_model("segnet")


def test_bad_build_arguments_are_refused():
    with pytest.raises(SegauditError, match=r"unknown encoder 'resnet7'"):
        M.build_model("unet", "resnet7")
    with pytest.raises(SegauditError, match=r"unet takes no option 'decoder_chanels'"):
        M.build_model("unet", decoder_chanels=[1])
    with pytest.raises(SegauditError, match=r"lenet is a classification model and takes no encoder"):
        M.build_model("lenet", "resnet18")
    with pytest.raises(SegauditError, match=r"activation must be one of relu, sigmoid"):
        M.build_model("unet", activation="tanh")
    with pytest.raises(SegauditError, match=r"classes must be a positive integer"):
        M.build_model("unet", classes=0)


def write_smp_folder(folder: Path, model_class: str) -> Path:
    M.save_model(M.build_model("unet"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["_model_class"] = model_class
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "segaudit.json").unlink()
    return folder


@pytest.mark.parametrize("model_class", ["EvilNet", "DPT"])
def test_unknown_model_class_in_config_is_refused(tmp_path, model_class):
    folder = write_smp_folder(tmp_path, model_class)
    with pytest.raises(SegauditError, match=rf"model class '{model_class}'.*allowed: Unet, UnetPlusPlus"):
        M.load_model(folder)


class Payload:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_with_code_is_refused_without_running_it(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"state_dict": {"w": torch.zeros(1)}, "extra": Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))  # torch's legacy (non-zip) format
    with pytest.raises(SegauditError, match=r"needs code to load \(pickle\); segaudit loads weights only"):
        M.load_model(path, spec={"arch": "lenet"})
    assert not marker.exists()


def test_truncated_safetensors_is_refused(tmp_path):
    folder = M.save_model(M.build_model("lenet"), tmp_path / "lenet")
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(SegauditError, match=r"truncated or not a safetensors file"):
        M.load_model(folder)


def test_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "lenet.pth"
    torch.save(M.build_model("lenet").state_dict(), path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(SegauditError, match=r"truncated or corrupt"):
        M.load_model(path, spec={"arch": "lenet"})


def test_weights_for_another_number_of_classes_are_refused(tmp_path):
    path = tmp_path / "unet.safetensors"
    from safetensors.torch import save_file

    save_file(M.build_model("unet", classes=5).state_dict(), path)
    with pytest.raises(SegauditError, match=r"segmentation_head\.0\.weight has shape \[5, 16, 3, 3\] in the file "
                                            r"but \[2, 16, 3, 3\] in the model"):
        M.load_model(path, spec={"arch": "unet", "classes": 2})


def test_weights_with_missing_keys_are_refused(tmp_path):
    path = tmp_path / "lenet.pt"
    state = M.build_model("lenet").state_dict()
    del state["fc.0.bias"]
    torch.save(state, path)
    with pytest.raises(SegauditError, match=r"missing key fc\.0\.bias"):
        M.load_model(path, spec={"arch": "lenet"})


def test_bare_state_dict_without_spec_is_refused(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(M.build_model("lenet").state_dict(), path)
    with pytest.raises(SegauditError, match=r"holds bare weights: pass spec="):
        M.load_model(path)


def test_other_files_are_refused(tmp_path):
    with pytest.raises(SegauditError, match=r"does not exist"):
        M.load_model(tmp_path / "nope.pt")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(SegauditError, match=r"cannot load model.onnx"):
        M.load_model(tmp_path / "model.onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SegauditError, match=r"neither config.json .* nor segaudit.json"):
        M.load_model(tmp_path / "empty")
