"""MONAI's 2-D networks through build_model: names, options, sizes, layer groups, checkpoints, attacks, the gate,
layer scores and DP-SGD (Opacus's own per-sample-gradient check)."""
import copy
import sys

import pytest
import torch
from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct

from segaudit import SegauditError
from segaudit.attacks import ATTACKS
from segaudit.attacks.recovery import head_bias
from segaudit.data import make_batch
from segaudit.fl import client_update
from segaudit.leakage import gate_update, layer_scores
from segaudit.models import available_archs, build_model, check_input_size, layer_groups, load_model, save_model
from segaudit.privacy import make_private_model, private_client_update
from segaudit.types import Batch, Prior

# small widths, so each network runs in well under a second at its smallest size
SMALL = {
    "monai.unet": ({"channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1}, 32),
    "monai.basicunet": ({"features": [4, 4, 8, 8, 16, 4]}, 32),
    "monai.attentionunet": ({"channels": [4, 8, 16], "strides": [2, 2]}, 32),
    "monai.segresnet": ({"init_filters": 8, "blocks_down": [1, 1, 1], "blocks_up": [1, 1]}, 32),
    "monai.swinunetr": ({"feature_size": 12}, 64),
}
KINDS = {"monai.unet": {"encoder", "decoder", "head"}, "monai.basicunet": {"encoder", "decoder", "head"},
         "monai.attentionunet": {"encoder", "decoder", "skip", "head"},
         "monai.segresnet": {"encoder", "decoder", "head"}, "monai.swinunetr": {"encoder", "decoder", "skip", "head"}}


def small(arch, classes=3):
    torch.manual_seed(0)
    options, size = SMALL[arch]
    return build_model(arch, in_channels=1, classes=classes, **options), size


def test_a_missing_monai_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "monai", None)  # as if MONAI were not installed
    monkeypatch.setitem(sys.modules, "monai.networks", None)
    with pytest.raises(SegauditError, match=r"^MONAI's networks need pip install 'segaudit\[monai\]'$"):
        build_model("monai.unet", in_channels=1, classes=2)


def test_every_monai_network_is_listed_and_names_are_case_insensitive():
    assert set(SMALL) <= set(available_archs()["segmentation"])
    model = build_model("MONAI.UNet", in_channels=1, classes=2, channels=[4, 8], strides=[2])
    assert model.segaudit_spec["arch"] == "monai.unet" and model.segaudit_spec["encoder"] is None
    assert build_model("monai.swin-unetr", in_channels=1, classes=2, feature_size=12).segaudit_spec["arch"] == \
        "monai.swinunetr"


@pytest.mark.parametrize("kwargs, match", [
    ({"arch": "monai.vnet"}, "does not build MONAI's 'vnet': it audits 2-D segmentation networks and builds these "
                             "of MONAI's: monai.unet, monai.basicunet, .*no 3-D-only network"),
    ({"arch": "monai"}, "unknown model arch 'monai'; available: .*monai.unet"),
    ({"arch": "monai.unet", "colour": 3}, "monai.unet takes no option 'colour'; options: .*channels"),
    ({"arch": "monai.unet", "spatial_dims": 3}, "takes no option 'spatial_dims'"),
    ({"arch": "monai.unet", "encoder": "resnet18"}, "monai.unet takes no encoder"),
    ({"arch": "monai.segresnet", "init_filters": 4}, "cannot build monai.segresnet: .*divisible"),
])
def test_bad_monai_requests_get_one_line(kwargs, match):
    with pytest.raises(SegauditError, match=match):
        build_model(in_channels=1, classes=2, **kwargs)


@pytest.mark.parametrize("arch", SMALL)
def test_forward_gradients_groups_and_head(arch):
    model, size = small(arch)
    batch = Batch(torch.randn(2, 1, size, size), torch.randint(0, 3, (2, size, size)), ("a", "b", "c"))
    assert model(batch.images).shape == (2, 3, size, size)
    update = client_update(model, batch)
    assert all(bool(update.tensors[n].abs().sum() > 0) for n, p in model.named_parameters() if p.requires_grad)
    groups = layer_groups(model)
    params = [p for g in groups for p in g.params]
    assert sorted(params) == sorted(n for n, _ in model.named_parameters())  # each parameter in one group
    assert {g.kind for g in groups} == KINDS[arch]
    bias = head_bias(model, 3)
    assert bias is not None and any(bias in g.params for g in groups if g.kind == "head")


@pytest.mark.parametrize("arch, side, match", [
    ("monai.unet", 40, "divisible by 16"), ("monai.swinunetr", 80, "divisible by 32"),
    ("monai.segresnet", 8, "at least 16x16"), ("monai.swinunetr", 32, "at least 64x64"),
])
def test_input_sizes_follow_the_strides(arch, side, match):
    model = build_model(arch, in_channels=1, classes=2, **({"feature_size": 12} if "swin" in arch else {}))
    with pytest.raises(SegauditError, match=match):
        check_input_size(model, side, side)


@pytest.mark.parametrize("arch", ["monai.unet", "monai.attentionunet", "monai.swinunetr"])
def test_save_and_load_give_the_same_network(arch, tmp_path):
    model, size = small(arch)
    model.segaudit_spec["preprocessing"] = {"mean": [0.2], "std": [0.3], "scale": 1.0}
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    assert loaded.segaudit_spec["arch"] == arch and loaded.segaudit_spec["preprocessing"]["mean"] == [0.2]
    x = torch.randn(1, 1, size, size)
    assert torch.equal(model.eval()(x), loaded.eval()(x))


@pytest.mark.parametrize("arch", ["monai.unet", "monai.segresnet"])
def test_every_attack_the_gate_and_layer_scores_run(arch, nuclei):
    model, size = small(arch, classes=2)
    batch = make_batch(nuclei, [0], size=size, fit="crop", seed=0)
    prior = Prior.from_batch_shape(batch)
    update = client_update(model, batch, train_mode=False)
    public = make_batch(nuclei, [5, 6, 7], size=size, fit="crop", seed=1).images
    for name in ATTACKS.available():
        attack = ATTACKS.create(name, steps=2, restarts=1, seed=0)
        sent = attack.send(model, prior, public)
        rec = attack.run(sent, update if sent is model else client_update(sent, batch, train_mode=False), prior)
        assert rec.status == "ok" and rec.images.shape == batch.images.shape and rec.masks.shape == batch.masks.shape
    gate = gate_update(model, update, size=size)
    assert 0 <= gate.risk <= 1 and gate.groups
    report = layer_scores(model, batch, data=nuclei, steps=2, seed=0, probes=2, train_mode=False)
    assert {r.name for r in report.groups} == {g.name for g in layer_groups(model)}


@pytest.mark.parametrize("arch", ["monai.unet", "monai.basicunet", "monai.attentionunet", "monai.segresnet"])
def test_dp_sgd_per_sample_gradients_pass_opacus_check(arch):
    model, size = small(arch, classes=2)
    fixed, changes = make_private_model(model)
    if arch == "monai.attentionunet":
        assert any("BatchNorm layers -> GroupNorm" in c for c in changes)
    if arch == "monai.segresnet":
        assert any("residual blocks add the skip connection out of place" in c for c in changes)
    double = copy.deepcopy(fixed).double().train()
    x = torch.randn(3, 1, size, size, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert check_per_sample_gradients_are_correct(x, double, grad_sample_mode="hooks", atol=1e-9, rtol=1e-7)
    batch = Batch(x[:2], torch.randint(0, 2, (2, size, size)), ("a", "b"))
    plain, dp = client_update(double, batch), private_client_update(double, batch, 0.0, 1e12)
    assert all(torch.allclose(plain.tensors[k], dp.tensors[k], atol=1e-12) for k in plain.tensors)


def test_dp_sgd_refuses_swin_unetr_with_the_reason():
    model, _ = small("monai.swinunetr", classes=2)
    with pytest.raises(SegauditError, match="SwinTransformer at swinViT.*per window"):
        make_private_model(model)
