"""DP-SGD client updates: per-sample clipping and Gaussian noise (Opacus) on one federated client's batch."""
from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ..errors import SegauditError
from ..fl import batchnorm_guard, client_meta, local_batches, trainable_params
from ..models.dp_compatible import quiet_opacus
from ..types import Batch, ClientProtocol, ClientUpdate, UpdateMeta
from .model_fix import GRAD_SAMPLE_MODES, check_private_model


def private_client_update(
    model: nn.Module,
    batch: Batch,
    noise_multiplier: float,
    max_grad_norm: float,
    protocol: ClientProtocol | None = None,
    *,
    seed: int = 0,
    grad_sample_mode: str = "hooks",
    defense: dict | None = None,
    **settings,
) -> ClientUpdate:
    """The update a client makes with DP-SGD: per-sample clipping to C and Gaussian noise ``sigma * C``.

    FedSGD shares the noisy mean gradient ``(sum_i clip(g_i) + N(0, sigma^2 C^2)) / N``; FedAvg runs
    ``local_steps`` such steps of SGD (learning rate ``lr``, mini-batches as :func:`segaudit.fl.local_batches`)
    and shares the weight delta. Per-sample gradients come from Opacus's ``GradSampleModule``, clipping
    and noise from its ``DPOptimizer``. With ``noise_multiplier=0`` and a huge C this equals
    :func:`segaudit.fl.client_update` on the same model.

    Args:
        model: a DP-compatible model (see :func:`make_private_model`); left untouched.
        batch: images ``[N,C,H,W]``, masks ``[N,H,W]`` (or labels ``[N]``).
        noise_multiplier, max_grad_norm: sigma and C.
        protocol, **settings: the client's protocol, as for :func:`segaudit.fl.client_update`. Its loss must be
            ``"ce"`` (the batch Dice of ``dice_ce`` couples samples, so it has no per-sample gradient); its
            reduction ``"mean"`` gives the noisy mean over the N samples, ``"sum"`` the noisy sum.
        seed: seeds the noise.
        defense: what ``meta.defense`` records (the caller's parameters).

    Returns:
        A ``ClientUpdate`` keyed by parameter name; ``buffers`` are empty for a GroupNorm model.

    Raises:
        SegauditError: a BatchNorm model, ``dice_ce``, sigma < 0, C <= 0, or bad protocol settings.
    """
    from opacus.grad_sample import get_gsm_class

    check_private_model(model)
    protocol = ClientProtocol.of(protocol, **settings)
    meta = client_meta(batch, protocol, defense)
    _check_dp_settings(meta.loss, noise_multiplier, max_grad_norm, grad_sample_mode)

    client = copy.deepcopy(model).train(meta.train_mode)
    params = trainable_params(client)
    before = {name: p.detach().clone() for name, p in params.items()}
    cls = get_gsm_class(grad_sample_mode)
    ctx = quiet_opacus()
    try:
        kw = {"force_functorch": True} if grad_sample_mode == "functorch" else {}
        gsm = cls(client, batch_first=True, loss_reduction=meta.reduction, **kw)
        opt = _dp_optimizer(params, meta, noise_multiplier, max_grad_norm, seed)
        tensors = _private_tensors(gsm, opt, batch, params, before, meta)
        gsm.remove_hooks() if hasattr(gsm, "remove_hooks") else None
    finally:
        ctx.__exit__(None, None, None)
    buffers = {name: b.detach().clone() for name, b in client.named_buffers()} if protocol.share_buffers else {}
    return ClientUpdate(tensors, meta, buffers)


def _check_dp_settings(loss: str, noise_multiplier: float, max_grad_norm: float, grad_sample_mode: str) -> None:
    """Refuse a loss, sigma, C or per-sample gradient mode DP-SGD cannot use."""
    if loss != "ce":
        raise SegauditError(f"loss {loss!r} couples the samples of a batch (batch Dice), so DP-SGD has no per-sample "
                            "gradient for it; use loss='ce'")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise SegauditError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not max_grad_norm > 0:
        raise SegauditError(f"max_grad_norm (C) must be > 0, got {max_grad_norm}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise SegauditError(f"unknown grad sample mode {grad_sample_mode!r}; use one of {', '.join(GRAD_SAMPLE_MODES)}")


def _dp_optimizer(params: dict[str, nn.Parameter], meta: UpdateMeta, noise_multiplier: float,
                  max_grad_norm: float, seed: int):
    """Opacus's ``DPOptimizer`` over SGD: clips each sample's gradient to C, adds ``N(0, sigma^2 C^2)``."""
    from opacus.optimizers import DPOptimizer

    # lr 1 for FedSGD: the "step" is only used to read the privatised gradient, never applied
    sgd = torch.optim.SGD(list(params.values()), lr=meta.lr if meta.mode == "fedavg" else 1.0)
    return DPOptimizer(sgd, noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                       expected_batch_size=meta.local_batch_size, loss_reduction=meta.reduction,
                       generator=torch.Generator().manual_seed(seed))


def _private_tensors(gsm: nn.Module, opt, batch: Batch, params: dict[str, nn.Parameter],
                     before: dict[str, torch.Tensor], meta: UpdateMeta) -> dict[str, torch.Tensor]:
    """Run the DP-SGD step(s): FedSGD gives the privatised gradient, FedAvg the weight delta (by name)."""
    n, mode = len(batch), meta.mode
    steps = local_batches(n, meta) if mode == "fedavg" else [list(range(n))]
    for idx in steps:
        opt.zero_grad(set_to_none=True)
        with batchnorm_guard(len(idx)):
            out = gsm(batch.images[idx])
        torch.nn.functional.cross_entropy(out, batch.masks[idx], reduction=meta.reduction).backward()
        if mode == "fedsgd":
            opt.pre_step()  # clip, sum, add noise, scale: p.grad is the privatised gradient
            tensors = {name: p.grad.detach().clone() for name, p in params.items()}
        else:
            opt.step()
    if mode == "fedavg":
        tensors = {name: p.detach() - before[name] for name, p in params.items()}
    return tensors
