"""Start-up hook: ``import torchvision`` (and so smp, timm) works in any interpreter of segaudit's environment.

The fix for the PyPI torchvision wheel on CPU torch (:func:`segaudit._compat.patch_torchvision`) must run
before torchvision is first imported. ``import segaudit`` runs it, but users also import
``segmentation_models_pytorch`` or ``torchvision`` in their own scripts without segaudit. So a ``.pth`` file
in site-packages (:data:`PTH_NAME`) loads this module at interpreter start-up, and it puts a finder on
``sys.meta_path`` that, the first time ``torchvision`` is looked up, applies the fix and then steps aside.

Start-up stays cheap: this module imports only the standard library and nothing imports torch until
torchvision is imported. The ``.pth`` line finds this file through ``segaudit``'s import spec without
importing segaudit, so it follows editable installs and does nothing once segaudit is uninstalled.

Installing the ``.pth``: pip and setuptools have no way to put a ``.pth`` into site-packages from a pyproject
for an editable install (``data_files`` go under the prefix, and the editable wheel carries only setuptools'
own finder), so it is written after installing::

    make install                          # does this
    python -m segaudit._import_hook       # writes <purelib>/segaudit-torchvision.pth; --remove deletes it
"""
from __future__ import annotations

import sys

PTH_NAME = "segaudit-torchvision.pth"  # sorts after setuptools' __editable__*.pth, which must load first
_MODULE = "_segaudit_import_hook"  # the name the .pth loads this file under (not a segaudit submodule)

# One line of Python, as site.py runs it: locate this file through segaudit's spec (no import), load it, install.
PTH_LINE = (
    "import importlib.util as u, os; s = u.find_spec('segaudit'); "
    "f = s and s.origin and os.path.join(os.path.dirname(s.origin), '_import_hook.py'); "
    f"h = f and os.path.isfile(f) and u.spec_from_file_location('{_MODULE}', f); "
    "m = h and u.module_from_spec(h); m and (h.loader.exec_module(m) or m.install())"
)


class TorchvisionFinder:
    """A ``sys.meta_path`` finder that finds nothing: on the first look-up of ``torchvision`` it runs the fix."""

    segaudit_torchvision_hook = True  # how :func:`install` recognises an installed one (any copy of this module)

    def __init__(self) -> None:
        self.done = False

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision" or self.done:
            return None
        # Stays in sys.meta_path (inert): the import system is iterating that very list right now.
        self.done = True
        try:
            from segaudit._compat import patch_torchvision

            patch_torchvision()
        except Exception as e:  # noqa: BLE001 — never break an import; torchvision reports its own error
            import warnings

            warnings.warn(f"segaudit could not prepare torchvision: {type(e).__name__}: {e}", RuntimeWarning,
                          stacklevel=2)
        return None


def install() -> None:
    """Put a :class:`TorchvisionFinder` first on ``sys.meta_path`` (once; nothing if torchvision is loaded)."""
    if "torchvision" in sys.modules or any(getattr(f, "segaudit_torchvision_hook", False) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, TorchvisionFinder())


def pth_path() -> str:
    """Where the ``.pth`` goes: this interpreter's site-packages (purelib)."""
    import os
    import sysconfig

    return os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)


def write_pth(path: str | None = None) -> str:
    """Write the ``.pth`` file (to :func:`pth_path` by default) and return its path."""
    from segaudit.io import write_text  # atomic: a starting interpreter never reads half a line

    path = path or pth_path()
    write_text(path, PTH_LINE + "\n")  # site.py reads .pth files in the locale encoding; the line is ASCII
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import os

    parser = argparse.ArgumentParser(prog="python -m segaudit._import_hook",
                                     description=f"Write (or remove) {PTH_NAME} in this environment's site-packages.")
    parser.add_argument("--remove", action="store_true", help="delete the .pth file instead")
    args = parser.parse_args(argv)
    if args.remove:
        if os.path.exists(pth_path()):
            os.remove(pth_path())
        print(f"removed {pth_path()}")
    else:
        print(f"wrote {write_pth()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
