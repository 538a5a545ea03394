"""Helpers over a model's layers shared by the scorers and the gate: the weight layers and a forward-hook recorder
of layer inputs and outputs."""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

__all__ = ["WEIGHT_LAYERS", "LayerRecorder"]

WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


class LayerRecorder:
    """Forward hooks on ``modules`` (name -> module) for the duration of a ``with`` block.

    Per call of a module it records the name in ``order`` and the shape of its first input in
    ``input_shapes[name]`` (one shape per call, e.g. ``[N, C, H, W]``). With ``keep_outputs`` it also keeps the
    module's last output in ``outputs[name]`` and passes a clone on to the rest of the model, so later in-place
    ops (ReLU) leave the kept tensor intact for ``torch.autograd.grad``.

    Example:
        >>> with LayerRecorder({"conv": model.conv}) as recorder:
        ...     model(images)
        >>> recorder.input_shapes["conv"][0]
    """

    def __init__(self, modules: Mapping[str, nn.Module], keep_outputs: bool = False):
        self.modules = modules
        self.keep_outputs = keep_outputs
        self.order: list[str] = []
        self.input_shapes: dict[str, list[torch.Size]] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.handles: list = []

    def hook(self, name: str):
        """The forward hook recording calls of the module ``name``."""
        def record(_module, inputs, output):
            self.order.append(name)
            self.input_shapes.setdefault(name, []).append(inputs[0].shape)
            if self.keep_outputs:
                self.outputs[name] = output
                return output.clone()
            return None
        return record

    def __enter__(self) -> LayerRecorder:
        self.handles = [module.register_forward_hook(self.hook(name)) for name, module in self.modules.items()]
        return self

    def __exit__(self, *exc_info) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
