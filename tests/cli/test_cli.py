"""The command line: help on every command, one-line errors, exit codes, nothing written on failure."""
import json
import subprocess
import sys

import pytest

from segaudit.cli import build_parser, main
from segaudit.data import make_batch
from segaudit.fl import client_update
from segaudit.models import save_model
from segaudit.updates import load_update, save_update

COMMANDS = ["attack", "train", "update", "demo", "info", "privacy", "tradeoff", "layers", "check-update", "infer",
            "audit", "report", "sweep"]


def run_cli(*args, cwd=None):
    """Run ``segaudit`` in a subprocess, as a user would."""
    return subprocess.run([sys.executable, "-m", "segaudit.cli", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command, capsys):
    assert main([command, "--help"]) == 0
    assert "--quiet" in capsys.readouterr().out


def test_every_command_is_tested_for_help():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert sorted(sub.choices) == sorted(COMMANDS)


def test_unknown_command_and_option_are_one_line(capsys):
    assert main(["nope"]) == 2
    assert main(["train", "--bogus"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_info_lists_archs_and_data(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "unet" in out and "nuclei" in out and "lenet" in out


def test_update_writes_safetensors_and_refuses_overwrite(tmp_path, capsys):
    path = tmp_path / "u.safetensors"
    assert main(["--quiet", "update", "--data", "nuclei", "--size", "32", "--batch-size", "2", "--out", str(path)]) == 0
    update = load_update(path)
    assert update.meta.batch_size == 2 and "segmentation_head.0.bias" in update.tensors
    before = path.read_bytes()
    assert main(["update", "--data", "nuclei", "--size", "32", "--out", str(path)]) == 2
    assert "already exists" in capsys.readouterr().err and path.read_bytes() == before


def test_train_cli_small_and_refuses_existing_out(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--quiet", "--data", "nuclei", "--size", "32", "--steps", "2", "--batch-size", "2",
                "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "train.json").read_text())
    assert 0.0 <= summary["heldout_dice"] <= 1.0 and (out / "model" / "config.json").exists()
    r = run_cli("train", "--quiet", "--data", "nuclei", "--steps", "2", "--out", str(out))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "pass --force" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, match", [
    (["update", "--data", "no_such_dataset", "--out", "x.safetensors"], "no_such_dataset"),
    (["update", "--arch", "segnet9000", "--out", "x.safetensors"], "unknown model arch"),
    (["update", "--size", "100", "--out", "x.safetensors"], "multiple of"),
    (["update", "--out", "x.bin"], "must end in .safetensors"),
    (["train", "--steps", "0", "--out", "run"], "steps must be at least 1"),
])
def test_bad_inputs_exit_2_with_one_line_and_write_nothing(tmp_path, args, match):
    r = run_cli("--quiet", *args, cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and match in r.stderr
    assert list(tmp_path.iterdir()) == []


RESULT_KEYS = {"attack", "threat", "arch", "encoder", "batch_size", "steps", "runtime_s", "status", "metrics"}
METRIC_KEYS = {"mse", "psnr", "ssim", "mask_dice", "mask_iou", "label_acc", "baseline_psnr", "baseline_ssim",
               "baseline_mask_dice", "psnr_gain", "ssim_gain", "mask_dice_gain", "rdlv", "identification_rate",
               "mask_identification_rate"}


def test_attack_cli_writes_result_and_figure(tmp_path):
    out = tmp_path / "att"
    assert main(["--quiet", "attack", "--data", "nuclei", "--size", "64", "--batch-size", "2", "--attack", "ig",
                 "--steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert RESULT_KEYS <= set(result) and set(result["metrics"]) == METRIC_KEYS
    assert result["status"] == "ok" and result["batch_size"] == 2 and result["metrics"]["label_acc"] is None
    m = result["metrics"]  # the contract of issue 17: a gain is the value minus its baseline
    assert m["psnr_gain"] == pytest.approx(m["psnr"] - m["baseline_psnr"], abs=1e-9)
    assert m["mask_dice_gain"] == pytest.approx(m["mask_dice"] - m["baseline_mask_dice"], abs=1e-9)
    found = result["identification"]  # ranked among crops of the other 14 nuclei tiles (4 each)
    assert found["candidates"] == 1 + 4 * 14 and len(found["identification_rank"]) == 2
    assert m["identification_rate"] == found["identification_rate"] and result["threat"] == "honest-but-curious server"
    assert (out / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_attack_cli_rates_identification_of_a_trained_fedavg_client(tmp_path):
    """Issue 18's contract: batch 4, FedAvg with 4 local steps, client in train mode -> metrics.identification_rate,
    with distractors from the folder's images that are not in the batch."""
    out = tmp_path / "att"
    assert main(["--quiet", "attack", "--data", "nuclei", "--size", "64", "--batch-size", "4", "--mode", "fedavg",
                 "--local-steps", "4", "--client-mode", "train", "--steps", "1", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    rate, found = result["metrics"]["identification_rate"], result["identification"]
    assert 0 <= rate <= 1 and rate == sum(found["identified"]) / 4 and found["candidates"] == 1 + 4 * 12
    assert result["mode"] == "fedavg" and result["local_steps"] == 4 and result["client_mode"] == "train"


def test_attack_cli_classification_from_image_and_label(tmp_path):
    import numpy as np
    from PIL import Image

    Image.fromarray((np.random.default_rng(0).random((32, 32)) * 255).astype("uint8")).save(tmp_path / "x.png")
    out = tmp_path / "att"
    assert main(["--quiet", "attack", "--arch", "lenet", "--image", str(tmp_path / "x.png"), "--label", "3",
                 "--classes", "5", "--size", "32", "--attack", "dlg", "--steps", "2", "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["arch"] == "lenet"
    assert result["metrics"]["mask_dice"] is None and result["metrics"]["label_acc"] == 1.0


@pytest.mark.parametrize("args, match", [
    (["--image", "missing.png"], "does not exist"),
    (["--arch", "lenet", "--data", "brain_mri", "--size", "32", "--label", "7"], "--label 7 is outside 0..3"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--steps", "0"], "at least 1 step"),
    (["--attack", "magic"], "invalid choice"),
    (["--model", "nowhere"], "nowhere"),
])
def test_attack_cli_bad_inputs(tmp_path, args, match):
    r = run_cli("--quiet", "attack", "--out", "o", *(args if "--steps" in args else ["--steps", "1", *args]),
                cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and match in r.stderr, r.stderr
    assert list(tmp_path.iterdir()) == []


def test_attack_on_a_saved_update_rebuilds_without_truth(tiny_unet, nuclei, tmp_path, capsys):
    model = tiny_unet()
    save_model(model, tmp_path / "global")
    batch = make_batch(nuclei, [0, 1], size=32, fit="crop", seed=0)
    save_update(client_update(model, batch, mode="fedavg", local_steps=2), tmp_path / "u.safetensors")
    args = ["attack", "--model", str(tmp_path / "global"), "--update", str(tmp_path / "u.safetensors"), "--size", "32",
            "--steps", "3", "--quiet"]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    result = json.loads((tmp_path / "a" / "result.json").read_text())
    assert result["status"] == "ok" and result["metrics"] is None and result["meta"]["batch_size"] == 2
    assert result["meta"]["mode"] == "fedavg" and len(result["restart_losses"]) == 1
    assert (tmp_path / "a" / "reconstruction.png").stat().st_size > 0
    capsys.readouterr()
    assert main([*args[:1], *args[3:], "--out", str(tmp_path / "b")]) == 2  # no --model
    assert main([*args, "--attack", "imprint", "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --update needs --model, the global model the update was computed on",
                   "error: the imprint attack sends the client a model of its own, but a saved update was computed "
                   "on the global model; use an honest-server attack (seg, ig, dlg)"]
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()
