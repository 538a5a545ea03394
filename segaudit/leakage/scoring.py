"""Per-layer leakage scores: :func:`layer_scores` runs the scorers of :data:`LAYER_SCORERS` on every layer group
and combines their exposures into one score per group.

Shapes: N images per batch, C channels, H x W pixels.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data import make_batch
from ..errors import SegauditError
from ..fl import client_update
from ..models import layer_groups
from ..progress import progress
from ..types import Batch, ClientProtocol, Prior
from .context import LAYER_SCORERS, ScoringContext
from .report import GroupScore, LayerReport
from .scorers import ablation_attack, flat_baseline

__all__ = ["combine", "layer_scores"]


def combine(components: Mapping[str, float]) -> float | None:
    """The combined score: the unweighted mean of the available exposures, each in [0, 1]."""
    values = [v for v in components.values() if v is not None]
    return float(sum(values) / len(values)) if values else None


def layer_scores(model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None, *, data=None,
                 scorers: Sequence[str] = ("attack", "analytic", "sensitivity"), steps: int = 30, seed: int = 0,
                 probes: int = 6, full_attack: bool = True, show_progress: bool = False, **changes) -> LayerReport:
    """Score every layer group of ``model`` for the client's ``batch``.

    Args:
        model: a segmentation model (classifiers: ``scorers=("analytic", "sensitivity")``).
        batch: the client's private batch; the update is simulated from it with :func:`segaudit.fl.client_update`.
        data: a :class:`~segaudit.data.Dataset` from which ``probes`` extra single images are drawn for the
            sensitivity scorer (crops of the batch's size); ``None`` uses the batch's own images only.
        scorers: names in :data:`LAYER_SCORERS`.
        steps: the attack budget per group (and for the full-update reference attack).
        seed: seeds the attacks and the probes.
        protocol, **changes: the client's protocol, as for :func:`segaudit.fl.client_update` (FedSGD in train
            mode by default, as real clients train: see :data:`segaudit.types.CLIENT_MODE`).
        probes: images for the sensitivity scorer (at least 2 are needed).
        full_attack: also run the attack on the whole update (the report's ``full`` entry).
        show_progress: a progress bar over groups.

    Returns:
        A :class:`LayerReport`; ``report.ranking()`` lists groups from most to least exposed.

    Example:
        >>> report = layer_scores(build_model("unet", in_channels=1), make_batch(load_dataset("nuclei"), [0]))
        >>> report.ranking()[:3]
    """
    for name in scorers:
        LAYER_SCORERS.get(name)
    if steps < 1:
        raise SegauditError(f"steps must be at least 1, got {steps}")
    started = time.perf_counter()
    model = copy.deepcopy(model)
    protocol = ClientProtocol.of(protocol, **changes)
    update = client_update(model, batch, protocol)
    groups = layer_groups(model)
    ctx = ScoringContext(model, batch, update, Prior.from_batch_shape(batch), groups,
                         _probe_batch(batch, data, probes, seed), steps, seed)
    results = [GroupScore(g.name, g.kind, list(g.params)) for g in groups]
    runtime: dict[str, float] = {}
    for name in scorers:
        scorer = LAYER_SCORERS.get(name)
        t0 = time.perf_counter()
        for group, result in progress(list(zip(groups, results)), f"{name} scores", total=len(groups),
                                      enabled=show_progress):
            _merge(result, scorer(ctx, group))
        runtime[name] = time.perf_counter() - t0
    for result in results:
        result.score = combine(result.components)
    full: dict[str, float | None] = {}
    if full_attack and ctx.prior.task == "segmentation":
        t0 = time.perf_counter()
        full = ablation_attack(model, update, batch, (), steps, seed)
        runtime["full_attack"] = time.perf_counter() - t0
    runtime["total"] = time.perf_counter() - started
    settings = {"scorers": list(scorers), "steps": steps, "seed": seed, "mode": protocol.mode,
                "train_mode": protocol.train_mode,
                "batch_size": len(batch), "size": list(batch.images.shape[-2:]), "probes": int(ctx.probes[0].shape[0])}
    baseline = ctx.cache.get("baseline") or (flat_baseline(batch) if ctx.prior.task == "segmentation" else {})
    return LayerReport(results, full, baseline, settings, runtime)


def _merge(result: GroupScore, values: Mapping[str, Any]) -> None:
    """Put one scorer's fields into ``result``: ``components`` merged, ``tensors`` appended, others set."""
    for key, value in values.items():
        if key == "components":
            result.components.update(value)
        elif key == "tensors":
            result.tensors.extend(value)
        else:
            setattr(result, key, value)


def _probe_batch(batch: Batch, data, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[M,C,H,W]`` and masks for the sensitivity scorer: the batch's images, then dataset crops."""
    images, masks = batch.images, batch.masks
    if data is not None and images.shape[0] < count:
        size = int(batch.images.shape[-1])
        extra = make_batch(data, [i % len(data) for i in range(count - images.shape[0])], size=size, seed=seed + 7,
                           fit="crop" if data.min_size >= size else "resize", stride=1,
                           mean=batch.mean or 0.5, std=batch.std or 0.5)
        images, masks = torch.cat([images, extra.images]), torch.cat([masks, extra.masks])
    return images[:max(count, 2)], masks[:max(count, 2)]
