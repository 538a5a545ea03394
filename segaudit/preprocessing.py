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

from typing import Any

from torch import nn

from .errors import SegauditError
from .models.preprocessing import SCALES, SEGAUDIT_DEFAULT, Preprocessing
from .models.spec import model_spec, unwrap

#: The fix every refusal names.
HOW_TO_DECLARE = ("give --mean and --std (in the units of --scale 1 or 255; e.g. --mean 0 --std 1 for x/255, "
                  "--mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 for ImageNet statistics), or record "
                  '"preprocessing": {"mean": [...], "std": [...], "scale": 1} in a segaudit.json beside its weights')


def default(channels: int) -> dict[str, Any]:
    """segaudit's own preprocessing for a model it builds and trains, as a spec entry."""
    return Preprocessing.from_dict(SEGAUDIT_DEFAULT, channels).to_dict()


def of(model: nn.Module, source: str | None = None) -> Preprocessing:
    """The preprocessing recorded in ``model``'s spec; refused with the fix when the spec does not state it.

    Args:
        source: where the model came from (its path), named in the refusal.
    """
    spec = model_spec(model)
    raw = spec.get("preprocessing")
    if raw is None:
        what = f"the model {source}" if source else "the model"
        raise SegauditError(f"{what} does not say how its inputs were normalised, and segaudit never "
                            f"assumes it: {HOW_TO_DECLARE}")
    return Preprocessing.from_dict(raw, spec["in_channels"], "the model's preprocessing")


def declare(model: nn.Module, preprocessing: Preprocessing) -> nn.Module:
    """Record ``preprocessing`` in ``model``'s spec (it then travels with :func:`segaudit.models.save_model`)."""
    inner, _ = unwrap(model)
    inner.segaudit_spec = {**model_spec(inner), "preprocessing": preprocessing.to_dict()}
    return model


def normalisation(model: nn.Module) -> dict[str, tuple[float, ...]]:
    """``make_batch`` keyword arguments (``mean``, ``std`` for [0, 1] images) of ``model``'s preprocessing."""
    return of(model).unit()


def describe(p: Preprocessing) -> str:
    fmt = lambda v: ",".join(f"{x:g}" for x in v)  # noqa: E731
    return f"(v - [{fmt(p.mean)}]) / [{fmt(p.std)}] on pixel values v in [0, {p.scale:g}]"


__all__ = ["HOW_TO_DECLARE", "Preprocessing", "SCALES", "declare", "default", "describe", "normalisation", "of"]
