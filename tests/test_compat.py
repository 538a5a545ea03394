"""torchvision / smp import in any interpreter of segaudit's environment, without importing segaudit first,
and a plain interpreter start-up still imports no torch (the start-up hook of segaudit._import_hook)."""
import os
import subprocess
import sys

import pytest

from segaudit import _import_hook

HINT = (f"{_import_hook.PTH_NAME} is missing from this environment's site-packages: run `make install` "
        "(or `python -m segaudit._import_hook`) after `pip install -e .`")


def _python(code, cwd, *flags):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([sys.executable, *flags, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_pth_is_installed():
    assert os.path.isfile(_import_hook.pth_path()), HINT
    with open(_import_hook.pth_path()) as f:
        assert f.read().strip() == _import_hook.PTH_LINE, HINT


@pytest.mark.parametrize("code", ["import segmentation_models_pytorch",
                                  "import torchvision.models",
                                  "import segaudit, torchvision",  # segaudit's own fix, then the hook's look-up
                                  "import torch, torchvision, segaudit"])
def test_torchvision_imports_without_segaudit_first(tmp_path, code):
    proc = _python(code, tmp_path)  # a folder without segaudit in it: the installed one is used
    assert proc.returncode == 0, proc.stderr[-2000:] + "\n" + HINT


def test_startup_installs_the_hook_without_importing_torch(tmp_path):
    proc = _python("import sys; print('torch' in sys.modules, 'segaudit' in sys.modules, "
                   "any(getattr(f, 'segaudit_torchvision_hook', False) for f in sys.meta_path))", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["False", "False", "True"], HINT


def test_pth_line_is_harmless_without_segaudit(tmp_path):
    # -S: no site-packages, so segaudit cannot be found (as after `pip uninstall segaudit` left the .pth behind)
    proc = _python(f"import sys; exec({_import_hook.PTH_LINE!r}); "
                   "print(any(getattr(f, 'segaudit_torchvision_hook', False) for f in sys.meta_path))", tmp_path, "-S")
    assert proc.returncode == 0 and proc.stdout.split() == ["False"], proc.stderr


def test_finder_ignores_other_names_and_installs_once(monkeypatch):
    monkeypatch.setattr(sys, "meta_path", list(sys.meta_path))
    finder = _import_hook.TorchvisionFinder()
    assert finder.find_spec("numpy") is None and not finder.done
    assert finder.find_spec("torchvision") is None and finder.done  # the fix ran (already applied: no-op)
    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "segaudit_torchvision_hook", False)]
    _import_hook.install()
    _import_hook.install()
    assert sum(getattr(f, "segaudit_torchvision_hook", False) for f in sys.meta_path) == 1
    assert getattr(sys.meta_path[0], "segaudit_torchvision_hook", False)


def test_write_pth(tmp_path):
    path = _import_hook.write_pth(str(tmp_path / _import_hook.PTH_NAME))
    with open(path) as f:
        assert f.read() == _import_hook.PTH_LINE + "\n"
