"""A smooth stand-in for the curvature of ReLU, so the matching loss's gradient sees units switch.

A ReLU network's weight gradient changes abruptly when a unit switches on or off, and near the true image
the matching loss grows about linearly with the pixel error because many units do (measured on an untrained
U-Net: per-layer cosine distance 0.0008 at noise 0.001, 0.008 at 0.01). Double backpropagation cannot see
this: ReLU's second derivative is zero almost everywhere, so the loss's gradient points past the switches
and signed or plain Adam steps raise the loss again even from a start at 32 dB.

:func:`relu_curvature` keeps every value and every first derivative exact (the matching loss is unchanged,
and 0 at the true batch) and replaces only the derivative of ReLU's backward pass with respect to its input,
``d/dz [g * 1(z > 0)]``, by that of a sigmoid gate: ``g * sigmoid'(z / tau) / tau`` with
``tau = c * std(z)`` per sample. It acts like a surrogate gradient in spiking networks.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode


class _Gate(torch.autograd.Function):
    """``grad * 1(z > 0)``; its derivative in ``z`` is the sigmoid surrogate (not zero)."""

    @staticmethod
    def forward(ctx, grad: torch.Tensor, z: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(grad, z, tau)
        return torch.ops.aten.threshold_backward(grad, z, 0)

    @staticmethod
    def backward(ctx, outer: torch.Tensor):
        grad, z, tau = ctx.saved_tensors
        # d/dz sigmoid(z / tau) = s (1 - s) / tau, fused by sigmoid_backward
        surrogate = torch.ops.aten.sigmoid_backward(outer * grad / tau, torch.sigmoid(z / tau))
        return torch.ops.aten.threshold_backward(outer, z, 0), surrogate, None


class _ReLU(torch.autograd.Function):
    """``max(z, 0)`` whose backward pass is a :class:`_Gate` (so double backward reaches ``z``)."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.scale = scale
        return z.clamp_min(0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (z,) = ctx.saved_tensors
        return _Gate.apply(grad, z, ctx.scale * _sample_std(z.detach())), None


def _sample_std(z: torch.Tensor) -> torch.Tensor:
    """Standard deviation of each sample ``[B, ...] -> [B, 1, ...]`` (of all of ``z`` when it is 1-D), so
    that the samples and restarts stacked in one batch do not change each other's temperature."""
    if z.dim() < 2:
        return z.std().clamp_min(1e-12)
    return z.flatten(1).std(1).clamp_min(1e-12).view(-1, *[1] * (z.dim() - 1))


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _SurrogateMode(TorchFunctionMode):
    def __init__(self, scale: float):
        super().__init__()
        self.scale = scale

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _RELUS:
            return _ReLU.apply(args[0], self.scale)  # out of place: callers use the returned tensor
        return func(*args, **(kwargs or {}))


def relu_curvature(scale: float):
    """Context in which every ReLU (modules and functional calls) gets the sigmoid second derivative with
    temperature ``scale * std(z)`` (per sample); ``scale = 0`` leaves ReLU untouched.

    Example:
        >>> with relu_curvature(0.05):
        ...     loss = matching_loss(images, masks)
        >>> loss.sum().backward()  # reaches the images through the surrogate curvature
    """
    return _SurrogateMode(scale) if scale > 0 else contextlib.nullcontext()
