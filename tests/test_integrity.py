"""Audit integrity (issue 16): a result belongs to exactly what produced it, the user's model is run as it was
trained, class and channel mismatches are refused before any work, and seeded runs repeat exactly.

One test (or a parametrised group) per numbered finding of the issue (finding 5, memory, is tested in
test_inference.py). Everything runs on tiny folders of 32 px images with tiny budgets, on one thread.
"""
from __future__ import annotations

import copy
import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segaudit import audit, cells
from segaudit.cli import main
from segaudit.config import AuditConfig, ModelConfig
from segaudit.data import load_dataset
from segaudit.errors import SegauditError
from segaudit.models import build_model, load_model, model_spec, save_model
from segaudit.preprocessing import HOW_TO_DECLARE, Preprocessing, declare
from segaudit.preprocessing import of as preprocessing_of
from segaudit.store import ResultsStore
from segaudit.train import evaluate, train_model

THREADS = ["--threads", "1"]
#: the smallest audit: one attack run of one step on a checkpoint, nothing else
TINY_AUDIT = ["--size", "32", "--client-mode", "eval", "--quick", "--attack-steps", "1", "--inference", "",
              "--defenses", "none", "--no-layers", "--images", "1", "--batch-sizes", "1", *THREADS]
FIX = "use --force to start afresh, or another --out"
VOLATILE = {"seconds", "runtime_s", "created", "command"}


# -- helpers and fixtures ---------------------------------------------------------------------------------------

def make_data(root: Path, classes=("background", "nucleus"), channels=1, n=8, seed=0) -> Path:
    """``n`` 32x32 images, each a bright square (labelled with the last class) on a dark background."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(seed)
    k = len(classes) if classes else 2
    for i in range(n):
        image = (rng.random((32, 32)) * 60).astype(np.uint8)
        mask = np.zeros((32, 32), np.uint8)
        side = int(rng.integers(6, 16))
        y, x = rng.integers(1, 31 - side, 2)
        image[y:y + side, x:x + side] += 150
        mask[y:y + side, x:x + side] = k - 1
        if k > 2:
            mask[0:4, 0:4] = 1
        if channels == 3:
            image = np.repeat(image[..., None], 3, axis=-1)
        Image.fromarray(image).save(root / "images" / f"s{i}.png")
        Image.fromarray(mask).save(root / "masks" / f"s{i}.png")
    if classes:
        (root / "classes.json").write_text(json.dumps(list(classes)))
    return root


def tiny_model(classes=2, channels=1, preprocessing=None):
    torch.manual_seed(0)
    return build_model("unet", in_channels=channels, classes=classes, encoder_depth=3, decoder_channels=[16, 8, 4],
                       preprocessing=preprocessing)


def cli(*args) -> int:
    return main(["--quiet", *map(str, args)])


def refused(capsys, *args) -> str:
    """Run the CLI; assert exit 2 with one ``error:`` line on stderr and return that line (without ``error: ``)."""
    capsys.readouterr()
    code = cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err, err
    return err[len("error: "):]


def ok(capsys, *args) -> None:
    capsys.readouterr()
    code = cli(*args)
    assert code == 0, capsys.readouterr().err[-2000:]


def read(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def stable(value):
    """``value`` without the fields that differ between identical runs (timings, creation time, command line)."""
    if isinstance(value, dict):
        return {k: stable(v) for k, v in value.items() if k not in VOLATILE and not k.endswith("_seconds")}
    if isinstance(value, list):
        return [stable(v) for v in value]
    return value


def scramble_rngs(i: int) -> None:
    """Leave every global generator in another state, as a fresh process or an earlier run would."""
    torch.manual_seed(1000 + i)
    np.random.seed(1000 + i)
    random.seed(1000 + i)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("integrity")


@pytest.fixture(scope="module")
def data2(work) -> Path:
    """Two classes (background, nucleus), one channel, 8 images."""
    return make_data(work / "d2")


@pytest.fixture(scope="module")
def data4(work) -> Path:
    return make_data(work / "d4", classes=("background", "a", "b", "c"), n=3)


@pytest.fixture(scope="module")
def data3_unnamed(work) -> Path:
    """Three classes, no classes.json (its class count comes from --classes)."""
    return make_data(work / "d3", classes=None, n=3)


@pytest.fixture(scope="module")
def rgb(work) -> Path:
    return make_data(work / "rgb", channels=3, n=3)


@pytest.fixture(scope="module")
def model2(work) -> Path:
    """A 2-class, 1-channel U-Net saved by segaudit (segaudit.json records segaudit's own normalisation)."""
    return save_model(tiny_model(), work / "m2")


@pytest.fixture(scope="module")
def external(work, data2):
    """A model trained on x/255 (mean 0, std 1), saved as a plain smp ``save_pretrained`` folder (no segaudit.json):
    the external checkpoint, which does not say how its inputs were normalised."""
    model = tiny_model(preprocessing={"mean": 0, "std": 1})
    data = load_dataset(data2)
    result = train_model(model, data, size=32, steps=20, batch_size=4, progress=False)
    folder = work / "external"
    result.model.save_pretrained(folder)
    assert not (folder / "segaudit.json").exists() and (folder / "config.json").exists()
    return folder, result.model, data


# -- 1. results are reused across different data and configs ------------------------------------------------------

def test_resumed_audit_with_changed_config_or_data_is_refused_and_force_starts_afresh(tmp_path, capsys, data2,
                                                                                        model2):
    data = tmp_path / "data"
    shutil.copytree(data2, data)
    out = tmp_path / "audit"
    args = ["audit", "--model", model2, "--data", data, *TINY_AUDIT, "--out", out]
    ok(capsys, *args)
    first = read(out / "results.json")
    old_hash = load_dataset(data).digest()
    assert first["data"]["data_hash"] == old_hash and all(r["data_hash"] == old_hash for r in first["runs"])
    ok(capsys, *args)  # the same config on the same data resumes
    runs = len(ResultsStore(out / "results.sqlite").runs())

    assert refused(capsys, *args, "--attack-steps", "2") == (
        f"{out} holds an audit of another config (attack_steps differ); {FIX}")

    image = np.array(Image.open(data / "images" / "s0.png"))
    image[0, 0] ^= 0xFF  # one pixel of one image
    Image.fromarray(image).save(data / "images" / "s0.png")
    new_hash = load_dataset(data).digest()
    assert new_hash != old_hash
    assert refused(capsys, *args) == (
        f"the data differ from those audited in {out} (data hash {new_hash} against {old_hash}); {FIX}")
    assert len(ResultsStore(out / "results.sqlite").runs()) == runs and read(out / "results.json") == first

    ok(capsys, *args, "--force")
    fresh = read(out / "results.json")
    assert fresh["data"]["data_hash"] == new_hash and all(r["data_hash"] == new_hash for r in fresh["runs"])
    assert new_hash in (out / "report.html").read_text()  # the reproducibility section names the data


def test_resumed_audit_of_a_changed_checkpoint_is_refused(tmp_path, capsys, data2):
    folder = save_model(tiny_model(), tmp_path / "model")
    out = tmp_path / "audit"
    args = ["audit", "--model", folder, "--data", data2, *TINY_AUDIT, "--out", out]
    ok(capsys, *args)
    old = read(out / "results.json")["models"][0]["model_hash"]
    changed = tiny_model()
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    save_model(changed, folder)
    new = audit.model_digest(load_model(folder))
    assert old == audit.model_digest(tiny_model()) != new
    assert refused(capsys, *args) == (
        f"model 'model' differs from the one audited in {out} (model hash {new} against {old}); {FIX}")


def test_a_narrower_config_is_refused_on_resume_and_after_force_shows_only_what_it_asked(tmp_path, capsys, data2,
                                                                                          model2):
    config = tmp_path / "audit.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "name": "wide", "data": str(data2), "size": 32, "models": [{"name": "m", "checkpoint": str(model2)}],
        "attack_steps": 1, "batch_sizes": [1], "images": 1, "inference": [], "layers": True,
        "layer_attack_steps": 1, "defenses": ["none", "noise:0.01"], "tradeoff_train_steps": 1}))
    out = tmp_path / "audit"
    ok(capsys, "audit", config, *THREADS, "--out", out)
    wide = read(out / "results.json")
    assert set(wide["layers"]) == {"m"} and [r["defense"] for r in wide["tradeoff"]] == ["none", "noise:0.01"]
    assert "noise:0.01" in (out / "report.html").read_text()

    narrow = [config, "--no-layers", "--defenses", "none", *THREADS, "--out", out]
    assert refused(capsys, "audit", *narrow) == (
        f"{out} holds an audit of another config (defenses, layers differ); {FIX}")
    ok(capsys, "audit", *narrow, "--force")
    results = read(out / "results.json")
    assert results["config"]["layers"] is False and results["config"]["defenses"] == ["none"]
    assert results["layers"] == {} and results["tradeoff"] == [] and len(results["runs"]) == 1
    assert {r["kind"] for r in ResultsStore(out / "results.sqlite").runs()} == {"train", "attack"}
    html = (out / "report.html").read_text()
    assert "noise:0.01" not in html


def test_an_in_memory_model_is_audited_and_another_model_cannot_resume_its_folder(tmp_path, data2, model2):
    """The README's Python example: ``ModelConfig("mine", model=m)`` audits ``m``; resuming that folder with
    another model (the CLI quick start's ``model``) is refused instead of mixing the two."""
    m = tiny_model()
    with torch.no_grad():
        next(m.parameters()).mul_(1.5)  # not the weights of model2
    base = dict(data=str(data2), size=32, attack_steps=1, batch_sizes=(1,), images=1, inference=(),
                defenses=("none",), layers=False, client_mode="eval")
    out = tmp_path / "audit"
    result = audit.run(AuditConfig(models=(ModelConfig("mine", model=m),), **base), out, progress=False)
    [card] = result.results["models"]
    assert card["name"] == "mine" and card["model_hash"] == audit.model_digest(m)
    assert card["trained"]["evaluated_on"] == "audit data" and card["trained"]["steps"] is None
    saved = audit.model_folder(out, "mine")
    assert audit.model_digest(load_model(saved)) == audit.model_digest(m) and card["checkpoint"] == str(saved.resolve())
    assert {r["model_hash"] for r in result.results["runs"]} == {audit.model_digest(m)}

    other = AuditConfig(models=(ModelConfig("model", checkpoint=str(model2)),), **base)
    with pytest.raises(SegauditError, match=rf"^{re.escape(str(out))} holds an audit of another config "
                                            rf"\(models\[0\]\.name, .*differ\); {FIX}$"):
        audit.run(other, out, progress=False)
    assert {r["model"] for r in ResultsStore(out / "results.sqlite").runs()} == {"mine"}


# -- 2. failed audits leave results.sqlite (or anything) behind --------------------------------------------------

def _missing_model(tmp, d):
    return ["--model", tmp / "nowhere", "--data", d["data2"]], (
        f"model path {tmp / 'nowhere'} does not exist: give a save_pretrained folder or a weights file")


def _class_mismatch(tmp, d):
    return ["--model", d["model2"], "--data", d["data4"]], (
        f"the model predicts 2 classes ({d['model2'] / 'segaudit.json'}) but the data has 4 "
        f"({d['data4'] / 'classes.json'}): audit the model on data labelled with its 2 classes")


def _wrong_channels(tmp, d):
    return ["--model", d["model2"], "--data", d["rgb"]], (
        f"the model takes 1 input channel ({d['model2'] / 'segaudit.json'}) but the images have 3 "
        "(e.g. images/s0.png): convert the images, or audit a model built for them")


def _size_50(tmp, d):
    return ["--arch", "unet", "--data", d["data2"], "--size", "50"], (
        "size 50 is not a multiple of the model's output stride 32; use 32 or 64")


def _mask_255(tmp, d):
    data = tmp / "d255"
    shutil.copytree(d["data2"], data)
    mask = np.array(Image.open(data / "masks" / "s0.png")) * 255
    Image.fromarray(mask.astype(np.uint8)).save(data / "masks" / "s0.png")
    return ["--model", d["model2"], "--data", data], (
        "mask masks/s0.png has values [0, 255] outside 0..1 (2 classes); masks must hold class indices — a 0/255 "
        "binary mask needs dividing by 255")


def _no_normalisation(tmp, d):
    return ["--model", d["external"][0], "--data", d["data2"]], (
        f"the model {d['external'][0]} does not say how its inputs were normalised, and segaudit never assumes it: "
        f"{HOW_TO_DECLARE}")


FAILURES = [_missing_model, _class_mismatch, _wrong_channels, _size_50, _mask_255, _no_normalisation]


@pytest.fixture(scope="module")
def inputs(data2, data4, rgb, model2, external):
    return {"data2": data2, "data4": data4, "rgb": rgb, "model2": model2, "external": external}


@pytest.mark.parametrize("empty", [False, True], ids=["new-out", "empty-out"])
@pytest.mark.parametrize("case", FAILURES, ids=[c.__name__.strip("_") for c in FAILURES])
def test_a_failed_audit_leaves_no_files(tmp_path, capsys, inputs, case, empty):
    args, message = case(tmp_path, inputs)
    out = tmp_path / "out"
    if empty:
        out.mkdir()
    # the size is given last so that --size 50 wins over TINY_AUDIT's
    line = refused(capsys, "audit", *TINY_AUDIT, *args, "--out", out)
    assert line == message
    if empty:
        assert out.is_dir() and list(out.iterdir()) == []
    else:
        assert not out.exists()


@pytest.mark.parametrize("empty", [False, True], ids=["new-out", "empty-out"])
def test_an_audit_that_fails_after_creating_its_store_removes_what_it_created(tmp_path, monkeypatch, data2, empty):
    def broken(cell, job, tmp, model_files):
        raise SegauditError("the model cannot be evaluated")

    monkeypatch.setitem(cells.WORK, "train", broken)
    out = tmp_path / "out"
    if empty:
        out.mkdir()
    config = AuditConfig(data=str(data2), size=32, models=(ModelConfig("m", model=tiny_model()),), attack_steps=1,
                         batch_sizes=(1,), images=1, inference=(), defenses=("none",), layers=False)
    with pytest.raises(SegauditError, match=r"^model 'm': the model cannot be evaluated$"):
        audit.run(config, out, progress=False)
    assert (list(out.iterdir()) == []) if empty else not out.exists()


# -- 3. the user's model is run with its own preprocessing ------------------------------------------------------

@pytest.mark.parametrize("command", [
    ["attack", "--steps", "1"], ["audit", *TINY_AUDIT], ["infer", "--updates", "2"], ["layers", "--steps", "1"],
    ["tradeoff", "--defenses", "none", "--train-steps", "1"]], ids=lambda c: c[0])
def test_a_checkpoint_that_does_not_state_its_normalisation_is_refused(tmp_path, capsys, external, data2, command):
    folder = external[0]
    out = tmp_path / "out"
    assert refused(capsys, *command, "--model", folder, "--data", data2, "--size", "32", *THREADS,
                   "--out", out) == (f"the model {folder} does not say how its inputs were normalised, and "
                                     f"segaudit never assumes it: {HOW_TO_DECLARE}")
    assert not out.exists()


def test_an_x255_model_audited_with_its_declared_normalisation_reproduces_its_own_dice(tmp_path, capsys, external,
                                                                                         data2):
    folder, model, data = external
    everything = list(range(len(data)))
    own = evaluate(model, data, everything, 32)["dice"]
    as_segaudit = copy.deepcopy(model)
    declare(as_segaudit, Preprocessing.from_dict({"mean": 0.5, "std": 0.5}, 1))
    assumed = evaluate(as_segaudit, data, everything, 32)["dice"]
    assert abs(own - assumed) > 0.02, (own, assumed)  # the default normalisation would show in the Dice

    out = tmp_path / "audit"
    ok(capsys, "audit", "--model", folder, "--data", data2, *TINY_AUDIT, "--mean", "0", "--std", "1", "--out", out)
    results = read(out / "results.json")
    [card] = results["models"]
    assert card["trained"]["dice"] == pytest.approx(own, abs=1e-6)
    assert card["trained"]["evaluated_on"] == "audit data" and card["trained"]["images"] == len(data)
    assert card["trained"]["steps"] is None and results["config"]["models"][0]["train_steps"] is None
    assert card["preprocessing"] == {"mean": [0.0], "std": [1.0], "scale": 1.0}
    html = (out / "report.html").read_text()
    assert "evaluated on the audit data" in html and "how it was trained is not known to segaudit" in html
    assert card["model_hash"] in html


def test_the_normalisation_can_live_in_the_smp_config_or_be_given_in_0_255_units(tmp_path, capsys, external, data2):
    folder = tmp_path / "declared"
    shutil.copytree(external[0], folder)
    config = read(folder / "config.json")
    (folder / "config.json").write_text(json.dumps({**config, "_preprocessing": {"mean": 0, "std": 1}}))
    assert preprocessing_of(load_model(folder)).unit() == {"mean": (0.0,), "std": (1.0,)}
    ok(capsys, "attack", "--model", folder, "--data", data2, "--size", "32", "--steps", "1", *THREADS,
       "--out", tmp_path / "att")
    assert Preprocessing.parse("0", "255", 255, channels=1).unit() == {"mean": (0.0,), "std": (1.0,)}


def test_train_steps_are_refused_for_a_checkpoint(model2):
    with pytest.raises(SegauditError, match=re.escape(
            "model 'x': 'train_steps' applies to models the audit trains; drop it for a checkpoint "
            "(segaudit does not know how it was trained)")):
        AuditConfig(models=(ModelConfig("x", checkpoint=str(model2), train_steps=5),))


# -- 4. class and channel mismatches are refused before any work -------------------------------------------------

COMMANDS = {
    "attack": ["attack", "--steps", "1"],
    "audit": ["audit", *TINY_AUDIT],
    "infer": ["infer", "--updates", "2"],
    "layers": ["layers", "--steps", "1"],
    "tradeoff": ["tradeoff", "--defenses", "none", "--train-steps", "1"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_class_mismatch_is_one_line_exit_2(tmp_path, capsys, model2, data4, command):
    out = tmp_path / "out"
    assert refused(capsys, *COMMANDS[command], "--model", model2, "--data", data4, "--size", "32", *THREADS,
                   "--out", out) == (
        f"the model predicts 2 classes ({model2 / 'segaudit.json'}) but the data has 4 ({data4 / 'classes.json'}): "
        "audit the model on data labelled with its 2 classes")
    assert not out.exists()


@pytest.mark.parametrize("command", ["attack", "audit"])
def test_a_class_count_from_the_classes_flag_is_named(tmp_path, capsys, model2, data3_unnamed, command):
    """Three classes (once the output layer's bias error); the count comes from --classes."""
    assert refused(capsys, *COMMANDS[command], "--model", model2, "--data", data3_unnamed, "--classes", "3",
                   "--size", "32", *THREADS, "--out", tmp_path / "out") == (
        f"the model predicts 2 classes ({model2 / 'segaudit.json'}) but the data has 3 (--classes): "
        "audit the model on data labelled with its 2 classes")


@pytest.mark.parametrize("command", ["attack", "audit", "infer"])
def test_a_wrong_channel_count_is_one_line_naming_both_numbers(tmp_path, capsys, model2, rgb, command):
    line = refused(capsys, *COMMANDS[command], "--model", model2, "--data", rgb, "--size", "32", *THREADS,
                   "--out", tmp_path / "out")
    assert line == (f"the model takes 1 input channel ({model2 / 'segaudit.json'}) but the images have 3 "
                    "(e.g. images/s0.png): convert the images, or audit a model built for them")


def test_a_three_channel_model_on_grey_images_is_refused(tmp_path, capsys, data2):
    folder = save_model(tiny_model(channels=3), tmp_path / "m3")
    assert refused(capsys, "attack", "--model", folder, "--data", data2, "--size", "32", "--steps", "1", *THREADS,
                   "--out", tmp_path / "out") == (
        f"the model takes 3 input channels ({folder / 'segaudit.json'}) but the images have 1 "
        "(e.g. images/s0.png): convert the images, or audit a model built for them")


# -- 6. reproducibility: the same seed gives the same numbers -------------------------------------------------------

def twice(capsys, tmp_path, *args, name="result.json") -> tuple[dict, dict, list[Path]]:
    """Run the command into two folders, from differently seeded global generators; both results."""
    outs = [tmp_path / "one", tmp_path / "two"]
    for i, out in enumerate(outs):
        scramble_rngs(i)
        ok(capsys, *args, *THREADS, "--out", out)
    return read(outs[0] / name), read(outs[1] / name), outs


def test_train_twice_with_one_seed_is_identical(tmp_path, capsys, data2):
    a, b, outs = twice(capsys, tmp_path, "train", "--data", data2, "--size", "32", "--steps", "3", "--batch-size",
                       "2", "--seed", "0", name="train.json")
    assert stable(a) == stable(b) and a["threads"] == 1
    weights = [(out / "model" / "model.safetensors").read_bytes() for out in outs]
    assert weights[0] == weights[1]


def test_attack_twice_with_one_seed_is_identical(tmp_path, capsys, data2, model2):
    a, b, _ = twice(capsys, tmp_path, "attack", "--model", model2, "--data", data2, "--size", "32", "--steps", "3",
                    "--batch-size", "2", "--seed", "0")
    assert stable(a) == stable(b) and a["threads"] == 1 and a["status"] == "ok"
    assert len(a["images"]) == 2 and all(n.split("@")[0] in {f"s{i}" for i in range(8)} for n in a["images"])


def test_dlg_on_lenet_twice_gives_the_same_mse(tmp_path, capsys, data2):
    a, b, _ = twice(capsys, tmp_path, "attack", "--attack", "dlg", "--arch", "lenet", "--data", data2, "--size", "32",
                    "--steps", "5", "--seed", "0")
    assert a["metrics"]["mse"] is not None and a["metrics"]["mse"] == b["metrics"]["mse"]
    assert stable(a) == stable(b)


def test_infer_twice_with_one_seed_is_identical(tmp_path, capsys, data2, model2):
    a, b, _ = twice(capsys, tmp_path, "infer", "--model", model2, "--data", data2, "--size", "32", "--attack",
                    "property", "--property", "nucleus>0.1", "--updates", "6", "--batch-size", "2",
                    "--crops-per-image", "2", "--seed", "0")
    assert stable(a) == stable(b) and a["threads"] == 1 and a["auc"] is not None


def test_tradeoff_twice_with_one_seed_is_identical(tmp_path, capsys, data2, model2):
    a, b, _ = twice(capsys, tmp_path, "tradeoff", "--model", model2, "--data", data2, "--size", "32", "--defenses",
                    "none,noise:0.01", "--train-steps", "2", "--train-batch-size", "2", "--attack-steps", "1",
                    "--seed", "0", name="tradeoff.json")
    assert stable(a) == stable(b) and a["threads"] == 1 and len(a["rows"]) == 2


def test_audit_twice_with_one_seed_is_identical_and_trains_on_a_known_split(tmp_path, capsys, data2):
    config = tmp_path / "audit.yaml"
    config.write_text(json.dumps({
        "name": "repro", "data": str(data2), "size": 32, "models": [{"name": "net", "arch": "unet", "train_steps": 2}],
        "attack_steps": 1, "batch_sizes": [1], "images": 1, "seeds": [0], "inference": [], "layers": False,
        "defenses": ["none"], "client_mode": "eval"}))
    a, b, _ = twice(capsys, tmp_path, "audit", config, name="results.json")
    assert stable(a) == stable(b) and a["threads"] == [1]
    trained = a["models"][0]["trained"]
    assert trained["evaluated_on"] == "held-out split" and trained["steps"] == 2 and trained["images"] == 2


# -- 6. sizes, 7. threads ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model, use", [(None, "32 or 64"), ("model2", "48 or 56")])
def test_attack_refuses_a_size_that_is_not_a_multiple_of_the_stride(tmp_path, capsys, data2, model2, model, use):
    stride = 32 if model is None else 8
    given = ["--arch", "unet"] if model is None else ["--model", model2]
    out = tmp_path / "out"
    assert refused(capsys, "attack", *given, "--data", data2, "--size", "50", "--steps", "1", *THREADS,
                   "--out", out) == f"size 50 is not a multiple of the model's output stride {stride}; use {use}"
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["train"], ["update", "--out", "u.safetensors"], ["attack"], ["layers"], ["tradeoff"], ["infer"], ["audit"],
    ["demo"], ["check-update", "--model", "m", "--update", "u.safetensors"]], ids=lambda a: a[0])
def test_every_computing_command_takes_threads_and_refuses_zero(tmp_path, capsys, monkeypatch, args):
    monkeypatch.chdir(tmp_path)
    extra = [] if "--out" in args or args[0] == "check-update" else ["--out", "out"]
    assert refused(capsys, *args, *extra, "--threads", "0") == "--threads must be at least 1, got 0"
    assert list(tmp_path.iterdir()) == []


def test_threads_are_set_and_recorded(tmp_path, capsys, data2, model2):
    torch.set_num_threads(2)
    try:
        ok(capsys, "attack", "--model", model2, "--data", data2, "--size", "32", "--steps", "1", *THREADS,
           "--out", tmp_path / "att")
        assert torch.get_num_threads() == 1 and read(tmp_path / "att" / "result.json")["threads"] == 1
    finally:
        torch.set_num_threads(1)


# -- 8. smaller ones -----------------------------------------------------------------------------------------------

def test_info_lists_attacks_and_defenses(capsys):
    from segaudit.attacks import ATTACKS
    from segaudit.attacks.inference import INFERENCE
    from segaudit.defenses import DEFENSES

    assert main(["info"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"inversion attacks: {', '.join(ATTACKS.available())}" in lines
    assert f"inference attacks: {', '.join(INFERENCE.available())}" in lines
    assert any(line.startswith(f"defenses: {', '.join(DEFENSES.available())}") for line in lines)
    assert {"seg", "dlg"} <= set(ATTACKS.available()) and {"noise", "dp"} <= set(DEFENSES.available())


def test_the_default_property_names_the_class(data2):
    config = AuditConfig(data=str(data2), size=32, inference=("composition", "property"), layers=False,
                         defenses=("none",), batch_sizes=(1,), images=1)
    props = {c.settings["property"] for c in audit.plan_cells(config) if c.kind == "inference"}
    [prop] = props
    assert re.fullmatch(r"nucleus>\d\.\d\d", prop), prop


def test_audit_model_without_data_is_refused(tmp_path, capsys, model2):
    out = tmp_path / "out"
    assert refused(capsys, "audit", "--model", model2, *THREADS, "--out", out) == (
        "--model needs --data: the folder of images and masks to audit it on (--data nuclei for the bundled crops)")
    assert not out.exists()


def test_audit_flags_reach_the_config_and_attack_runs_name_their_images(tmp_path, capsys, data2, model2):
    out = tmp_path / "audit"
    ok(capsys, "audit", "--model", model2, "--data", data2, *TINY_AUDIT, "--client-mode", "train",
       "--inference", "composition", "--property", "nucleus>0.3", "--out", out)
    results = read(out / "results.json")
    config = results["config"]
    assert config["client_mode"] == "train" and config["inference"] == ["composition"]
    assert config["property"] == "nucleus>0.3"
    [row] = results["inference"]
    assert row["attack"] == "composition" and row["property"] == "nucleus>0.3" and row["client_mode"] == "train"
    [run] = results["runs"]
    assert run["client_mode"] == "train" and run["threads"] == 1
    names = load_dataset(data2).names
    assert len(run["images"]) == 1 and run["images"][0].split("@")[0] in names
    assert model_spec(load_model(model2))["classes"] == 2


# -- found while writing these tests ------------------------------------------------------------------------------

def test_mean_std_with_a_config_apply_to_its_models(tmp_path, capsys, external, data2):
    """--mean/--std beside a config normalise the config's checkpoint; they never swap it for a fresh model."""
    import yaml

    folder, model, data = external
    config = tmp_path / "q.yaml"
    config.write_text(yaml.safe_dump({"data": str(data2), "size": 32,
                                      "models": [{"name": "ext", "checkpoint": str(folder)}], "attack_steps": 1,
                                      "batch_sizes": [1], "images": 1, "inference": [],
                                      "defenses": ["none"], "layers": False}))
    assert "does not say how its inputs were normalised" in refused(capsys, "audit", config, "--out", tmp_path / "a",
                                                                    *THREADS)
    ok(capsys, "audit", config, "--mean", "0", "--std", "1", "--out", tmp_path / "b", *THREADS)
    (m,) = read(tmp_path / "b" / "results.json")["models"]
    assert (m["name"], m["checkpoint"], m["trained"]["steps"], m["trained"]["evaluated_on"]) == (
        "ext", str(folder), None, "audit data")
    assert m["preprocessing"] == {"mean": [0.0], "std": [1.0], "scale": 1.0}


def test_a_bad_property_is_refused_before_any_work(tmp_path, capsys, model2, data2):
    out = tmp_path / "a"
    assert refused(capsys, "audit", "--model", model2, "--data", data2, "--quick", "--size", "32", "--inference",
                   "composition", "--property", "bogus>0.3", "--out", out, *THREADS) == (
        "unknown class 'bogus' in the property; the data's classes are: 0=background, 1=nucleus")
    assert not out.exists()


def test_a_segaudit_json_beside_an_smp_config_adds_the_preprocessing(tmp_path, external):
    """The refusal's advice works for a save_pretrained folder: a segaudit.json with only 'preprocessing'."""
    folder, model, _ = external
    copy_ = tmp_path / "ext"
    shutil.copytree(folder, copy_)
    (copy_ / "segaudit.json").write_text(json.dumps({"preprocessing": {"mean": [0], "std": [1], "scale": 1}}))
    loaded = load_model(copy_)
    assert preprocessing_of(loaded).std == (1.0,) and model_spec(loaded)["arch"] == "unet"


def test_a_fresh_model_names_the_flags_that_set_its_numbers(capsys, rgb):
    assert refused(capsys, "attack", "--arch", "unet", "--in-channels", "1", "--data", rgb, "--size", "32",
                   "--out", "unused", *THREADS).startswith("the model takes 1 input channel (--in-channels/--classes) "
                                                           "but the images have 3")


def test_layers_records_its_threads(tmp_path, capsys, model2, data2):
    ok(capsys, "layers", "--model", model2, "--data", data2, "--size", "32", "--steps", "1", "--out", tmp_path / "l",
       *THREADS)
    assert read(tmp_path / "l" / "layers.json")["threads"] == 1


def test_an_audit_whose_every_cell_failed_exits_2(tmp_path, capsys, model2, data2, monkeypatch):
    """Finding 4: an audit with every cell failed must not exit 0 with the risk 'unknown'."""
    def broken(*_):
        raise RuntimeError("boom")

    monkeypatch.setitem(cells.WORK, "attack", broken)
    out = tmp_path / "a"
    capsys.readouterr()
    assert cli("audit", "--model", model2, "--data", data2, *TINY_AUDIT, "--out", out) == 2
    log = capsys.readouterr().err.strip().splitlines()
    assert log[-2:] == ["attack (model model, attack seg, defense none, mode fedsgd, batch_size 1, local_steps 1, "
                        "seed 0, image 0, steps 1, restarts 1, client_mode eval, size 32) failed: RuntimeError: boom",
                        f"error: no cell of the audit measured anything (see {out / 'report.html'}); fix the first "
                        "error above and rerun"]
    runs = read(out / "results.json")["runs"]
    assert [r["error"] for r in runs] == ["RuntimeError: boom"]


def test_distractors_that_do_not_fit_the_model_are_refused(capsys, model2, data2, data4, rgb):
    """Issue 17: --distractors with other channels or classes is one line and exit 2."""
    image = sorted((data2 / "images").iterdir())[0]
    mask = data2 / "masks" / image.name
    common = ["attack", "--model", model2, "--image", image, "--mask", mask, "--size", "32", "--steps", "1",
              "--out", "unused", *THREADS]
    assert refused(capsys, *common, "--distractors", data4).startswith(
        f"the model predicts 2 classes (the model) but the data has 4 ({data4 / 'classes.json'})")
    assert refused(capsys, *common, "--distractors", rgb).startswith(
        "the model takes 1 input channel (the model) but the images have 3")
