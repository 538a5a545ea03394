"""Masks for images the attacker already holds (exactly, or as a reconstruction), from two sources:

* ``"model"``: the model segments the images, ``model(x).argmax`` in eval mode; a trained model's own guess;
* ``"least squares"``: with the images fixed, the cross-entropy update is linear in the soft mask ``y``. For
  FedSGD with mean reduction ``g(y) = J^T (softmax - y) / (N*H*W)``, with ``J`` the Jacobian of the logits in
  the weights; a FedAvg delta is read as its mean gradient ``-delta / (lr * K)``, linearised at the starting
  weights (exact for one step). :func:`solve_masks` solves that system by conjugate gradients on the normal
  equations (CGLS), each iteration one Jacobian-vector and one vector-Jacobian product. With exact images and
  an untrained Unet-resnet18 (train mode, 64 px) it reaches Dice 0.99 on a batch of 8 nuclei crops in 150
  iterations, where signed Adam on the cosine loss stalled near 0.82 on 2. The last decoder block must be
  wide enough: with smp's default 16 channels the masks are determined, with 4 they are not.

The source whose simulated update matches the shared one better (:data:`OBJECTIVE`) wins; which one did is
reported.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jvp, vjp

from ..errors import SegauditError
from ..types import ClientUpdate, Prior
from .inversion import MatchingLoss
from .objectives import GradientMatcher

#: The objective every candidate mask is judged by.
OBJECTIVE = "layer_cosine"


@torch.no_grad()
def model_masks(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``[N,H,W]``: the model's own segmentation of ``images`` ``[N,C,H,W]`` (eval mode; modes restored)."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        return model.eval()(images).argmax(1)
    finally:
        for m, training in modes:
            m.training = training


def solve_masks(model: nn.Module, update: ClientUpdate, images: torch.Tensor, iterations: int = 150) -> torch.Tensor:
    """Soft masks ``[M,K,H,W]`` whose cross-entropy update for ``images`` ``[M,C,H,W]`` best fits the shared one
    in least squares (CGLS from the model's own softmax; the result is not confined to the simplex).

    ``M`` may be smaller than the update's batch: the samples the attacker lacks then act as noise. FedAvg is
    linearised at the starting weights over the whole batch (exact for one full-batch step).

    Raises:
        SegauditError: a loss other than ``"ce"`` (the update is then not linear in the mask).
    """
    meta = update.meta
    if meta.loss != "ce":
        raise SegauditError(f"masks solve in closed form only for the 'ce' loss, not {meta.loss!r}")
    params = {n: p.detach() for n, p in model.named_parameters() if n in update.tensors}
    fixed = {**{n: p.detach() for n, p in model.named_parameters() if n not in update.tensors},
             **{n: b.detach() for n, b in model.named_buffers()}}
    model.train(meta.train_mode)

    def logits(weights):  # BatchNorm updates copies of the buffers
        return functional_call(model, {**weights, **{k: v.clone() for k, v in fixed.items()}}, (images,))

    out, pull = vjp(logits, params)
    probs = out.detach().softmax(1)
    n, pixels = meta.batch_size, images.shape[-2] * images.shape[-1]
    if meta.reduction == "mean":
        scale = 1.0 / (n * pixels)
    else:
        scale = (meta.local_batch_size or n) / n if meta.mode == "fedavg" else 1.0
    target = {k: update.tensors[k].double() for k in params}
    if meta.mode == "fedavg":
        target = {k: -t / (meta.lr * meta.local_steps) for k, t in target.items()}

    def apply(y):  # scale * J^T y: mask space -> parameter space
        return {k: scale * g.double() for k, g in pull(y.to(images.dtype))[0].items()}

    def adjoint(z):  # scale * J z: parameter space -> mask space
        return scale * jvp(logits, (params,), ({k: t.to(images.dtype) for k, t in z.items()},))[1].double()

    def dot(a, b):
        return sum((a[k] * b[k]).sum() for k in a)

    # g(y) = scale * J^T (softmax - y) = g*  <=>  A y = A softmax - g*: at y = softmax the residual is -g*
    y = probs.double()
    residual = {k: -t for k, t in target.items()}
    s = adjoint(residual)
    d, gamma = s.clone(), (s * s).sum()
    for _ in range(iterations):
        q = apply(d)
        qq = dot(q, q)
        if not qq > 0:
            break
        alpha = gamma / qq
        y += alpha * d
        residual = {k: r - alpha * q[k] for k, r in residual.items()}
        s = adjoint(residual)
        fresh = (s * s).sum()
        if not fresh > 0:
            break
        d, gamma = s + (fresh / gamma) * d, fresh
    return y.float()


def masks_for(model: nn.Module, update: ClientUpdate, prior: Prior, images: torch.Tensor, *,
              iterations: int = 150) -> tuple[torch.Tensor, dict]:
    """Hard masks ``[N,H,W]`` for ``images`` ``[N,C,H,W]``: the better-matching of :func:`model_masks` and
    :func:`solve_masks` (when the loss is ``"ce"``), and ``{"mask_source": name, "mask_losses": {name: loss}}``."""
    candidates = {"model": model_masks(model, images)}
    if update.meta.loss == "ce":
        candidates["least squares"] = solve_masks(model, update, images, iterations).argmax(1)
    loss = MatchingLoss(model, update, GradientMatcher(update.tensors, OBJECTIVE), batched=False)
    losses = {name: float(loss(images[None].detach(), one_hot(m, prior.num_classes)[None]).detach())
              for name, m in candidates.items()}
    source = min(losses, key=losses.get)
    return candidates[source], {"mask_source": source, "mask_losses": losses}


def one_hot(masks: torch.Tensor, classes: int) -> torch.Tensor:
    """``[N,H,W]`` class maps -> ``[N,K,H,W]`` float."""
    return torch.nn.functional.one_hot(masks, classes).permute(0, 3, 1, 2).float()
