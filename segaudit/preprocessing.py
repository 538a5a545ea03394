"""A model's input preprocessing: how pixel values were normalised when it was trained.

segaudit's readers give images in [0, 1]. A model trained on values in ``[0, scale]`` (``scale`` 1 or 255)
normalised as ``(v - mean) / std`` per channel sees ``(x * scale - mean) / std`` for a [0, 1] image ``x``,
that is ``(x - mean / scale) / (std / scale)``: :meth:`Preprocessing.unit` gives those [0, 1] values, which
:func:`segaudit.data.make_batch` applies. The preprocessing is part of the model's spec (``segaudit.json``,
or ``_preprocessing`` in an smp ``config.json``, which smp's own loader ignores); nothing is assumed for a
checkpoint that does not state it.

Example:
    >>> Preprocessing.parse("0.485,0.456,0.406", "0.229,0.224,0.225", channels=3).unit()["mean"]
    (0.485, 0.456, 0.406)
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from torch import nn

from .errors import SegauditError

SCALES = (1.0, 255.0)
#: What segaudit trains its own models with: [0, 1] images mapped to [-1, 1].
SEGAUDIT_DEFAULT = {"mean": 0.5, "std": 0.5, "scale": 1.0}
#: The fix every refusal names.
HOW_TO_DECLARE = ("give --mean and --std (in the units of --scale 1 or 255; e.g. --mean 0 --std 1 for x/255, "
                  "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for ImageNet statistics), or record "
                  '"preprocessing": {"mean": [...], "std": [...], "scale": 1} in a segaudit.json beside its weights')


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


def default(channels: int) -> dict[str, Any]:
    """segaudit's own preprocessing for a model it builds and trains, as a spec entry."""
    return Preprocessing.from_dict(SEGAUDIT_DEFAULT, channels).to_dict()


def of(model: nn.Module, source: str | None = None) -> Preprocessing:
    """The preprocessing recorded in ``model``'s spec; refused with the fix when the spec does not state it.

    Args:
        source: where the model came from (its path), named in the refusal.
    """
    from .models import model_spec

    spec = model_spec(model)
    raw = spec.get("preprocessing")
    if raw is None:
        what = f"the model {source}" if source else "the model"
        raise SegauditError(f"{what} does not say how its inputs were normalised, and segaudit never "
                            f"assumes it: {HOW_TO_DECLARE}")
    return Preprocessing.from_dict(raw, spec["in_channels"], "the model's preprocessing")


def declare(model: nn.Module, preprocessing: Preprocessing) -> nn.Module:
    """Record ``preprocessing`` in ``model``'s spec (it then travels with :func:`segaudit.models.save_model`)."""
    from .models import _unwrap, model_spec

    inner, _ = _unwrap(model)
    inner.segaudit_spec = {**model_spec(inner), "preprocessing": preprocessing.to_dict()}
    return model


def normalisation(model: nn.Module) -> dict[str, tuple[float, ...]]:
    """``make_batch`` keyword arguments (``mean``, ``std`` for [0, 1] images) of ``model``'s preprocessing."""
    return of(model).unit()


def describe(p: Preprocessing) -> str:
    fmt = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    return f"(v - [{fmt(p.mean)}]) / [{fmt(p.std)}] on pixel values v in [0, {p.scale:g}]"


__all__ = ["HOW_TO_DECLARE", "Preprocessing", "SCALES", "declare", "default", "describe", "normalisation", "of"]
