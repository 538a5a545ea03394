"""torchvision ResNet blocks that add their skip connection out of place, for Opacus.

Importing this module imports torchvision (seconds), patched first for a CPU torch: :mod:`segaudit.models`
imports it only when a model is made DP-compatible.
"""
from __future__ import annotations

import torch

from segaudit._compat import patch_torchvision

patch_torchvision()  # torchvision must be patched before it is imported on a CPU torch
from torchvision.models import resnet  # noqa: E402


class OutOfPlaceBasicBlock(resnet.BasicBlock):
    """torchvision's ``BasicBlock`` with ``out = out + identity`` instead of ``out += identity``.

    Why: Opacus's full backward hooks wrap each module's output; adding the skip in place into the
    output of the last norm layer is refused by autograd ("... is a view and is being modified inplace").
    Parameter names are unchanged, so state dicts stay compatible. Module-level so models still pickle
    (Opacus clones modules through ``torch.save``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class OutOfPlaceBottleneck(resnet.Bottleneck):
    """torchvision's ``Bottleneck`` with an out-of-place skip addition (see :class:`OutOfPlaceBasicBlock`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)



#: torchvision block class -> its out-of-place twin (same parameters, so state dicts stay compatible).
OUT_OF_PLACE_BLOCKS: dict[type, type] = {resnet.BasicBlock: OutOfPlaceBasicBlock,
                                         resnet.Bottleneck: OutOfPlaceBottleneck}
