"""The sigmoid option: swap every ReLU for a sigmoid, and check that no ReLU is left in the forward pass."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from segaudit.errors import SegauditError

from .sizes import size_rules

# ReLU and ReLU6 are piecewise linear (zero curvature), which is what the sigmoid option removes.
_RELU_MODULES = (nn.ReLU, nn.ReLU6)
_RELU_FUNCTIONS = frozenset({"relu", "relu_", "relu6", "hardtanh", "hardtanh_"})


def replace_relu_with_sigmoid(module: nn.Module) -> None:
    """Swap every ``nn.ReLU``/``nn.ReLU6`` submodule for ``nn.Sigmoid``, in place."""
    for name, child in module.named_children():
        if isinstance(child, _RELU_MODULES):
            setattr(module, name, nn.Sigmoid())
        else:
            replace_relu_with_sigmoid(child)


class _CallRecorder(torch.overrides.TorchFunctionMode):
    """Records the names of the torch functions a forward pass calls (``F.relu``, ``Tensor.relu_``...)."""

    def __init__(self):
        super().__init__()
        self.names: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.names.add(getattr(func, "__name__", ""))
        return func(*args, **(kwargs or {}))


def relu_calls(model: nn.Module, x: torch.Tensor) -> set[str]:
    """ReLU-like functions called by ``model(x)``, run in eval mode without touching BN statistics."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _CallRecorder() as recorder:
            model(x)
    finally:
        model.train(was_training)
    return recorder.names & _RELU_FUNCTIONS


def _probe_input(spec: Mapping[str, Any]) -> torch.Tensor:
    rules = size_rules(spec["arch"], spec["encoder"], **spec["options"])
    height, width = rules.fixed_size or (rules.min_size, rules.min_size)
    return torch.zeros(1, spec["in_channels"], height, width)


def check_no_relu(model: nn.Module, spec: Mapping[str, Any]) -> None:
    """Why: some encoders call ``F.relu`` inside ``forward``; no module swap can reach those."""
    left = relu_calls(model, _probe_input(spec))
    if left:
        what = spec["arch"] + (f" with encoder {spec['encoder']}" if spec["encoder"] else "")
        raise SegauditError(
            f"{what} applies ReLU functionally ({', '.join(sorted(left))}), so activation='sigmoid' "
            f"cannot remove it; pick another encoder or use activation='relu'"
        )
