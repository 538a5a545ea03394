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
