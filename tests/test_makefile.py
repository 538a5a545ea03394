"""`make install` only creates .venv and installs segaudit (what `make demo` and `make test` do first)."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def _dry_run(*args):
    # -n: print the commands, run none; -W: as if the file had changed, so the install recipe is listed
    return subprocess.run(["make", "-n", "-W", "pyproject.toml", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)


def test_install_target_installs_and_does_nothing_else():
    proc = _dry_run("install")
    assert proc.returncode == 0, proc.stderr
    assert "pip install -q -e '.[dev]'" in proc.stdout and "-m segaudit._import_hook" in proc.stdout
    assert "pytest" not in proc.stdout and "segaudit demo" not in proc.stdout
    phony = re.search(r"^\.PHONY:(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert phony and "install" in phony.group(1).split()


@pytest.mark.parametrize("target, command", [("test", "-m pytest"), ("demo", "segaudit demo")])
def test_demo_and_test_install_first(target, command):
    out = _dry_run(target).stdout
    assert "pip install -q -e '.[dev]'" in out and command in out
    assert out.index("pip install -q -e") < out.index(command)


def test_test_target_runs_ruff_before_pytest():
    out = _dry_run("test").stdout
    assert "ruff check ." in out and out.index("ruff check .") < out.index("-m pytest")
