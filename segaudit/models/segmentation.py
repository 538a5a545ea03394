"""The segmentation models of segmentation-models-pytorch (smp), built by arch name with checked options.

Output: logits ``[N, K, H, W]`` for images ``[N, C, H, W]``.
"""
from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from segaudit.errors import SegauditError

from .catalog import SEGMENTATION_ARCHS, first_line, import_smp


def _smp_class_options(model_class: type, encoder: str) -> set[str] | None:
    """Option names the smp class takes; ``None`` when any name goes (timm encoders take **kwargs)."""
    if encoder.startswith("tu-"):
        return None
    parameters = inspect.signature(model_class.__init__).parameters
    return {n for n, p in parameters.items() if n != "self" and p.kind is not p.VAR_KEYWORD}


def build_smp(
    arch: str,
    encoder: str,
    in_channels: int,
    classes: int,
    encoder_weights: str | None,
    options: dict[str, Any],
) -> nn.Module:
    """An smp model by canonical arch name: ``[N, C, H, W]`` -> logits ``[N, K, H, W]``; bad options are refused."""
    smp = import_smp()
    if not isinstance(encoder, str) or not (encoder in smp.encoders.get_encoder_names() or encoder.startswith("tu-")):
        raise SegauditError(
            f"unknown encoder {encoder!r}; use a name of segmentation_models_pytorch.encoders."
            f"get_encoder_names() (e.g. resnet18, resnet34, efficientnet-b0, mobilenet_v2) or 'tu-<timm model>'"
        )
    model_class = getattr(smp, SEGMENTATION_ARCHS[arch])
    smp_options = dict(options)
    if "head_activation" in smp_options:
        smp_options["activation"] = smp_options.pop("head_activation")
    accepted = _smp_class_options(model_class, encoder)
    for key in smp_options:
        reserved = key in ("encoder_name", "encoder_weights", "in_channels", "classes")
        if reserved or (accepted is not None and key not in accepted):
            shown = "head_activation" if key == "activation" else key
            raise SegauditError(
                f"{arch} takes no option {shown!r}; options: "
                f"{', '.join(sorted(_public_smp_options(accepted)))}"
            )
    try:
        return model_class(
            encoder_name=encoder,
            encoder_weights=encoder_weights,
            in_channels=in_channels,
            classes=classes,
            **smp_options,
        )
    except (KeyError, ValueError, TypeError, RuntimeError, OSError) as error:
        raise SegauditError(f"cannot build {arch} with encoder {encoder}: {first_line(error)}") from None


def _public_smp_options(accepted: set[str] | None) -> set[str]:
    names = set(accepted or ()) - {"encoder_name", "encoder_weights", "in_channels", "classes", "activation"}
    return names | {"head_activation"}
