"""Gradient-matching objectives and the attacker's differentiable copy of the client's computation.

An objective compares the update the attacker simulates for its dummy data with the update the client
shared, tensor by tensor (both keyed by parameter name). Lower is better; 0 means a perfect match.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call

from ..errors import SegauditError
from ..fl import local_batches
from ..losses import task_loss
from ..registry import Registry
from ..types import UpdateMeta

Tensors = Mapping[str, torch.Tensor]
Objective = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[float]], torch.Tensor]

OBJECTIVES: Registry[Objective] = Registry("objective")


@OBJECTIVES.register("l2")
def l2_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                weights: Sequence[float]) -> torch.Tensor:
    """DLG (Zhu et al. 2019): ``sum_l w_l * ||g_l - g*_l||^2``."""
    return sum(w * (d - t).pow(2).sum() for d, t, w in zip(dummy, target, weights))


@OBJECTIVES.register("cosine")
def cosine_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                    weights: Sequence[float]) -> torch.Tensor:
    """Inverting Gradients (Geiping et al. 2020): ``1 - cos(g, g*)`` over all tensors as one vector.

    With weights, each tensor's entries are scaled by ``sqrt(w_l)`` in both vectors.
    """
    return cosine_from_stats(*tensor_stats(dummy, target), weights)


@OBJECTIVES.register("layer_cosine")
def layer_cosine_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                          weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean over tensors of ``1 - cos(g_l, g*_l)``: every layer counts, whatever its size.

    Tensors whose target is all zero (e.g. pruned away) carry no direction and are skipped.
    """
    return layer_cosine_from_stats(*tensor_stats(dummy, target), weights)


#: ``eps`` of ``layer_log_cosine``: distances well below it count about linearly, above it logarithmically.
LOG_EPS = 1e-4


@OBJECTIVES.register("layer_log_cosine")
def layer_log_cosine_distance(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor],
                              weights: Sequence[float]) -> torch.Tensor:
    """Weighted mean over tensors of ``log(1 + d_l / eps)``, ``d_l = 1 - cos(g_l, g*_l)``, ``eps = 1e-4``.

    Like ``layer_cosine``, but every tensor counts by its *relative* change: the late decoder tensors of a
    U-Net, whose distances sit near 1e-4 and rank images by their large structures, weigh as much as the
    early encoder tensors near 0.05, which a fine noise texture can match. 0 at a perfect match.
    """
    return layer_log_cosine_from_stats(*tensor_stats(dummy, target), weights)


def tensor_stats(dummy: Sequence[torch.Tensor], target: Sequence[torch.Tensor]):
    """Per tensor ``<g_l, g*_l>``, ``||g_l||^2`` and ``||g*_l||^2``: all the cosine objectives need."""
    return ([(d * t).sum() for d, t in zip(dummy, target)], [d.pow(2).sum() for d in dummy],
            [t.pow(2).sum() for t in target])


def cosine_from_stats(dots: Sequence[torch.Tensor], dummy_sq: Sequence[torch.Tensor],
                      target_sq: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """:func:`cosine_distance` from per-tensor statistics (scalars, or ``[R]`` for R restarts at once)."""
    dot = sum(w * d for d, w in zip(dots, weights))
    nd = sum(w * d for d, w in zip(dummy_sq, weights))
    nt = sum(w * t for t, w in zip(target_sq, weights))
    return 1 - dot / (nd * nt).sqrt().clamp_min(1e-30)


def layer_cosine_from_stats(dots: Sequence[torch.Tensor], dummy_sq: Sequence[torch.Tensor],
                            target_sq: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """:func:`layer_cosine_distance` from per-tensor statistics (scalars, or ``[R]`` for R restarts)."""
    return _layer_mean(dots, dummy_sq, target_sq, weights, lambda d: d)


def layer_log_cosine_from_stats(dots: Sequence[torch.Tensor], dummy_sq: Sequence[torch.Tensor],
                                target_sq: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """:func:`layer_log_cosine_distance` from per-tensor statistics (scalars, or ``[R]`` for R restarts)."""
    return _layer_mean(dots, dummy_sq, target_sq, weights, lambda d: torch.log1p(d.clamp_min(0) / LOG_EPS))


def _layer_mean(dots, dummy_sq, target_sq, weights, transform) -> torch.Tensor:
    """Weighted mean over tensors of ``transform(1 - cos_l)``, skipping tensors whose target is all zero."""
    total, weight = 0.0, 0.0
    for dot, nd, nt, w in zip(dots, dummy_sq, target_sq, weights):
        if nt == 0:
            continue
        total = total + w * transform(1 - dot / (nd * nt).sqrt().clamp_min(1e-30))
        weight += w
    if weight == 0:
        raise SegauditError("every selected tensor of the update is zero; nothing to match")
    return total / weight


#: Objectives computable from per-tensor inner products and norms (what batched restarts compute).
FROM_STATS = {"cosine": cosine_from_stats, "layer_cosine": layer_cosine_from_stats,
              "layer_log_cosine": layer_log_cosine_from_stats}


class GradientMatcher:
    """The matching loss between simulated and shared updates over a chosen set of tensors.

    Args:
        target: the shared update's tensors by parameter name.
        objective: a name in :data:`OBJECTIVES` (``"l2"``, ``"cosine"``, ``"layer_cosine"``).
        layers: parameter names (or name prefixes such as ``"encoder.layer1"``) to match; ``None`` = all.
        weights: optional per-name (or per-prefix) weights; unnamed tensors weigh 1.
        support_only: compare only the entries where the shared tensor is non-zero (the simulated tensor is
            multiplied by ``target != 0``): for pruned or sparsified updates, whose zeros mean "not sent".

    Example:
        >>> match = GradientMatcher(update.tensors, "layer_cosine", layers=["decoder", "segmentation_head"])
        >>> loss = match(simulated_tensors)
    """

    def __init__(self, target: Tensors, objective: str = "layer_cosine", layers: Iterable[str] | None = None,
                 weights: Mapping[str, float] | None = None, support_only: bool = False):
        self.name, self.objective = objective, OBJECTIVES.get(objective)
        self.names = select_names(target, layers)
        self.target = [target[n].detach() for n in self.names]
        self.target_sq = [t.pow(2).sum() for t in self.target]
        self.weights = [_lookup(weights or {}, n, 1.0) for n in self.names]
        self.support = [(t != 0).to(t.dtype) for t in self.target] if support_only else None

    def __call__(self, simulated: Tensors) -> torch.Tensor:
        dummy = [simulated[n] for n in self.names]
        if self.support is not None:
            dummy = [d * s for d, s in zip(dummy, self.support)]
        return self.objective(dummy, self.target, self.weights)

    def from_stats(self, dots: Sequence[torch.Tensor], dummy_sq: Sequence[torch.Tensor]) -> torch.Tensor:
        """The loss from per-tensor ``<g, g*>`` and ``||g||^2`` (each ``[R]``, in :attr:`names` order)."""
        if self.name not in FROM_STATS:
            raise SegauditError(f"objective {self.name!r} needs the whole simulated update; use one of "
                                f"{', '.join(FROM_STATS)} for batched restarts")
        return FROM_STATS[self.name](dots, dummy_sq, self.target_sq, self.weights)


def select_names(tensors: Iterable[str], layers: Iterable[str] | None) -> list[str]:
    """Names in ``tensors`` equal to, or under a prefix in, ``layers`` (all when ``None``); refuses unknowns."""
    names = list(tensors)
    if layers is None:
        return names
    layers = list(layers)
    chosen = [n for n in names if any(n == p or n.startswith(p + ".") for p in layers)]
    for p in layers:
        if not any(n == p or n.startswith(p + ".") for n in names):
            raise SegauditError(f"layer {p!r} matches no tensor of the update; use parameter names or prefixes "
                                f"such as {names[0]!r}")
    return chosen


def _lookup(table: Mapping[str, float], name: str, default: float) -> float:
    """The value for the longest key of ``table`` that is ``name`` or a prefix of it."""
    best = max((k for k in table if name == k or name.startswith(k + ".")), key=len, default=None)
    return float(table[best]) if best is not None else default


def simulate_update(model: nn.Module, params: Tensors, buffers: Tensors, images: torch.Tensor,
                    targets: torch.Tensor, meta: UpdateMeta, create_graph: bool = True) -> dict[str, torch.Tensor]:
    """The update the client would have sent for ``images``/``targets``, differentiable in both.

    Reproduces :func:`segaudit.fl.client_update` exactly (same loss, reduction, mode, learning rate,
    local steps and mini-batch order) with ``torch.func.functional_call``, so gradients flow back to the
    dummy data through the whole (possibly unrolled FedAvg) computation.

    Args:
        model: the global model (its own parameters are not used).
        params: parameter name -> value at the start of the round.
        buffers: buffer name -> value (copied: BatchNorm updates them in train mode).
        images: ``[N, C, H, W]`` dummy images.
        targets: ``[N, K, H, W]`` (or ``[N, K]``) soft targets, or class indices.
        meta: the shared update's metadata.

    Returns:
        Parameter name -> simulated gradient (FedSGD) or weight delta (FedAvg).
    """
    names = list(params)
    buffers = {k: v.clone() for k, v in buffers.items()}
    model.train(meta.train_mode)

    def grads_at(weights: Sequence[torch.Tensor], idx) -> tuple[torch.Tensor, ...]:
        state = {**dict(zip(names, weights)), **buffers}
        logits = functional_call(model, state, (images[idx],))
        loss = task_loss(logits, targets[idx], meta.loss, meta.reduction)
        return torch.autograd.grad(loss, weights, create_graph=create_graph)

    start = [params[n] if params[n].requires_grad else params[n].detach().requires_grad_() for n in names]
    n = images.shape[0]
    if meta.mode == "fedsgd":
        return dict(zip(names, grads_at(start, slice(None))))
    weights = list(start)
    for idx in local_batches(n, meta):
        weights = [w - meta.lr * g for w, g in zip(weights, grads_at(weights, idx))]
    return {name: w - s for name, w, s in zip(names, weights, start)}


