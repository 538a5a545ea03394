"""Files and folders segaudit writes get the mode the umask gives (not tempfile's private 0600/0700)."""
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

from segaudit.io import atomic_dir, atomic_path, write_json
from segaudit.types import ClientUpdate, UpdateMeta
from segaudit.updates import save_update


@pytest.fixture(params=[0o022, 0o027, 0o002])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
def test_written_files_and_folders_follow_umask(tmp_path, umask):
    file_mode, dir_mode = 0o666 & ~umask, 0o777 & ~umask
    assert _mode(write_json(tmp_path / "a" / "r.json", {"x": 1})) == file_mode
    assert _mode(tmp_path / "a") == dir_mode

    with atomic_path(tmp_path / "raw.bin") as tmp:  # a writer that opens the yielded path itself
        with open(tmp, "r+b") as f:
            f.write(b"x")
    assert _mode(tmp_path / "raw.bin") == file_mode

    update = ClientUpdate({"w": torch.zeros(2)}, UpdateMeta("fedsgd", 1))
    assert _mode(save_update(update, tmp_path / "u.safetensors")) == file_mode

    with atomic_dir(tmp_path / "run") as tmp:
        write_json(tmp / "results.json", {})
    assert _mode(tmp_path / "run") == dir_mode
    assert _mode(tmp_path / "run" / "results.json") == file_mode

    (tmp_path / "run" / "old.txt").write_text("old")
    with atomic_dir(tmp_path / "run") as tmp:  # replacing an existing folder
        (tmp / "new.txt").write_text("new")
    assert _mode(tmp_path / "run") == dir_mode and sorted(p.name for p in (tmp_path / "run").iterdir()) == ["new.txt"]
    with atomic_dir(tmp_path / "run", merge=True) as tmp:  # as save_model: safetensors writes 0600 files
        save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
        (tmp / "sub").mkdir()
        write_json(tmp / "sub" / "more.json", {})
    assert _mode(tmp_path / "run" / "model.safetensors") == file_mode
    assert _mode(tmp_path / "run" / "sub") == dir_mode and _mode(tmp_path / "run" / "sub" / "more.json") == file_mode
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "raw.bin", "run", "u.safetensors"]  # no leftovers
