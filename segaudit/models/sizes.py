"""What input sizes (and train-mode batch sizes) a model accepts, and the refusal that says the fix."""
from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from torch import nn

from segaudit.errors import SegauditError

from .catalog import MONAI_ARCHS, canonical_arch
from .classifiers import pair
from .monai_nets import monai_stride
from .segmentation import build_smp
from .spec import jsonable, model_spec

# Archs with BatchNorm after a global pooling: in train mode they need at least 2 images per batch.
_GLOBAL_POOL_BN = frozenset({"deeplabv3", "deeplabv3plus", "pan", "upernet"})
# PAN's feature pyramid attention halves the deepest map three times: it needs at least 8x8 there.
_MIN_DEEPEST_MAP = {"pan": 8}


@dataclasses.dataclass(frozen=True)
class SizeRules:
    """What input sizes a model accepts.

    Attributes:
        output_stride: downsampling factor of the deepest feature map (32 for a depth-5 Unet, 8 for
            DeepLabV3 and PSPNet, 16 for DeepLabV3+ and PAN, 4 for LeNet; nominal 32 for Inception).
        multiple: H and W must be multiples of this (1: any size; smp's Unet interpolates).
        min_size: smallest H and W.
        fixed_size: ``(H, W)`` when only one size works (LeNet), else ``None``.
        min_train_batch: smallest batch in train mode; BatchNorm after a global pooling (DeepLabV3/V3+,
            PAN, UPerNet ASPP/PSP pooling branches) needs 2. Any model in train mode with batch 1 also
            needs a deepest feature map larger than 1x1: ``(H // output_stride) * (W // output_stride) > 1``.
    """

    output_stride: int
    multiple: int
    min_size: int
    fixed_size: tuple[int, int] | None = None
    min_train_batch: int = 1


_CLASSIFIER_SIZES = {
    "resnet18": SizeRules(output_stride=32, multiple=1, min_size=32),
    "densenet121": SizeRules(output_stride=32, multiple=1, min_size=32),
    # Inception's valid convolutions need 75 px; its last map stays 1x1 below 107 px, so batch >= 2.
    "inception_v3": SizeRules(output_stride=32, multiple=1, min_size=75, min_train_batch=2),
}


def size_rules(arch: str, encoder: str | None = None, **options: Any) -> SizeRules:
    """Input-size rules for an architecture (and encoder and options, which change the stride).

    Example:
        >>> size_rules("pan")
        SizeRules(output_stride=16, multiple=16, min_size=128, fixed_size=None, min_train_batch=2)
    """
    name = canonical_arch(arch)
    if name == "lenet":
        height, width = pair(options.get("size", 32))
        return SizeRules(output_stride=4, multiple=1, min_size=min(height, width), fixed_size=(height, width))
    if name in _CLASSIFIER_SIZES:
        return _CLASSIFIER_SIZES[name]
    if name in MONAI_ARCHS:
        stride = monai_stride(name, options)
        # InstanceNorm (and BatchNorm in train mode) needs more than one value per channel: a 2x2 deepest map
        return SizeRules(output_stride=stride, multiple=stride, min_size=2 * stride)
    stride, divisible, _ = smp_facts(name, encoder or "resnet18", options)
    return SizeRules(
        output_stride=stride,
        multiple=stride if divisible else 1,
        min_size=stride * _MIN_DEEPEST_MAP.get(name, 1),
        min_train_batch=2 if name in _GLOBAL_POOL_BN else 1,
    )


def output_stride(arch: str, encoder: str | None = None, **options: Any) -> int:
    """Downsampling factor of the deepest feature map, e.g. 32 for ``unet``/``resnet18``, 8 for ``pspnet``."""
    return size_rules(arch, encoder, **options).output_stride


def min_size(arch: str, encoder: str | None = None, **options: Any) -> int:
    """Smallest input side that runs, e.g. 32 for ``unet``/``resnet18`` and 128 for ``pan``."""
    return size_rules(arch, encoder, **options).min_size


class SmpFacts(NamedTuple):
    """What a weightless build tells about an smp configuration."""

    output_stride: int  # of the encoder's deepest feature map
    divisible: bool  # smp requires H and W divisible by output_stride
    unused: frozenset[str]  # parameters the forward never reaches


def smp_facts(arch: str, encoder: str, options: Mapping[str, Any]) -> SmpFacts:
    """Output stride, divisibility and unused parameters of an smp configuration (cached)."""
    return _smp_facts_cached(arch, encoder, json.dumps(jsonable(options), sort_keys=True))


@functools.lru_cache(maxsize=64)
def _smp_facts_cached(arch: str, encoder: str, options_json: str) -> SmpFacts:
    """Facts about an smp configuration, from a weightless build on the meta device (no compute)."""
    options = json.loads(options_json)
    try:
        with torch.device("meta"):
            model = build_smp(arch, encoder, 3, 1, None, options)
    except SegauditError:  # some encoders read tensor values at init (mit_b*): build for real
        model = build_smp(arch, encoder, 3, 1, None, options)
    stride = int(model.encoder.output_stride)
    side = 2 * stride * _MIN_DEEPEST_MAP.get(arch, 1)  # deepest map 2x2: BatchNorm runs in train mode
    return SmpFacts(stride, bool(model.requires_divisible_input_shape), _unused_parameters(model, side))


def _unused_parameters(model: nn.Module, side: int) -> frozenset[str]:
    """Parameters no gradient reaches (e.g. encoder stages beyond PSPNet's encoder_depth=3)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    device = named[0][1].device
    try:
        output = model.train()(torch.zeros(2, 3, side, side, device=device))
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total = sum(o.sum() for o in outputs)
        grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    except (RuntimeError, NotImplementedError):  # an op without a meta kernel: cannot tell, freeze nothing
        return frozenset()
    return frozenset(n for (n, _), g in zip(named, grads) if g is None)


def _rules_for(model: nn.Module) -> tuple[str, SizeRules]:
    spec = model_spec(model)
    return spec["arch"], size_rules(spec["arch"], spec["encoder"], **spec["options"])


def check_input_size(model: nn.Module, height: int, width: int, batch: int | None = None) -> None:
    """Raise a SegauditError that says the fix when the model cannot take ``[batch, C, height, width]``.

    The batch rule applies only in train mode (``model.training``), where BatchNorm needs more than one
    value per channel.
    """
    arch, rules = _rules_for(model)
    if rules.fixed_size is not None and (height, width) != rules.fixed_size:
        fh, fw = rules.fixed_size
        raise SegauditError(f"{arch} was built for {fh}x{fw} images, got {height}x{width}: resize them or rebuild it")
    if min(height, width) < rules.min_size:
        side = rules.min_size
        raise SegauditError(
            f"{arch} needs images of at least {side}x{side}, got {height}x{width}: resize or pad them to "
            f"{max(height, side)}x{max(width, side)}"
        )
    m = rules.multiple
    if height % m or width % m:
        padded = (math.ceil(height / m) * m, math.ceil(width / m) * m)
        raise SegauditError(
            f"{arch} needs height and width divisible by {m}, got {height}x{width}: pad them to "
            f"{padded[0]}x{padded[1]}"
        )
    if batch is not None and batch < 2 and model.training:
        deepest = (height // rules.output_stride) * (width // rules.output_stride)
        if rules.min_train_batch > 1 or deepest <= 1:
            raise SegauditError(
                f"{arch} in train mode needs at least 2 images per batch at {height}x{width} (BatchNorm "
                f"needs more than one value per channel), got {batch}: use a larger batch or model.eval()"
            )
