"""Differential privacy: accounting against Opacus, DP-SGD against reference computations, refusals, CLI."""
import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

from segaudit import SegauditError
from segaudit.cli import main
from segaudit.data import Dataset
from segaudit.defenses import DPSGD, parse_defense
from segaudit.fl import client_update
from segaudit.models import build_model, load_model, save_model
from segaudit.privacy import (
    DPSpec,
    check_sample_rate,
    epsilon,
    make_private_model,
    noise_for_epsilon,
    private_client_update,
    train_private,
)
from segaudit.types import Batch


@pytest.fixture(scope="module")
def tiny():
    """The tiny BatchNorm U-Net of the other tests (resnet18 encoder, depth 3)."""
    torch.manual_seed(0)
    return build_model("unet", encoder="resnet18", in_channels=1, classes=2, encoder_depth=3,
                       decoder_channels=(16, 8, 4))


@pytest.fixture(scope="module")
def fixed(tiny):
    return make_private_model(tiny)[0]


@pytest.fixture(scope="module")
def batch():
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(4, 1, 32, 32, generator=g), torch.randint(0, 2, (4, 32, 32), generator=g), ("bg", "fg"))


@pytest.fixture(scope="module")
def small_data():
    g = torch.Generator().manual_seed(2)
    images = [torch.rand(32, 32, generator=g).numpy() for _ in range(8)]
    masks = [(im > 0.5).astype("int64") for im in images]
    return Dataset(images, masks, tuple(f"s{i}" for i in range(8)), ("bg", "fg"))  # 6 train, 2 held out


# -- accounting ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_equals_opacus_accountant(accountant):
    from opacus.accountants import create_accountant

    ref = create_accountant(accountant)
    ref.history = [(1.5, 0.04, 2250)]
    assert epsilon(1.5, 0.04, 2250, 1e-5, accountant) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-12)


def test_epsilon_known_answer():
    # Opacus 1.6 RDP accountant, sigma 1.5, q 0.04, 2,250 steps (56 epochs at batch 40 of 1,000), delta 1e-5
    assert epsilon(1.5, 0.04, 2250, 1e-5) == pytest.approx(7.3291, abs=1e-4)
    assert epsilon(1.5, 0.04, 2250, 1e-5, "prv") == pytest.approx(6.78, abs=0.02)  # PRV is tighter
    assert epsilon(0.0, 0.04, 10, 1e-5) == math.inf


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_noise_for_epsilon_inverts_epsilon(accountant):
    sigma = noise_for_epsilon(8.0, 0.04, 2250, 1e-5, accountant)
    assert 7.9 <= epsilon(sigma, 0.04, 2250, 1e-5, accountant) <= 8.0
    assert epsilon(sigma * 0.97, 0.04, 2250, 1e-5, accountant) > 8.0


@pytest.mark.parametrize("call, match", [
    (lambda: epsilon(1.0, 0.0, 10, 1e-5), r"sample rate must be in \(0, 1\]"),
    (lambda: epsilon(1.0, 1.5, 10, 1e-5), r"sample rate must be in \(0, 1\]"),
    (lambda: epsilon(1.0, 0.1, 10, 1.0), r"delta must be in \(0, 1\)"),
    (lambda: epsilon(1.0, 0.1, 10, 0.0), r"delta must be in \(0, 1\)"),
    (lambda: epsilon(1.0, 0.1, 0, 1e-5), "steps must be a positive integer"),
    (lambda: epsilon(-1.0, 0.1, 10, 1e-5), "noise multiplier must be"),
    (lambda: epsilon(1.0, 0.1, 10, 1e-5, "gdp2"), "unknown accountant"),
    (lambda: noise_for_epsilon(0.0, 0.1, 10, 1e-5), "target epsilon must be a finite number > 0"),
    (lambda: noise_for_epsilon(-2.0, 0.1, 10, 1e-5), "target epsilon must be a finite number > 0"),
    (lambda: DPSpec(target_epsilon=0.0), "target epsilon must be"),
    (lambda: DPSpec(noise_multiplier=1.0, target_epsilon=1.0), "exactly one of"),
    (lambda: DPSpec(noise_multiplier=1.0, delta=1.0), r"delta must be in \(0, 1\)"),
    (lambda: DPSpec(noise_multiplier=1.0, max_grad_norm=0), "max_grad_norm"),
    (lambda: check_sample_rate(1 / 3, 8, 12), "disagrees with batch size 8 / 12"),
])
def test_bad_accounting_inputs(call, match):
    with pytest.raises(SegauditError, match=match):
        call()


# -- models ----------------------------------------------------------------------------------------------------


def test_make_private_model_reports_changes(tiny, fixed):
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(fixed, strict=False) == []
    changes = make_private_model(tiny)[1]
    assert any("BatchNorm" in c and "GroupNorm" in c for c in changes)
    assert any("out of place" in c for c in changes)
    assert isinstance(fixed.encoder.bn1, torch.nn.GroupNorm) and isinstance(tiny.encoder.bn1, torch.nn.BatchNorm2d)
    assert fixed.segaudit_spec["dp_compatible"] is True


def test_per_sample_gradients_are_correct(fixed):
    """Opacus's own check: its per-sample gradients equal micro-batch gradients on the fixed U-Net."""
    from opacus.utils.per_sample_gradients_utils import check_per_sample_gradients_are_correct

    model = copy.deepcopy(fixed).double().train()  # float64: with sum reduction float32 rounding reaches 5e-4
    # the helper reads .grad of every parameter: drop layer3/4, frozen because depth 3 never runs them
    model.encoder.layer3 = model.encoder.layer4 = torch.nn.Identity()
    assert all(p.requires_grad for p in model.parameters())
    x = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert check_per_sample_gradients_are_correct(x, model, grad_sample_mode="hooks", atol=1e-9, rtol=1e-7)


# -- DP-SGD client updates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fedsgd", "fedavg"])
def test_dp_without_noise_or_clipping_is_the_plain_update(fixed, batch, mode):
    model = copy.deepcopy(fixed).double()
    b = Batch(batch.images.double(), batch.masks, batch.class_names)
    kw = dict(mode=mode, local_steps=3, lr=0.05, local_batch_size=2)
    ref = client_update(model, b, **kw)
    dp = private_client_update(model, b, noise_multiplier=0.0, max_grad_norm=1e12, **kw)
    assert list(dp.tensors) == list(ref.tensors)
    for name, t in ref.tensors.items():
        torch.testing.assert_close(dp.tensors[name], t, rtol=1e-9, atol=1e-12)


def test_dp_clipping_matches_per_sample_autograd(fixed, batch):
    """sigma 0, C small: the shared gradient is the mean of per-sample gradients each clipped to C."""
    model = copy.deepcopy(fixed).double().train()
    images = batch.images.double()
    params = [p for p in model.parameters() if p.requires_grad]
    per_sample = []
    for i in range(len(batch)):
        loss = F.cross_entropy(model(images[i:i + 1]), batch.masks[i:i + 1])
        per_sample.append(torch.autograd.grad(loss, params))
    c = 0.5 * min(float(torch.sqrt(sum((g ** 2).sum() for g in gs))) for gs in per_sample)  # every sample clipped
    # Opacus's clip factor is min(1, C / (norm + 1e-6))
    expected = [sum(gs[j] * min(1.0, c / (float(torch.sqrt(sum((g ** 2).sum() for g in gs))) + 1e-6))
                    for gs in per_sample) / len(batch) for j in range(len(params))]
    dp = private_client_update(model, Batch(images, batch.masks, batch.class_names), 0.0, c)
    for got, want in zip(dp.tensors.values(), expected):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-10)
    assert dp.norm() <= c * (1 + 1e-9)


def test_dp_noise_has_the_documented_scale(fixed, batch):
    """sigma * C / N per entry: the difference of two seeds' updates has std sqrt(2) * sigma * C / N."""
    a = private_client_update(fixed, batch, 2.0, 0.1, seed=1)
    b = private_client_update(fixed, batch, 2.0, 0.1, seed=2)
    again = private_client_update(fixed, batch, 2.0, 0.1, seed=1)
    diff = torch.cat([(a.tensors[k] - b.tensors[k]).flatten() for k in a.tensors])
    assert float(diff.std()) == pytest.approx(math.sqrt(2) * 2.0 * 0.1 / len(batch), rel=0.02)
    assert all(torch.equal(a.tensors[k], again.tensors[k]) for k in a.tensors)


def test_dp_defense_specs_and_meta(fixed, batch):
    assert parse_defense("dp:eps=8") == DPSGD(eps=8.0)
    assert parse_defense("dp:sigma=1.0/clip=1") == DPSGD(sigma=1.0, clip=1.0)
    update = parse_defense("dp:sigma=1.0/clip=1").client_update(fixed, batch)
    d = update.meta.defense
    assert d["name"] == "dp" and d["sigma"] == 1.0 and d["clip"] == 1.0 and d["delta"] == 1e-5
    assert d["eps"] == pytest.approx(epsilon(1.0, 0.01, 100, 1e-5))
    d = parse_defense("dp:eps=8").client_update(fixed, batch, mode="fedavg", local_steps=2, lr=0.01).meta.defense
    assert d["steps"] == 200 and d["sigma"] == pytest.approx(noise_for_epsilon(8.0, 0.01, 200, 1e-5))
    assert 7.9 <= d["eps"] <= 8.0


def test_dp_defense_refusals(tiny, fixed, batch):
    with pytest.raises(SegauditError, match=r"BatchNorm layer .*make_private_model"):
        parse_defense("dp:sigma=1").client_update(tiny, batch)
    with pytest.raises(SegauditError, match="couples the samples"):
        parse_defense("dp:sigma=1").client_update(fixed, batch, loss="dice_ce")
    with pytest.raises(SegauditError, match="eps or sigma, not both"):
        parse_defense("dp:eps=8/sigma=1")
    with pytest.raises(SegauditError, match="eps must be a number"):
        parse_defense("dp:eps=0")
    with pytest.raises(SegauditError, match="disagrees with batch size 4 / 100"):
        parse_defense("dp:sigma=1/q=0.01/dataset=100").client_update(fixed, batch)


# -- private training ---------------------------------------------------------------------------------------------


def test_train_private_records_the_guarantee(tiny, small_data, tmp_path):
    spec = DPSpec(noise_multiplier=1.0, max_grad_norm=1.0)
    result = train_private(copy.deepcopy(tiny), small_data, spec, size=32, steps=3, batch_size=3, progress=False)
    assert result.sample_rate == 0.5 and result.steps == 3 and result.noise_multiplier == 1.0
    assert result.epsilon == pytest.approx(epsilon(1.0, 0.5, 3, 1e-5))
    assert 0.0 <= result.dice <= 1.0 and isinstance(result.model.encoder.bn1, torch.nn.GroupNorm)
    summary = json.loads(json.dumps(result.summary()))
    assert summary["dp"]["epsilon"] == result.epsilon and summary["dp"]["model_changes"]
    save_model(result.model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")  # rebuilt with GroupNorm from the spec
    for (n, p), (_, q) in zip(result.model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(p, q), n


def test_train_private_target_epsilon(tiny, small_data):
    spec = DPSpec(target_epsilon=4.0)
    result = train_private(copy.deepcopy(tiny), small_data, spec, size=32, epochs=2, batch_size=3, progress=False)
    assert result.steps == 4 and result.target_epsilon == 4.0
    assert 3.9 <= result.epsilon <= 4.0


@pytest.mark.parametrize("kw, match", [
    ({"batch_size": 4}, "disagrees with batch size 4 / 6"),
    ({"spec": DPSpec(noise_multiplier=1.0, delta=0.2)}, "not below 1/N"),
    ({"loss": "dice_ce"}, "couples the samples"),
    ({"eval_mode": True}, "eval mode"),
    ({"epochs": 1}, "exactly one of steps or epochs"),
])
def test_train_private_refusals(tiny, small_data, kw, match):
    model = copy.deepcopy(tiny)
    if kw.pop("eval_mode", False):
        model.eval()
    args = {"spec": DPSpec(noise_multiplier=1.0), "size": 32, "steps": 1, "batch_size": 3, "progress": False, **kw}
    with pytest.raises(SegauditError, match=match):
        train_private(model, small_data, **args)


# -- command line -------------------------------------------------------------------------------------------------


def test_cli_privacy_epsilon(capsys):
    args = ["privacy", "epsilon", "--noise-multiplier", "1.5", "--sample-rate", "0.04", "--steps", "2250",
            "--delta", "1e-5"]
    assert main(args) == 0
    assert float(capsys.readouterr().out.strip().splitlines()[-1]) == pytest.approx(7.3291, abs=1e-4)
    assert main(args + ["--accountant", "prv", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["epsilon"] == pytest.approx(epsilon(1.5, 0.04, 2250, 1e-5, "prv")) and record["accountant"] == "prv"
    assert main(["privacy", "noise", "--target-epsilon", "8", "--sample-rate", "0.04", "--steps", "2250"]) == 0
    sigma = float(capsys.readouterr().out.strip().splitlines()[-1])
    assert sigma == pytest.approx(noise_for_epsilon(8.0, 0.04, 2250, 1e-5), rel=1e-6)


@pytest.mark.parametrize("args, match", [
    (["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "2", "--steps", "10"], "sample rate"),
    (["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10", "--delta", "1"],
     "delta"),
    (["privacy", "noise", "--target-epsilon", "0", "--sample-rate", "0.1", "--steps", "10"], "target epsilon"),
    (["privacy", "epsilon", "--sample-rate", "0.1", "--steps", "10"], "--noise-multiplier"),
    (["train", "--target-epsilon", "3", "--out", "never"], "add --dp"),
    (["train", "--dp", "--out", "never"], "--target-epsilon E or --noise-multiplier S"),
])
def test_cli_privacy_bad_inputs(args, match, capsys):
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0]


def test_cli_train_dp_writes_parameters(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quiet", "train", "--dp", "--noise-multiplier", "1.0", "--max-grad-norm", "0.5",
                 "--delta", "1e-6", "--size", "32", "--epochs", "1", "--batch-size", "6", "--arch", "unet",
                 "--out", str(out)]) == 0
    record = json.loads((out / "train.json").read_text())["dp"]
    assert record["noise_multiplier"] == 1.0 and record["max_grad_norm"] == 0.5 and record["delta"] == 1e-6
    assert record["sample_rate"] == 0.5 and record["steps"] == 2
    assert record["epsilon"] == pytest.approx(epsilon(1.0, 0.5, 2, 1e-6))
    assert "epsilon" in capsys.readouterr().out


def test_dp_client_accepts_a_model_loaded_in_eval_mode(fixed, batch):
    """A checkpoint loads in eval mode; the DP client sets its own mode, so only BatchNorm is refused."""
    update = parse_defense("dp:sigma=0.5/clip=1").client_update(copy.deepcopy(fixed).eval(), batch, train_mode=True)
    assert update.meta.defense["name"] == "dp" and all(torch.isfinite(t).all() for t in update.tensors.values())
