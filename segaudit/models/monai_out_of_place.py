"""MONAI residual blocks that add their skip connection out of place, for Opacus.

Why: as for torchvision's ResNet blocks (:mod:`segaudit.models.out_of_place`), ``x += identity`` edits in place the
output of a module Opacus hooks, which autograd refuses. Parameter names are unchanged, so state dicts stay
compatible; the classes are module-level so models still pickle. Imported only for a model that holds MONAI blocks.
"""
from __future__ import annotations

import torch
from monai.networks.blocks.dynunet_block import UnetResBlock
from monai.networks.blocks.segresnet_block import ResBlock


class OutOfPlaceResBlock(ResBlock):
    """SegResNet's ``ResBlock`` with ``x + identity`` instead of ``x += identity``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.act(self.norm1(x)))
        return self.conv2(self.act(self.norm2(out))) + x


class OutOfPlaceUnetResBlock(UnetResBlock):
    """The ``UnetResBlock`` of SwinUNETR's and UNETR's conv blocks with an out-of-place residual addition."""

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        out = self.norm2(self.conv2(self.lrelu(self.norm1(self.conv1(inp)))))
        residual = self.conv3(inp) if hasattr(self, "conv3") else inp
        residual = self.norm3(residual) if hasattr(self, "norm3") else residual
        return self.lrelu(out + residual)


#: MONAI block class -> its out-of-place twin.
OUT_OF_PLACE_BLOCKS: dict[type, type] = {ResBlock: OutOfPlaceResBlock, UnetResBlock: OutOfPlaceUnetResBlock}
