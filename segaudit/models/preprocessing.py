"""The preprocessing a model's spec records: per-channel mean and std in the units of a pixel scale.

This is the value type only; :mod:`segaudit.preprocessing` has the functions that read it from a model,
record it on one and turn it into :func:`segaudit.data.make_batch` arguments.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from segaudit.errors import SegauditError

SCALES = (1.0, 255.0)
#: What segaudit trains its own models with: [0, 1] images mapped to [-1, 1].
SEGAUDIT_DEFAULT = {"mean": 0.5, "std": 0.5, "scale": 1.0}


@dataclass(frozen=True)
class Preprocessing:
    """Per-channel ``mean`` and ``std`` in the units of ``scale`` (the value range the model was trained on)."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0

    @classmethod
    def from_dict(cls, raw: Any, channels: int, source: str = "the preprocessing") -> Preprocessing:
        """From ``{"mean", "std", "scale"}`` (a single number applies to every channel)."""
        if not isinstance(raw, Mapping) or not {"mean", "std"} <= set(raw):
            raise SegauditError(f"{source} must be a mapping with 'mean' and 'std' (and optionally 'scale'), "
                                f"got {raw!r}")
        unknown = set(raw) - {"mean", "std", "scale"}
        if unknown:
            raise SegauditError(f"{source} has unknown key {sorted(unknown)[0]!r}; use mean, std and scale")
        scale = raw.get("scale", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or float(scale) not in SCALES:
            raise SegauditError(f"{source}: scale must be 1 (pixel values in [0, 1]) or 255 (in [0, 255]), "
                                f"got {scale!r}")
        mean = _per_channel(raw["mean"], channels, f"{source}: mean")
        std = _per_channel(raw["std"], channels, f"{source}: std")
        if any(s <= 0 for s in std):
            raise SegauditError(f"{source}: std must be positive, got {list(std)}")
        return cls(mean, std, float(scale))

    @classmethod
    def parse(cls, mean: str | None, std: str | None, scale: float | None = None, *, channels: int) -> Preprocessing:
        """From the ``--mean``/``--std``/``--scale`` flags (comma-separated numbers)."""
        if (mean is None) != (std is None):
            raise SegauditError("give --mean and --std together (the normalisation the model was trained with)")
        values = {}
        for flag, text in (("--mean", mean), ("--std", std)):
            try:
                values[flag[2:]] = [float(v) for v in str(text).split(",")]
            except ValueError:
                raise SegauditError(f"{flag} must be comma-separated numbers, got {text!r}") from None
        return cls.from_dict({**values, "scale": 1.0 if scale is None else scale}, channels, "--mean/--std/--scale")

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std), "scale": self.scale}

    def unit(self) -> dict[str, tuple[float, ...]]:
        """``{"mean", "std"}`` for [0, 1] images: the keyword arguments of :func:`segaudit.data.make_batch`."""
        return {"mean": tuple(m / self.scale for m in self.mean), "std": tuple(s / self.scale for s in self.std)}


def _per_channel(value: Any, channels: int, what: str) -> tuple[float, ...]:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)
                         for v in values):
        raise SegauditError(f"{what} must be finite numbers, got {value!r}")
    if len(values) == 1:
        values = values * channels
    if len(values) != channels:
        raise SegauditError(f"{what} has {len(values)} values but the model takes {channels} channels")
    return tuple(float(v) for v in values)

