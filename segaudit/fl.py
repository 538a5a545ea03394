"""Simulate what a federated client shares: FedSGD gradients or FedAvg weight deltas."""
from __future__ import annotations

import copy
from contextlib import contextmanager

import torch
from torch import nn

from .errors import NotApplicable, SegauditError
from .losses import LOSSES, task_loss
from .types import Batch, ClientProtocol, ClientUpdate, UpdateMeta


def trainable_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """Parameters that receive gradients, by name (the keys of every ``ClientUpdate``)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def client_update(model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None,
                  **settings) -> ClientUpdate:
    """The update one client computes on ``batch``; ``model`` itself is left untouched.

    FedSGD shares ``d loss / d theta`` at the current weights. FedAvg runs ``local_steps`` plain SGD steps
    (learning rate ``lr``) over mini-batches of ``local_batch_size`` samples taken in order, cycling through
    the batch, and shares ``theta_after - theta_before``.

    Args:
        model: the global model, e.g. from ``build_model``.
        batch: images ``[N,C,H,W]`` and masks ``[N,H,W]`` (or labels ``[N]``).
        protocol: how the client trains and what it shares (default: FedSGD in train mode).
        **settings: changes to ``protocol``, field by field (see :meth:`ClientProtocol.of`: ``mode``,
            ``local_steps``, ``lr``, ``loss``, ``train_mode``, ...).

    Returns:
        A ``ClientUpdate`` keyed by parameter name.

    Example:
        >>> update = client_update(build_model("unet", in_channels=1), batch, mode="fedavg", local_steps=4)
    """
    protocol = ClientProtocol.of(protocol, **settings)
    meta = client_meta(batch, protocol)
    with _client_copy(model, meta.train_mode, fedavg=meta.mode == "fedavg") as client, \
            batchnorm_guard(meta.local_batch_size):
        tensors = _run_client(client, batch, meta)
        buffers = {name: b.detach().clone() for name, b in client.named_buffers()} if protocol.share_buffers else {}
    return ClientUpdate(tensors, meta, buffers)


@contextmanager
def _client_copy(model: nn.Module, train_mode: bool, fedavg: bool):
    """The client's model in ``train_mode``. FedAvg changes weights: a deep copy. FedSGD changes only buffers
    (BatchNorm statistics): the model itself, with its buffers and mode restored afterwards (no weight copy)."""
    if fedavg:
        yield copy.deepcopy(model).train(train_mode)
        return
    saved = [(b, b.detach().clone()) for b in model.buffers()]
    modes = [(m, m.training) for m in model.modules()]
    try:
        yield model.train(train_mode)
    finally:
        with torch.no_grad():
            for b, value in saved:
                b.copy_(value)
        for m, training in modes:
            m.training = training


def client_meta(batch: Batch, protocol: ClientProtocol, defense: dict | None = None) -> UpdateMeta:
    """The checked ``UpdateMeta`` of ``protocol`` on ``batch`` (FedSGD keeps lr 0, one step, the whole batch).

    Raises:
        SegauditError: an unknown loss, an empty batch or a local batch size above N.
    """
    if protocol.loss not in LOSSES:
        raise SegauditError(f"unknown loss {protocol.loss!r}; use one of {', '.join(LOSSES)}")
    n = len(batch)
    if n == 0:
        raise SegauditError("the client batch is empty; give at least one image")
    local_batch_size = n if protocol.local_batch_size is None else protocol.local_batch_size
    if not 1 <= local_batch_size <= n:
        raise SegauditError(f"local_batch_size must be in 1..{n} (the batch size), got {local_batch_size}")
    fedavg = protocol.mode == "fedavg"
    return UpdateMeta(protocol.mode, n, protocol.loss, protocol.reduction, protocol.lr if fedavg else 0.0,
                      protocol.local_steps if fedavg else 1, local_batch_size if fedavg else n,
                      protocol.train_mode, defense or {})


def local_batches(n: int, meta: UpdateMeta) -> list[list[int]]:
    """Sample positions of each FedAvg local step: ``local_batch_size`` at a time, in order, cycling over N.

    The client and the attacker's simulation both use this, so their mini-batch order is the same.
    """
    bs = meta.local_batch_size or n
    return [[(step * bs + i) % n for i in range(bs)] for step in range(meta.local_steps)]


def _run_client(client: nn.Module, batch: Batch, meta: UpdateMeta) -> dict[str, torch.Tensor]:
    """Gradients (FedSGD) or the weight delta after ``meta.local_steps`` SGD steps (FedAvg), by name."""
    params = trainable_params(client)
    if meta.mode == "fedsgd":
        value = task_loss(client(batch.images), batch.masks, meta.loss, meta.reduction)
        return {name: g.detach() for name, g in zip(params, torch.autograd.grad(value, list(params.values())))}
    n = len(batch)
    before = {name: p.detach().clone() for name, p in params.items()}
    for idx in local_batches(n, meta):
        value = task_loss(client(batch.images[idx]), batch.masks[idx], meta.loss, meta.reduction)
        grads = torch.autograd.grad(value, list(params.values()))
        with torch.no_grad():
            for p, g in zip(params.values(), grads):
                p.sub_(meta.lr * g)
    return {name: p.detach() - before[name] for name, p in params.items()}


@contextmanager
def batchnorm_guard(batch_size: int):
    """Turn PyTorch's BatchNorm error for a 1x1 map of one sample into a one-line fix."""
    try:
        yield
    except ValueError as e:
        if "Expected more than 1 value per channel" not in str(e):
            raise
        raise NotApplicable(
            f"a client in train mode cannot train this model on a batch of {batch_size} at this size: BatchNorm "
            "saw a single value per channel (a 1x1 feature map, e.g. DeepLab's ASPP pooling); use a batch of at "
            "least 2, a larger image size, or eval mode (--client-mode eval, train_mode=False)") from None


def check_update(model: nn.Module, update: ClientUpdate) -> None:
    """Refuse an update that does not fit ``model`` or holds NaN/Inf, naming the first bad tensor."""
    params = trainable_params(model)
    for name, p in params.items():
        t = update.tensors.get(name)
        if t is None:
            raise SegauditError(f"update has no tensor for parameter {name!r}: it was made for another architecture")
        if t.shape != p.shape:
            raise SegauditError(
                f"update tensor {name!r} has shape {tuple(t.shape)} but the model expects {tuple(p.shape)}: "
                "it was made for another architecture or number of classes")
    extra = sorted(set(update.tensors) - set(params))
    if extra:
        raise SegauditError(f"update has tensor {extra[0]!r} that the model does not have: "
                            "it was made for another architecture")
    for name, t in update.tensors.items():
        if not torch.isfinite(t).all():
            raise SegauditError(f"update tensor {name!r} contains NaN or Inf; refusing to attack a corrupt update")
