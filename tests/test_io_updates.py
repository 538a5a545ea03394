"""Atomic outputs and the safetensors update format."""
import pytest
import torch

from segaudit import SegauditError
from segaudit.io import atomic_dir, atomic_path, check_out_dir, write_json
from segaudit.types import ClientUpdate, UpdateMeta
from segaudit.updates import load_update, save_update


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_on_success(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["run"] and (out / "old.txt").exists()
    with atomic_dir(out) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]


def test_check_out_dir(tmp_path):
    assert check_out_dir(tmp_path / "fresh") == tmp_path / "fresh" and not (tmp_path / "fresh").exists()
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(SegauditError, match="not empty; pass --force"):
        check_out_dir(tmp_path / "full")
    check_out_dir(tmp_path / "full", force=True)
    with pytest.raises(SegauditError, match="not a folder"):
        check_out_dir(tmp_path / "full" / "x")


def test_write_json_maps_nan_to_null(tmp_path):
    path = write_json(tmp_path / "r.json", {"psnr": float("nan"), "x": torch.tensor(2.5)})
    assert path.read_text() == '{\n  "psnr": null,\n  "x": 2.5\n}\n'


def test_update_round_trip(tmp_path):
    meta = UpdateMeta("fedavg", batch_size=4, lr=0.05, local_steps=3, local_batch_size=2)
    update = ClientUpdate({"w": torch.randn(3, 2), "b": torch.randn(3)}, meta, {"bn.running_mean": torch.ones(3)})
    path = save_update(update, tmp_path / "u.safetensors")
    back = load_update(path)
    assert back.meta == meta and back.buffers.keys() == {"bn.running_mean"}
    assert all(torch.equal(back.tensors[k], v) for k, v in update.tensors.items())
    with pytest.raises(SegauditError, match="already exists"):
        save_update(update, path)


def test_update_refusals(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(SegauditError, match="not a readable safetensors file"):
        load_update(bad)
    with pytest.raises(SegauditError, match="does not exist"):
        load_update(tmp_path / "missing.safetensors")
    with pytest.raises(SegauditError, match="must end in .safetensors"):  # checked before anything is written
        save_update(ClientUpdate({}, UpdateMeta("fedsgd", 1)), tmp_path / "u.pt")


def test_save_model_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    import pathlib

    from segaudit.models import build_model, load_model, save_model

    model = build_model("unet", in_channels=1, classes=2, encoder_depth=3, decoder_channels=[16, 8, 4])
    real = pathlib.Path.write_text

    def fail_on_spec(self, *args, **kw):  # the weights are written by then: a crash half-way through
        if self.name == "segaudit.json":
            raise KeyboardInterrupt
        return real(self, *args, **kw)

    monkeypatch.setattr(pathlib.Path, "write_text", fail_on_spec)
    with pytest.raises(KeyboardInterrupt):
        save_model(model, tmp_path / "model")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(pathlib.Path, "write_text", real)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_text("mine")  # an existing folder keeps its other files
    save_model(model, tmp_path / "model")
    assert {p.name for p in (tmp_path / "model").iterdir()} >= {"notes.txt", "segaudit.json", "model.safetensors"}
    assert [p.name for p in tmp_path.iterdir()] == ["model"] and load_model(tmp_path / "model") is not None


@pytest.mark.parametrize("rel", ["../x", "a/../../x", "/etc/x", "", "."])
def test_inside_refuses_names_leading_out_of_the_root(tmp_path, rel):
    from segaudit.io import inside

    with pytest.raises(SegauditError, match="output names must stay inside"):
        inside(tmp_path / "out", rel)
    assert inside(tmp_path / "out", "models/a..b") == tmp_path / "out" / "models" / "a..b"


def test_inside_refuses_a_link_leading_out(tmp_path):
    from segaudit.io import inside

    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path)
    with pytest.raises(SegauditError, match="'link/x'"):
        inside(tmp_path / "out", "link/x")


def test_force_never_replaces_the_working_or_home_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "keep.txt").write_text("mine")
    monkeypatch.chdir(work / "sub")
    for path in (work / "sub", work, "..", "/"):
        with pytest.raises(SegauditError, match="is or holds the working or home folder"):
            check_out_dir(path, force=True)
    with pytest.raises(SegauditError, match="is or holds the working or home folder"), atomic_dir(work) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (work / "keep.txt").read_text() == "mine" and sorted(p.name for p in work.iterdir()) == ["keep.txt", "sub"]


def test_every_writer_goes_through_the_atomic_helpers():
    """Raw file writes in the package live only in segaudit/io.py or inside a temporary folder/path it yields."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "segaudit"
    raw = re.compile(r"open\([^)]*['\"][wax]b?\+?['\"]|\.write_(text|bytes)\(|savefig\(|torch\.save\(|np\.save|"
                     r"save_file\(|save_pretrained\(|save_safetensors\(|shutil\.(copy|move)")
    found = 0
    for path in sorted(root.rglob("*.py")):
        if path.name == "io.py":
            continue
        for i, line in enumerate(path.read_text().splitlines()):
            if raw.search(line):  # the write target must be a temporary path from atomic_path / atomic_dir / mkdtemp
                found += 1
                assert re.search(r"\b(tmp|scratch)\b", line), f"{path.relative_to(root)}:{i + 1}: {line.strip()}"
    assert found >= 5  # figures, updates, models, audit artefacts: the pattern still finds the writers
