"""segaudit: audit how much a segmentation model leaks its training images and masks through shared gradients.

Example:
    >>> import segaudit as sa
    >>> data = sa.load_dataset("nuclei")
    >>> model = sa.build_model("unet", in_channels=data.channels, classes=len(data.class_names))
    >>> batch = sa.make_batch(data, [0], size=64)
    >>> update = sa.client_update(model, batch, mode="fedsgd")

Heavy modules (smp, Opacus, scikit-image) load on first use, so ``import segaudit`` stays fast.
"""
from __future__ import annotations

import importlib

from ._compat import patch_torchvision
from .errors import SegauditError
from .types import Batch, ClientProtocol, ClientUpdate, Prior, Reconstruction, UpdateMeta

patch_torchvision()

__version__ = "0.1.0"

_LAZY = {
    "build_model": "models", "load_model": "models", "save_model": "models", "layer_groups": "models",
    "available_archs": "models",
    "load_dataset": "data", "make_batch": "data", "split": "data",
    "client_update": "fl", "check_update": "fl",
    "task_loss": "losses",
    "score": "metrics",
    "train_model": "train",
}

__all__ = ["Batch", "ClientProtocol", "ClientUpdate", "Prior", "Reconstruction", "SegauditError", "UpdateMeta",
           "__version__", *sorted(_LAZY)]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'segaudit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
