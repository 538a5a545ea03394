"""Environment shims, applied once when segaudit is imported.

Only the standard library is imported here; :func:`patch_torchvision` imports torch when it runs. The same fix
also runs before a plain ``import torchvision`` in scripts that never import segaudit, through the start-up
hook in :mod:`segaudit._import_hook`.
"""
from __future__ import annotations

import importlib.util
import threading
from pathlib import Path

_TORCHVISION_FALLBACK_LIB = None  # keeps the fallback op library alive for the process
_TORCHVISION_LOCK = threading.RLock()
_TORCHVISION_PATCHED = False


def patch_torchvision() -> None:
    """Let ``import torchvision`` work when its compiled ops cannot load.

    Why: the PyPI torchvision 0.28 wheel ships ``_C.so`` built against the CUDA torch. On the CPU build
    of torch that library fails to load, and torchvision's ``_meta_registrations`` then registers fake
    kernels for ``torchvision::nms``/``qnms`` unconditionally, which raises ``operator torchvision::nms
    does not exist`` at import time. smp imports torchvision (through timm), so segaudit would not import.
    We try to load the real library first; only when that fails do we declare the two op schemas so the
    registrations succeed. segaudit never calls NMS; models, transforms and datasets work unchanged.

    Runs once per process; later and nested calls return at once. A nested call happens when the start-up
    hook sees this function's own ``find_spec("torchvision")``; redoing the work there would replace the
    library that holds the op schemas, and so drop them.
    """
    global _TORCHVISION_PATCHED
    with _TORCHVISION_LOCK:
        if _TORCHVISION_PATCHED:
            return
        _TORCHVISION_PATCHED = True
        try:
            _load_or_declare_torchvision_ops()
        except BaseException:
            _TORCHVISION_PATCHED = False
            raise


def _load_or_declare_torchvision_ops() -> None:
    global _TORCHVISION_FALLBACK_LIB
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return
    import torch

    folder = Path(next(iter(spec.submodule_search_locations)))
    libs = sorted(folder.glob("_C*.so")) + sorted(folder.glob("_C*.pyd"))
    try:
        if libs:
            torch.ops.load_library(str(libs[0]))
            return
    except (OSError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        try:
            lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # already declared by someone else: nothing to do
            pass
    _TORCHVISION_FALLBACK_LIB = lib
