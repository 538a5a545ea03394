"""Images from the BatchNorm statistics a train-mode client reveals, matched by the forward pass alone.

A train-mode client's update is a chaotic function of its images: on an untrained Unet-resnet18 at 64 px,
noise of 1 % of the image's spread turns the median shared tensor by ``1 - cos`` of 0.57 (in eval mode 0.0009;
``bench/train_mode_sensitivity.py``), so gradient matching from a random start finds no slope towards the truth. The
client's BatchNorm buffers reveal the per-channel mean and variance of every BatchNorm input of its batch
(:func:`~segaudit.attacks.priors.client_batch_stats`), and those are smooth functions of the images: matching
them alone, one forward and one backward pass per step and no double backpropagation, recovers the images.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from ..types import Prior
from .base import box_bounds, cosine_decay, resize
from .priors import BatchNormPrior

#: ``(downscale, end fraction of the steps)``: the image lives on a coarse grid first, as in ``seg``.
STAGES = ((8, 0.15), (4, 0.45), (2, 0.75), (1, 1.0))


def invert_statistics(model: nn.Module, statistics: BatchNormPrior, prior: Prior, gen: torch.Generator, steps: int,
                      lr: float = 0.1) -> tuple[torch.Tensor, list[float]]:
    """Images ``[N,C,H,W]`` whose BatchNorm-input statistics in train mode match the client's, and the distance
    (:meth:`~segaudit.attacks.priors.BatchNormPrior.distance`) per step.

    Adam on the image from uniform noise in the valid box, coarse to fine (:data:`STAGES`), with a cosine
    learning-rate decay. The model's buffers are left as they were.

    Args:
        model: the attacker's copy of the global model.
        statistics: the client's statistics, hooked to ``model``'s BatchNorm layers.
        prior: the batch's shape and the client's normalisation.
        gen: the restart's random generator.
        steps: optimisation steps.
        lr: Adam's learning rate at the start.
    """
    n, (c, h, w) = prior.batch_size, prior.image_shape
    lo, hi = box_bounds(prior)
    buffers = {name: b.clone() for name, b in model.named_buffers()}  # train mode updates running statistics
    was_training = model.training
    model.train()
    x = lo + torch.rand((n, c, h, w), generator=gen) * (hi - lo)
    history, stage = [], None
    statistics.reset()
    try:
        for step in range(steps):
            down = next(d for d, end in STAGES if step < end * steps)
            if down != stage:
                stage, coarse = down, resize(x.detach(), (max(h // down, 1), max(w // down, 1))).requires_grad_()
                opt = torch.optim.Adam([coarse], lr=lr)
            opt.param_groups[0]["lr"] = lr * cosine_decay(step, steps)
            x = resize(coarse, (h, w))
            functional_call(model, buffers, (x,))
            distance = statistics.distance()
            history.append(float(distance.detach()))
            (coarse.grad,) = torch.autograd.grad(distance, [coarse])
            opt.step()
            with torch.no_grad():
                coarse.clamp_(lo, hi)
        x = resize(coarse, (h, w))
    finally:
        model.train(was_training)
    return x.detach().clamp(lo, hi), history
