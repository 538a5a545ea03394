"""Environment shims, applied once when segaudit is imported."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_TORCHVISION_FALLBACK_LIB = None  # keeps the fallback op library alive for the process


def patch_torchvision() -> None:
    """Let ``import torchvision`` work when its compiled ops cannot load.

    Why: the PyPI torchvision 0.28 wheel ships ``_C.so`` built against the CUDA torch. On the CPU build
    of torch that library fails to load, and torchvision's ``_meta_registrations`` then registers fake
    kernels for ``torchvision::nms``/``qnms`` unconditionally, which raises ``operator torchvision::nms
    does not exist`` at import time. smp imports torchvision (through timm), so segaudit would not import.
    We try to load the real library first; only when that fails do we declare the two op schemas so the
    registrations succeed. segaudit never calls NMS; models, transforms and datasets work unchanged.
    """
    global _TORCHVISION_FALLBACK_LIB
    if _TORCHVISION_FALLBACK_LIB is not None:
        return
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
