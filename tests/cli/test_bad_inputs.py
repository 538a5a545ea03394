"""Bad inputs at the command line: one line that says what to do, a non-zero exit, no traceback, nothing written.

Each case builds its bad input in a fresh folder, runs ``segaudit`` in-process and checks the outcome; the
library-level refusals are tested next to their modules (test_data, test_models, test_privacy, ...).
"""
import json
import os
import pickle
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from segaudit.cli import main
from segaudit.fl import client_update
from segaudit.models import build_model, save_model
from segaudit.types import Batch
from segaudit.updates import save_update


def tiny(classes=2, channels=1):
    torch.manual_seed(0)
    return build_model("unet", in_channels=channels, classes=classes, encoder_depth=3, decoder_channels=[16, 8, 4])


def data_folder(root, image, mask, classes=None):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    Image.fromarray(image).save(root / "images" / "a.png")
    Image.fromarray(mask).save(root / "masks" / "a.png")
    if classes:
        (root / "classes.json").write_text(json.dumps(classes))
    return root


class Payload:
    """Unpickling this creates a marker file (it must never happen)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _truncated_checkpoint(tmp):
    folder = tmp / "model"
    save_model(tiny(), folder)
    weights = next(folder.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:100])
    return ["attack", "--model", str(folder), "--data", "nuclei", "--steps", "1"], "model"


def _pickle_checkpoint(tmp):
    path = tmp / "evil.pt"
    path.write_bytes(pickle.dumps({"state_dict": Payload(tmp / "marker")}))
    return ["attack", "--model", str(path), "--data", "nuclei", "--steps", "1"], "evil.pt"


def _foreign_model_class(tmp):
    folder = tmp / "model"
    save_model(tiny(), folder)
    config = folder / "config.json"
    data = json.loads(config.read_text())
    data["_model_class"] = "os.system"
    config.write_text(json.dumps(data))
    return ["attack", "--model", str(folder), "--data", "nuclei", "--steps", "1"], "os.system"


def _rgb_model_grey_data(tmp):
    folder = tmp / "model"
    save_model(tiny(channels=3), folder)
    return ["attack", "--model", str(folder), "--data", "nuclei", "--steps", "1"], "channel"


def _grey_model_rgb_data(tmp):
    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    data = data_folder(tmp / "rgb", rgb, np.zeros((64, 64), np.uint8))
    folder = tmp / "model"
    save_model(tiny(), folder)
    return ["attack", "--model", str(folder), "--data", str(data), "--classes", "2", "--steps", "1"], "channel"


def _mask_255(tmp):
    mask = np.zeros((64, 64), np.uint8)
    mask[10:20, 10:20] = 255
    data = data_folder(tmp / "d", np.full((64, 64), 128, np.uint8), mask)
    return ["attack", "--data", str(data), "--classes", "2", "--steps", "1"], "255"


def _mask_too_many_classes(tmp):
    mask = np.full((64, 64), 3, np.uint8)
    data = data_folder(tmp / "d", np.full((64, 64), 128, np.uint8), mask, classes=["background", "lesion"])
    return ["attack", "--data", str(data), "--steps", "1"], "outside 0..1"


def _empty_dataset(tmp):
    (tmp / "d" / "images").mkdir(parents=True)
    (tmp / "d" / "masks").mkdir()
    return ["attack", "--data", str(tmp / "d"), "--classes", "2", "--steps", "1"], "no image"


def _size_not_multiple(tmp):  # PAN needs sides divisible by 16 (a U-Net pads inside smp and takes any size)
    return ["attack", "--arch", "pan", "--data", "nuclei", "--size", "120", "--steps", "1"], "use 112 or 128"


def _other_arch_update(tmp):
    folder = tmp / "model"
    save_model(tiny(), folder)
    batch = Batch(torch.randn(1, 1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long), ("a", "b", "c"))
    save_update(client_update(tiny(classes=3), batch), tmp / "u.safetensors")
    return ["check-update", "--model", str(folder), "--update", str(tmp / "u.safetensors"), "--size", "32"], \
        "segmentation_head"


def _nan_update(tmp):
    folder = tmp / "model"
    model = tiny()
    save_model(model, folder)
    batch = Batch(torch.randn(1, 1, 32, 32), torch.zeros(1, 32, 32, dtype=torch.long), ("a", "b"))
    update = client_update(model, batch)
    name = next(iter(update.tensors))
    update.tensors[name][0] = float("nan")
    save_update(update, tmp / "u.safetensors")
    return ["check-update", "--model", str(folder), "--update", str(tmp / "u.safetensors"), "--size", "32"], name


def _batchnorm_batch_one(tmp):
    return ["attack", "--arch", "deeplabv3plus", "--data", "nuclei", "--batch-size", "1", "--client-mode", "train",
            "--steps", "1"], "batch of at least 2"


def _epsilon_zero(tmp):
    return ["privacy", "noise", "--target-epsilon", "0", "--sample-rate", "0.1", "--steps", "10"], "epsilon"


def _delta_one(tmp):
    return ["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.1", "--steps", "10",
            "--delta", "1"], "delta"


def _existing_output(tmp):
    (tmp / "out").mkdir()
    (tmp / "out" / "keep.txt").write_text("mine")
    return ["attack", "--data", "nuclei", "--steps", "1"], "pass --force"


def _huge_image(tmp):
    root = tmp / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for folder in ("images", "masks"):  # a valid PNG header claiming 100000 x 100000 pixels, tiny on disk
        header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
        chunk = b"IHDR" + header
        png = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
        (root / folder / "a.png").write_bytes(png + b"\x00\x00\x00\x00IEND\xaeB`\x82")
    return ["attack", "--data", str(root), "--classes", "2", "--steps", "1"], "tiles or downscale"


def _non_square_mask_of_another_shape(tmp):
    image = np.random.default_rng(0).integers(0, 255, (48, 80), dtype=np.uint8)
    data = data_folder(tmp / "d", image, np.zeros((80, 48), np.uint8))  # the mask saved transposed
    return ["attack", "--data", str(data), "--classes", "2", "--steps", "1"], "images/a.png is 48x80 but its mask"


def _model_name_leaving_the_output(tmp):
    config = tmp / "audit.yaml"
    config.write_text("models:\n  - {name: ../../x, train_steps: 1}\n")
    return ["audit", str(config)], "model name '../../x' is not a plain label"


def _force_would_delete_the_data(tmp):
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = data_folder(tmp / "out" / "d", image, np.zeros((64, 64), np.uint8))
    return ["attack", "--data", str(data), "--classes", "2", "--steps", "1", "--force"], "--force would delete it"


CASES = [_truncated_checkpoint, _pickle_checkpoint, _foreign_model_class, _rgb_model_grey_data, _grey_model_rgb_data,
         _mask_255, _mask_too_many_classes, _empty_dataset, _size_not_multiple, _other_arch_update, _nan_update,
         _batchnorm_batch_one, _epsilon_zero, _delta_one, _existing_output, _huge_image,
         _non_square_mask_of_another_shape, _model_name_leaving_the_output, _force_would_delete_the_data]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_bad_input_is_one_line_nonzero_and_writes_nothing(tmp_path, capsys, case):
    args, hint = case(tmp_path)
    needs_out = args[0] in ("attack", "audit")
    before = {p for p in tmp_path.rglob("*")}
    with warnings.catch_warnings(record=True) as shown:  # a real run prints warnings on stderr too
        warnings.simplefilter("always")
        code = main(["--quiet", *args, *(["--out", str(tmp_path / "out")] if needs_out else [])])
    assert not shown, [str(w.message)[:120] for w in shown]
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    assert hint in err, err
    assert {p for p in tmp_path.rglob("*")} == before  # nothing written, nothing half-written
    assert not (tmp_path / "marker").exists()


def test_force_never_replaces_the_working_folder(tmp_path, monkeypatch, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    for out in (".", str(tmp_path)):
        assert main(["--quiet", "attack", "--data", "nuclei", "--steps", "1", "--out", out, "--force"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: refusing to replace") and len(err.splitlines()) == 1, err
    assert {p for p in tmp_path.rglob("*")} == before and (tmp_path / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("size, fit", [(32, "crop"), (64, "resize")])
def test_non_square_images_are_cropped_or_scaled_and_padded_and_say_so(tmp_path, capsys, size, fit):
    """48x80 images: crops when both sides reach --size, else the longer side is scaled to --size and padded."""
    rng = np.random.default_rng(0)
    mask = np.zeros((48, 80), np.uint8)
    mask[10:30, 20:70] = 1
    data = data_folder(tmp_path / "d", rng.integers(0, 255, (48, 80), dtype=np.uint8), mask)
    save_model(tiny(), tmp_path / "model")
    assert main(["--quiet", "attack", "--model", str(tmp_path / "model"), "--data", str(data), "--classes", "2",
                 "--size", str(size), "--steps", "1", "--out", str(tmp_path / "out")]) == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["fit"] == fit and result["size"] == size and result["status"] == "ok"
    assert ("@y" in result["images"][0]) == (fit == "crop")  # a crop is named by its corner
    said = "images scaled and padded to 64 px (smallest side 48)" in capsys.readouterr().out
    assert said == (fit == "resize")
