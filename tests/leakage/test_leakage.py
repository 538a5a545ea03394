"""Per-layer leakage scores and the update gate: coverage, hand-computed analytic values, the ablation
consistency of the ranking, and check-update exit codes and refusals."""
import json
import math

import pytest
import torch
from torch import nn

from segaudit import SegauditError
from segaudit.cli import main
from segaudit.data import make_batch
from segaudit.fl import client_update
from segaudit.leakage import LAYER_SCORERS, ablation_attack, analyze_system, gate_update, gradient_system, layer_scores
from segaudit.models import build_model, save_model
from segaudit.types import ClientUpdate
from segaudit.updates import save_update


def _tiny():
    torch.manual_seed(0)
    return build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])


# ---------------------------------------------------------------------------------------------- analytic


def test_linear_system_hand_computed():
    layer = nn.Linear(3, 2)
    one = analyze_system(gradient_system(layer, (1, 3), torch.tensor([[1.0, 2.0]])), channels=3)
    # D = [[1], [2]]: rank 1 per input feature, 3 unknowns all determined (single-sample linear leakage)
    assert one == {"unknowns": 3, "constraints": 6, "rank": 3, "deficiency": 0, "rank_deficiency": 0.0,
                   "condition": pytest.approx(1.0)}
    two = analyze_system(gradient_system(layer, (2, 3), torch.tensor([[1.0, 0.0], [0.0, 2.0]])), channels=3)
    assert two["rank"] == 6 and two["deficiency"] == 0 and two["condition"] == pytest.approx(2.0)
    same = analyze_system(gradient_system(layer, (2, 3), torch.ones(2, 2)), channels=3)
    assert same["rank"] == 3 and same["deficiency"] == 3 and same["rank_deficiency"] == 0.5


def test_conv_system_hand_computed():
    # 1x1 conv, one output channel, 2x2 input: one equation per input channel for 4 unknowns
    conv = nn.Conv2d(1, 1, 1)
    delta = torch.tensor([[3.0, 0.0], [0.0, 4.0]]).view(1, 1, 2, 2)
    D = gradient_system(conv, (1, 1, 2, 2), delta)
    assert torch.equal(D, torch.tensor([[3.0, 0.0, 0.0, 4.0]], dtype=torch.float64))
    stats = analyze_system(D)
    assert (stats["rank"], stats["deficiency"], stats["rank_deficiency"]) == (1, 3, 0.75)
    assert stats["condition"] == pytest.approx(1.0)
    # two output channels on a 1x2 input: D = [[1, 0], [1, 1]], condition (3 + sqrt 5) / 2
    conv2 = nn.Conv2d(1, 2, 1)
    D2 = gradient_system(conv2, (1, 1, 1, 2), torch.tensor([[[[1.0, 0.0]], [[1.0, 1.0]]]]))
    stats2 = analyze_system(D2)
    assert stats2["deficiency"] == 0 and stats2["condition"] == pytest.approx((3 + math.sqrt(5)) / 2)


def test_conv_system_is_the_weight_gradient_map():
    """D applied to each input channel gives autograd's weight gradient (stride, padding, dilation)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(2, 3, 3, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 2, 7, 6, requires_grad=True)
    y = conv(x)
    delta = torch.randn_like(y)
    (dw,) = torch.autograd.grad((y * delta).sum(), [conv.weight])
    D = gradient_system(conv, x.shape, delta)
    for c in range(2):
        got = (D @ x[:, c].detach().double().flatten()).view(3, 3, 3)
        assert torch.allclose(got, dw[:, c].double(), atol=1e-5)


# ---------------------------------------------------------------------------------------------- report


@pytest.mark.parametrize("arch", ["unet", "unetplusplus", "deeplabv3", "deeplabv3plus", "fpn"])
def test_every_parameter_in_exactly_one_group(arch, nuclei):
    torch.manual_seed(0)
    model = build_model(arch, in_channels=1, classes=2)
    batch = make_batch(nuclei, [0, 1], size=32, fit="crop", seed=0)
    report = layer_scores(model, batch, scorers=("analytic",), full_attack=False)
    listed = [p for g in report.groups for p in g.params]
    assert sorted(listed) == sorted(n for n, _ in model.named_parameters())
    assert len(listed) == len(set(listed))
    scored = [g for g in report.groups if g.score is not None]
    assert scored and all(0 <= g.score <= 1 and 0 <= g.rank_deficiency <= 1 for g in scored)


def test_ranking_predicts_ablation(nuclei):
    """Removing the top-scored group's update hurts the full attack more than removing the bottom one's."""
    model = _tiny()
    batch = make_batch(nuclei, [0], size=16, fit="crop", seed=0, stride=8)
    report = layer_scores(model, batch, data=nuclei, steps=50, seed=0, train_mode=False)
    assert report.full["psnr"] > report.baseline["psnr"] + 3  # the attack works here: the test means something
    ranked = [n for n in report.ranking() if next(g for g in report.groups if g.name == n).score is not None]
    update = client_update(model, batch, train_mode=False)
    top = ablation_attack(model, update, batch, [ranked[0]], steps=100)
    bottom = ablation_attack(model, update, batch, [ranked[-1]], steps=100)
    assert top["psnr"] < bottom["psnr"]


def test_unknown_scorer_lists_the_registry(nuclei):
    batch = make_batch(nuclei, [0], size=32, fit="crop", seed=0)
    with pytest.raises(SegauditError, match="available: analytic, attack, sensitivity"):
        layer_scores(_tiny(), batch, scorers=("nope",))
    assert LAYER_SCORERS.available() == ["analytic", "attack", "sensitivity"]


# ---------------------------------------------------------------------------------------------- gate


def test_gate_follows_batch_size_and_noise(nuclei):
    model = _tiny()
    one = client_update(model, make_batch(nuclei, [0], size=32, fit="crop", seed=0), train_mode=False)
    eight = client_update(model, make_batch(nuclei, list(range(8)), size=32, fit="crop", seed=0), train_mode=False)
    r1, r8 = gate_update(model, one, size=32), gate_update(model, eight, size=32)
    # image-facing conv: 64 * 7 * 7 = 3136 constraints; 32 * 32 * N unknowns
    assert r1.risk == pytest.approx(1.0) and r1.above and r1.riskiest[0] == "encoder.stem"
    assert r8.risk == pytest.approx(3136 / (8 * 1024)) and not r8.above
    noisy = ClientUpdate({k: v + 10.0 * torch.randn_like(v) for k, v in one.tensors.items()}, one.meta)
    assert gate_update(model, noisy, size=32).risk < 0.05


def test_check_update_cli_exit_codes_and_refusals(tmp_path, nuclei, capsys):
    model = _tiny()
    save_model(model, tmp_path / "model")
    update = client_update(model, make_batch(nuclei, [0], size=32, fit="crop", seed=0), train_mode=False)
    save_update(update, tmp_path / "u.safetensors")
    argv = ["check-update", "--model", str(tmp_path / "model"), "--update", str(tmp_path / "u.safetensors"),
            "--size", "32"]
    assert main(argv) == 3
    assert "risk 1.000" in capsys.readouterr().out
    assert main(argv + ["--threshold", "1.0"]) == 0
    other = build_model("unet", in_channels=1, classes=3, encoder_depth=3, decoder_channels=[16, 8, 4])
    wrong = client_update(other, make_batch(nuclei, [0], size=32, fit="crop", seed=0, ), train_mode=False)
    save_update(wrong, tmp_path / "wrong.safetensors")
    assert main(argv[:4] + [str(tmp_path / "wrong.safetensors"), "--size", "32"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: update tensor 'segmentation_head.0.weight' has shape") and "\n" not in err
    assert main(argv + ["--threshold", "2"]) == 2
    assert "threshold must be in [0, 1]" in capsys.readouterr().err


def test_layers_cli_writes_report_and_chart(tmp_path, capsys):
    out = tmp_path / "layers"
    code = main(["layers", "--arch", "unet", "--data", "nuclei", "--size", "32", "--client-mode", "eval",
                 "--steps", "1", "--quiet", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    payload = json.loads((out / "layers.json").read_text())
    names = [g["name"] for g in payload["groups"]]
    assert names[:2] == ["encoder.stem", "encoder.layer1"]
    assert "decoder.blocks.0" in names and "segmentation_head" in names
    for key in ("name", "kind", "params", "score", "attack_psnr", "rank_deficiency", "condition", "sensitivity"):
        assert key in payload["groups"][0]
    assert (out / "layers.png").stat().st_size > 1000
