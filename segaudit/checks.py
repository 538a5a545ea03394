"""Checks that a model and the data it is audited on agree, made before any work starts.

Each refusal is one line that names both numbers and what sets each: the model's spec file (or the flag
that built it) and the data's ``classes.json`` (or ``--classes``) or its image files.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from .errors import SegauditError
from .models import is_segmentation, model_spec


def model_source(path: str | Path) -> str:
    """Where a checkpoint's spec comes from, for messages: its spec file."""
    p = Path(path)
    for name in ("segaudit.json", "config.json"):
        if p.is_dir() and (p / name).is_file():
            return f"{p / name}"
    return f"the spec of {p}"


def data_classes_source(data) -> str:
    """What set the data's class count: its ``classes.json`` or ``--classes``."""
    root = getattr(data, "root", None)
    if root is not None and (Path(root) / "classes.json").is_file():
        return f"{Path(root) / 'classes.json'}"
    return "--classes"


def check_model_fits_data(model: nn.Module, data, where: str) -> None:
    """Refuse a model whose input channels or (for segmentation) classes differ from the data's.

    Args:
        model: built or loaded by segaudit (its spec gives ``in_channels`` and ``classes``).
        data: a :class:`segaudit.data.Dataset`.
        where: what sets the model's numbers, named in the message (see :func:`model_source`).
    """
    spec = model_spec(model)
    if spec["in_channels"] != data.channels:
        example = f" (e.g. {data.files[0][0]})" if data.files else ""
        raise SegauditError(
            f"the model takes {spec['in_channels']} input channel{'s' * (spec['in_channels'] != 1)} ({where}) but "
            f"the images have {data.channels}{example}: convert the images, or audit a model built for them")
    if is_segmentation(model) and spec["classes"] != data.num_classes:
        raise SegauditError(
            f"the model predicts {spec['classes']} classes ({where}) but the data has {data.num_classes} "
            f"({data_classes_source(data)}): audit the model on data labelled with its {spec['classes']} classes")
