"""One default client mode everywhere, settings no client can run recorded as not applicable, and the baseline
the figures show."""
import inspect
import json

import numpy as np
import pytest
import torch

from segaudit import audit, cells
from segaudit.attacks.runner import attack_batch
from segaudit.cli import build_parser, main
from segaudit.config import CLIENT_MODE, AuditConfig, ModelConfig
from segaudit.data import load_dataset, make_batch
from segaudit.errors import NotApplicable
from segaudit.fl import client_update
from segaudit.leakage import layer_scores
from segaudit.metrics import baseline_guess, best_constant_class, constant_image
from segaudit.models import build_model
from segaudit.privacy import private_client_update
from segaudit.report.findings import recommendations, stops_attack
from segaudit.report.html import render
from segaudit.tradeoff import TradeoffSettings, run_tradeoff
from segaudit.types import ClientProtocol

COMMANDS = ("attack", "audit", "infer", "layers", "tradeoff", "update")


def test_every_command_the_config_and_the_api_default_to_one_client_mode():
    assert CLIENT_MODE == "train"
    parser = build_parser()
    for command in COMMANDS:
        args = ["--data", "nuclei", "--out", "x"] + (["--arch", "unet"] if command != "audit" else [])
        parsed = parser.parse_args([command, *args])
        # audit: None reads the config's, whose default is the same
        assert (parsed.client_mode or AuditConfig().client_mode) == CLIENT_MODE, command
    assert AuditConfig().client_mode == TradeoffSettings().client_mode == CLIENT_MODE
    # the Python API: every client takes a ClientProtocol whose default is that mode
    assert ClientProtocol().client_mode == CLIENT_MODE and ClientProtocol().train_mode is True
    for fn in (client_update, attack_batch, layer_scores, private_client_update):
        assert inspect.signature(fn).parameters["protocol"].default is None, fn.__name__


def test_a_train_mode_client_on_one_value_per_channel_is_not_applicable():
    """A 32 px U-Net's deepest map is 1x1: PyTorch cannot train it in train mode on one image, and no client can."""
    model = build_model("unet", in_channels=1, classes=2)
    batch = make_batch(load_dataset("nuclei"), [0], size=32, fit="crop", seed=0)
    with pytest.raises(NotApplicable, match="a client in train mode cannot train this model on a batch of 1"):
        client_update(model, batch)
    assert client_update(model, batch, train_mode=False).meta.train_mode is False


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A train-mode audit at 32 px: batch 1 is not applicable, batch 2 is measured."""
    out = tmp_path_factory.mktemp("mode") / "audit"
    config = AuditConfig(name="modes", size=32, models=(ModelConfig("unet", train_steps=2),), attack_steps=1,
                         batch_sizes=(1, 2), images=1, defenses=("none",), inference=(), layers=False)
    return out, config, audit.run(config, out, progress=False)


def test_not_applicable_cells_are_recorded_not_failed_and_not_retried(mixed, monkeypatch):
    out, config, result = mixed
    runs = result.results["runs"]
    assert [(r["batch_size"], r["status"]) for r in runs] == [(1, "not applicable"), (2, "ok")]
    assert "cannot train this model on a batch of 1" in runs[0]["error"]
    assert result.cells["failed"] == 0 and not result.nothing_worked
    assert [c["batch_size"] for c in result.results["cells"]] == [2]
    monkeypatch.setitem(cells.WORK, "attack", lambda *a: pytest.fail("a not applicable cell ran again"))
    assert audit.run(config, out, progress=False).results["runs"] == runs


def test_the_report_names_the_mode_and_the_cells_it_could_not_run(mixed):
    out, _, result = mixed
    html = (out / "report.html").read_text()
    assert "train: BatchNorm normalises by the batch's own statistics, as real clients train" in html
    assert "Settings not applicable" in html and "why no client can run it" in html
    assert "n = 1, no interval" in html and "A quick audit: 1 image per cell" in html
    said = " ".join(recommendations(result.results))
    assert "1 of 2 runs are not applicable" in said and "rerun them" not in said


def test_an_audit_whose_every_cell_is_not_applicable_exits_2(mixed, tmp_path, capsys):
    out = tmp_path / "a"
    model = audit.model_folder(mixed[0], "unet")  # the trained model of the mixed audit
    code = main(["--quiet", "audit", "--model", str(model), "--data", "nuclei", "--size", "32", "--quick",
                 "--batch-sizes", "1", "--inference", "", "--no-layers", "--defenses", "none", "--attack-steps", "1",
                 "--out", str(out)])
    assert code == 2
    assert "error: no cell of the audit measured anything" in capsys.readouterr().err


def test_the_tradeoff_keeps_utility_when_its_attack_is_not_applicable():
    torch.manual_seed(0)
    settings = TradeoffSettings(size=32, batch_size=1, train_steps=2, train_batch_size=2, attack_steps=1, images=2)
    [row] = run_tradeoff(build_model("unet", in_channels=1, classes=2), load_dataset("nuclei"), ["none"], settings)
    assert row["attack_status"].startswith("not applicable: a client in train mode cannot train")
    assert row["attack_psnr"] is None and row["attack_images"] == 0 and 0 <= row["utility_dice"] <= 1
    assert not stops_attack(row)
    html = render({"tradeoff": [{**row, "model": "m"}]})
    assert "not applicable*" in html and "*Not applicable: a client in train mode cannot train" in html


def test_the_tradeoff_attacks_several_images_and_ranks_them():
    torch.manual_seed(0)
    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    settings = TradeoffSettings(size=32, batch_size=1, train_steps=2, train_batch_size=2, attack_steps=2, images=3)
    [row] = run_tradeoff(model, load_dataset("nuclei"), ["none"], settings)
    found = row["attack_identification"]
    assert row["attack_images"] == 3 and found["n"] == 3 and found["chance"] <= 1 / 32
    assert row["attack_psnr_gain"] == pytest.approx(row["attack_psnr"] - row["attack_baseline_psnr"], abs=1e-9)


@pytest.mark.parametrize("identified, stopped", [(None, True),
                                                 ({"rate": 0.0, "ci": [0.0, 0.56], "chance": 1 / 32}, True),
                                                 ({"rate": 1.0, "ci": [0.44, 1.0], "chance": 1 / 32}, False)])
def test_a_defense_stops_the_attack_only_when_identification_is_at_chance(identified, stopped):
    row = {"attack_psnr_gain": -2.0, "attack_mask_dice_gain": -0.1, "attack_identification": identified}
    assert stops_attack(row) is stopped


def test_the_baseline_guess_is_the_flat_image_and_the_best_constant_mask():
    batch = make_batch(load_dataset("nuclei"), [0, 1], size=32, fit="crop", seed=0)
    images, masks = baseline_guess(batch)
    true = (batch.images.numpy().astype(np.float64) * 0.5) + 0.5
    for i in range(2):
        np.testing.assert_allclose(images[i], constant_image(true[i]), atol=1e-6)
        assert torch.equal(masks[i], torch.full_like(batch.masks[i], best_constant_class(batch.masks[i], 2)[0]))
    prior = batch.images[0]  # a prior image equal to the first truth beats its flat image there
    images, _ = baseline_guess(batch, prior_image=prior)
    np.testing.assert_allclose(images[0], true[0], atol=1e-6)


def test_the_attack_figure_shows_truth_baseline_and_reconstruction(tmp_path, capsys):
    out = tmp_path / "a"
    assert main(["--quiet", "attack", "--arch", "unet", "--data", "nuclei", "--size", "64", "--steps", "1",
                 "--out", str(out)]) == 0
    from PIL import Image

    width, height = Image.open(out / "reconstruction.png").size
    assert width > 5 * height  # one row of six panels: truth, baseline, reconstruction and the three masks
    assert json.loads((out / "result.json").read_text())["client_mode"] == CLIENT_MODE


@pytest.mark.parametrize("name, images", [("nuclei", 16), ("data/dev/fundus", 8)])
def test_the_attacker_holds_enough_distractors_even_in_a_small_folder(name, images):
    from pathlib import Path

    from segaudit.attacks.knowledge import attacker_data

    data = load_dataset(str(Path(__file__).parents[1] / name) if "/" in name else name)
    assert len(data) == images
    batch = make_batch(data, [0], size=32, fit="crop", seed=0)
    known = attacker_data(data, batch, 32, fit="crop", norm={}, seed=0)
    stems = {n.split("@")[0] for n in known.public.names}
    assert len(known.public) >= 31 and batch.names[0].split("@")[0] not in stems and len(stems) == images - 1
