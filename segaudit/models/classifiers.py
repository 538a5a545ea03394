"""The classification baselines of the gradient-leakage literature: LeNet (DLG) and torchvision's ResNet-18,
DenseNet-121 and Inception-v3, built with fresh weights. Output: logits ``[N, K]`` for images ``[N, C, H, W]``.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from segaudit.errors import SegauditError

from .catalog import first_line, import_torchvision_models


def _lenet_feature_size(size: int) -> int:
    """Side of LeNet's last feature map: two 5x5 convs with stride 2 and padding 2."""
    for _ in range(2):
        size = (size - 1) // 2 + 1
    return size


def pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from a side or ``[height, width]``."""
    if isinstance(size, int) and not isinstance(size, bool):
        return size, size
    if isinstance(size, Sequence) and len(size) == 2 and all(isinstance(s, int) for s in size):
        return int(size[0]), int(size[1])
    raise SegauditError(f"size must be an int or [height, width], got {size!r}")


class LeNet(nn.Module):
    """The LeNet of Deep Leakage from Gradients (Zhu et al., NeurIPS 2019), layer for layer.

    ``body``: conv(C, 12, 5, stride 2) -> act -> conv(12, 12, 5, stride 2) -> act -> conv(12, 12, 5,
    stride 1) -> act, all with padding 2; ``fc``: linear(12 * H/4 * W/4 -> K), i.e. 768 -> K for 32x32.
    The activation is a sigmoid as in the paper (twice differentiable, which gradient matching needs).

    Args:
        in_channels: C.
        classes: K.
        size: input side (or ``[height, width]``) the linear layer is sized for; inputs must match it.
        activation: ``"sigmoid"`` (paper) or ``"relu"``.
        dlg_init: initialise every weight and bias uniformly in [-0.5, 0.5] as the DLG code does.

    Shapes:
        ``[N, C, H, W]`` -> ``[N, K]``.
    """

    def __init__(
        self,
        in_channels: int = 3,
        classes: int = 10,
        size: int | Sequence[int] = 32,
        activation: str = "sigmoid",
        dlg_init: bool = True,
    ):
        super().__init__()
        act = nn.Sigmoid if activation == "sigmoid" else nn.ReLU
        self.size = pair(size)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, padding=5 // 2, stride=2),
            act(),
            nn.Conv2d(12, 12, kernel_size=5, padding=5 // 2, stride=2),
            act(),
            nn.Conv2d(12, 12, kernel_size=5, padding=5 // 2, stride=1),
            act(),
        )
        hidden = 12 * _lenet_feature_size(self.size[0]) * _lenet_feature_size(self.size[1])
        self.fc = nn.Sequential(nn.Linear(hidden, classes))
        if dlg_init:
            for parameter in self.parameters():
                nn.init.uniform_(parameter, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            h, w = x.shape[-2:]
            raise SegauditError(
                f"this LeNet takes {self.size[0]}x{self.size[1]} images, got {h}x{w}: "
                f"resize the images or build it with size={h if h == w else [h, w]}"
            )
        return self.fc(self.body(x).flatten(1))


@functools.cache
def _torchvision_blocks() -> tuple[type, type]:
    """DenseNet and Inception building blocks whose every ReLU is a module.

    Why: torchvision's DenseNet applies its last ReLU with ``F.relu`` in ``forward`` and Inception's
    ``BasicConv2d`` does the same, so swapping ``nn.ReLU`` modules would miss them. These subclasses
    keep the parameter names (state dicts stay compatible) and route those ReLUs through modules.
    """
    tvm = import_torchvision_models()
    from torchvision.models.inception import BasicConv2d

    class DenseNet(tvm.DenseNet):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.final_act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.final_act(self.features(x))
            out = nn.functional.adaptive_avg_pool2d(out, (1, 1))
            return self.classifier(torch.flatten(out, 1))

    class ActBasicConv2d(BasicConv2d):
        def __init__(self, in_channels: int, out_channels: int, **kwargs):
            super().__init__(in_channels, out_channels, **kwargs)
            self.act = nn.ReLU(inplace=True)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    return DenseNet, ActBasicConv2d


def _resnet18(in_channels: int, classes: int, **options) -> nn.Module:
    model = import_torchvision_models().resnet18(weights=None, num_classes=classes, **options)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _densenet121(in_channels: int, classes: int, **options) -> nn.Module:
    densenet, _ = _torchvision_blocks()
    model = densenet(32, (6, 12, 24, 16), 64, num_classes=classes, **options)
    if in_channels != 3:
        model.features.conv0 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.features.conv0.weight)
    return model


def _inception_v3(in_channels: int, classes: int, **options) -> nn.Module:
    from torchvision.models import inception as tv_inception

    _, basic_conv = _torchvision_blocks()
    # Inception3 hands its conv block to the stem only: the Mixed blocks need it passed explicitly.
    mixed = ("InceptionA", "InceptionB", "InceptionC", "InceptionD", "InceptionE", "InceptionAux")
    blocks = [basic_conv] + [functools.partial(getattr(tv_inception, n), conv_block=basic_conv) for n in mixed]
    options = {"aux_logits": False, "init_weights": True, **options}
    model = tv_inception.Inception3(num_classes=classes, inception_blocks=blocks, **options)
    if in_channels != 3:
        model.Conv2d_1a_3x3 = basic_conv(in_channels, 32, kernel_size=3, stride=2)
        nn.init.trunc_normal_(model.Conv2d_1a_3x3.conv.weight, mean=0.0, std=0.1, a=-2, b=2)
    return model


def _lenet(in_channels: int, classes: int, activation: str = "sigmoid", **options) -> nn.Module:
    return LeNet(in_channels, classes, activation=activation, **options)


_CLASSIFIER_FACTORIES = {
    "lenet": _lenet,
    "resnet18": _resnet18,
    "densenet121": _densenet121,
    "inception_v3": _inception_v3,
}


def build_classifier(
    arch: str,
    encoder: str | None,
    in_channels: int,
    classes: int,
    activation: str,
    encoder_weights: str | None,
    options: dict[str, Any],
) -> nn.Module:
    """A classifier by canonical arch name: ``[N, C, H, W]`` -> logits ``[N, K]``; bad arguments are refused."""
    if encoder is not None:
        raise SegauditError(f"{arch} is a classification model and takes no encoder; drop encoder={encoder!r}")
    if encoder_weights is not None:
        raise SegauditError(
            f"{arch} takes no pretrained weights here; build it and load trained weights with load_model"
        )
    factory = _CLASSIFIER_FACTORIES[arch]
    if arch == "lenet":
        options = {**options, "activation": activation}
    try:
        return factory(in_channels, classes, **options)
    except TypeError as error:
        raise SegauditError(f"bad option for {arch}: {first_line(error)}") from None
