"""MONAI's 2-D segmentation networks, built by name (``monai.unet``, ...), with their input sizes and layer groups.

MONAI (``pip install 'segaudit[monai]'``) is imported on first use. Output: logits ``[N, K, H, W]`` for images
``[N, C, H, W]``. Each name maps to a class of ``monai.networks.nets`` built with ``spatial_dims=2``; the options
are that class's own keyword arguments (e.g. ``channels``/``strides`` for ``monai.unet``, ``feature_size`` for
``monai.swinunetr``), and the defaults below are MONAI's unless noted.
"""
from __future__ import annotations

import inspect
import math
import re
from typing import Any

from torch import nn

from segaudit.errors import SegauditError

from .catalog import MONAI_ARCHS, first_line

#: options segaudit sets when the user gives none (MONAI's UNet and AttentionUnet have no defaults for them):
#: five levels of 16..256 channels, four stride-2 steps, as in MONAI's own 2-D examples.
DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "monai.unet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2], "num_res_units": 2},
    "monai.attentionunet": {"channels": [16, 32, 64, 128, 256], "strides": [2, 2, 2, 2]},
}
_RESERVED = ("spatial_dims", "in_channels", "out_channels")


def import_monai_nets():
    """``monai.networks.nets``, imported on first use (seconds)."""
    try:
        from monai.networks import nets
    except ImportError:
        raise SegauditError("MONAI's networks need pip install 'segaudit[monai]'") from None
    return nets


def build_monai(arch: str, in_channels: int, classes: int, options: dict[str, Any]) -> nn.Module:
    """A MONAI network by canonical arch name: ``[N, C, H, W]`` -> logits ``[N, K, H, W]``; bad options are refused."""
    model_class = getattr(import_monai_nets(), MONAI_ARCHS[arch])
    accepted = {n for n, p in inspect.signature(model_class.__init__).parameters.items()
                if n != "self" and p.kind is not p.VAR_KEYWORD}
    for key in options:
        if key in _RESERVED or key not in accepted:
            raise SegauditError(f"{arch} takes no option {key!r}; options: "
                                f"{', '.join(sorted(accepted - set(_RESERVED) - {'img_size'}))}")
    kwargs = {**DEFAULT_OPTIONS.get(arch, {}), **options}
    try:
        return model_class(spatial_dims=2, in_channels=in_channels, out_channels=classes, **kwargs)
    except (KeyError, ValueError, TypeError, RuntimeError, AssertionError) as error:
        raise SegauditError(f"cannot build {arch}: {first_line(error)}") from None


def monai_stride(arch: str, options: dict[str, Any]) -> int:
    """Downsampling factor of the deepest feature map: H and W must be multiples of it."""
    options = {**DEFAULT_OPTIONS.get(arch, {}), **options}
    if arch in ("monai.unet", "monai.attentionunet"):
        return math.prod(int(s) for s in options["strides"])
    if arch == "monai.segresnet":
        return 2 ** (len(options.get("blocks_down", (1, 2, 2, 4))) - 1)
    if arch == "monai.swinunetr":
        return 32  # patch size 2, then four patch-merging stages
    return 16  # monai.basicunet: four max-pools


# MONAI's UNet and AttentionUnet nest each level inside the previous one's ``submodule``: ``model.0`` is the first
# down block, ``model.1`` holds the deeper levels, ``model.2`` the last block (it outputs the K classes: the head);
# under ``model.1.submodule`` the pattern repeats one level down, and the innermost ``submodule`` is the bottom block.
_LEVELS = r"model\.((?:1\.submodule\.)*)"


NESTED_UNETS = ("monai.unet", "monai.attentionunet")


def nested_unet_group(arch: str, param: str) -> tuple[str, str]:
    """``(group name, kind)`` of parameter ``param`` of a network of :data:`NESTED_UNETS`. UNet: level ``d`` is
    ``model.(1.submodule.)^d`` + ``0`` (down block) / ``2`` (up block). AttentionUnet: its
    ``1.attention``/``1.upconv``/``1.merge`` decode the level, and the attention gate's ``W_x`` reads the skip."""
    level = re.match(_LEVELS, param)
    path, rest = level.group(0), param[level.end():]
    block = re.match(r"[02](?=\.)", rest)
    if block:
        top = level.group(1) == ""
        kind = "head" if block.group(0) == "2" and top else ("encoder" if block.group(0) == "0" else "decoder")
        return path + block.group(0), kind
    if arch == "monai.attentionunet" and re.match(r"1\.(?:attention|upconv|merge)\.", rest):
        gate = re.match(r"1\.attention\.W_x(?=\.)", rest)
        return (path + gate.group(0), "skip") if gate else (path + "1", "decoder")
    return path.rstrip("."), "encoder"  # the bottom block
