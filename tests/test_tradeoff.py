"""The privacy-utility trade-off sweep: API and ``segaudit tradeoff`` CLI on a tiny budget."""
import json

import pytest
import torch

from segaudit.cli import main
from segaudit.data import load_dataset
from segaudit.defenses import DEFENSES
from segaudit.models import build_model
from segaudit.report.plots import tradeoff_frontier
from segaudit.tradeoff import TradeoffSettings, parse_defense_list, run_tradeoff

ROW_KEYS = {"defense", "epsilon", "utility_dice", "utility_iou", "attack_psnr", "attack_ssim", "attack_mask_dice",
            "runtime_s"}


def test_run_tradeoff_tiny_model():
    """The API on a tiny U-Net: one row per defense, the adaptive attacker chosen per defense."""
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    settings = TradeoffSettings(size=32, batch_size=1, train_steps=2, train_batch_size=2, attack_steps=2, images=1)
    seen = []
    rows = run_tradeoff(model, load_dataset("nuclei"), ["none", "prune:0.9", "dropout:0.5", "localsteps:2"],
                        settings, on_row=seen.append)
    assert seen == rows and [r["defense"] for r in rows] == ["none", "prune:0.9", "dropout:0.5", "localsteps:2"]
    for row in rows:
        assert ROW_KEYS <= set(row) and row["attack_status"] == "ok" and row["epsilon"] is None
        assert 0 <= row["utility_dice"] <= 1 and 0 <= row["attack_mask_dice"] <= 1 and row["attack_psnr"] > 0
        assert row["attack_psnr_gain"] == pytest.approx(row["attack_psnr"] - row["attack_baseline_psnr"], abs=1e-9)
    assert [r["attack"] for r in rows] == ["seg", "seg", "dropout", "seg"]
    assert rows[1]["adaptation"]["support_only"] and not rows[0]["adaptation"]["support_only"]


def test_tradeoff_cli_tiny_budget(tmp_path, capsys):
    out = tmp_path / "sweep"
    specs = ["none", "dp:eps=8/clip=1"] if "dp" in DEFENSES else ["none", "noise:0.001"]
    assert main(["--quiet", "tradeoff", "--arch", "unet", "--data", "nuclei", "--size", "32", "--defenses",
                 ",".join(specs), "--batch-size", "1", "--train-steps", "2", "--attack-steps", "2",
                 "--client-mode", "eval", "--out", str(out)]) == 0
    result = json.loads((out / "tradeoff.json").read_text())
    rows = result["rows"]
    assert [row["defense"] for row in rows] == specs and result["settings"]["train_steps"] == 2
    for row in rows:
        assert ROW_KEYS <= set(row) and row["attack_status"] == "ok"
        assert 0 <= row["utility_dice"] <= 1 and 0 <= row["attack_mask_dice"] <= 1 and row["attack_psnr"] > 0
        assert (row["epsilon"] is None) == (row["name"] != "dp")
    if "dp" in DEFENSES:  # epsilon of the DP training run; the attacker knows sigma and C
        assert 0 < rows[1]["epsilon"] <= 8.0 + 0.1 and rows[1]["adaptation"]["defense"] == "dp"
    assert (out / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.strip().endswith("tradeoff.json")


@pytest.mark.parametrize("args, match", [
    (["--defenses", "none,prune:1.5"], "p must be a number in [0, 1)"),
    (["--defenses", "none,magic"], "unknown defense 'magic'"),
    (["--defenses", ""], "--defenses is empty"),
    (["--defenses", "none,none"], "listed twice"),
    (["--train-steps", "0"], "--train-steps must be at least 1"),
    (["--attack-steps", "0"], "--attack-steps must be at least 1"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--client-mode", "sleepy"], "invalid choice"),
])
def test_tradeoff_cli_bad_inputs(tmp_path, monkeypatch, capsys, args, match):
    monkeypatch.chdir(tmp_path)
    assert main(["--quiet", "tradeoff", "--size", "32", "--out", "o", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and match in err, err
    assert list(tmp_path.iterdir()) == []


def test_parse_defense_list_and_frontier(tmp_path):
    pairs = parse_defense_list(" none, noise:0.01 ,dropout:p=0.3/where=decoder,")
    assert [s for s, _ in pairs] == ["none", "noise:0.01", "dropout:p=0.3/where=decoder"]
    assert pairs[2][1].where == "decoder"
    rows = [{"defense": "a", "epsilon": None, "utility_dice": 0.9, "attack_psnr": 20.0, "attack_mask_dice": 0.8},
            {"defense": "b", "epsilon": 8.0, "utility_dice": 0.8, "attack_psnr": 10.0, "attack_mask_dice": None}]
    assert tradeoff_frontier(rows, tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
