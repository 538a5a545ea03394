"""The attack and sensitivity scorers, and the attacks they run: the group-restricted ``seg`` inversion
(:func:`attack_with_layers`), the full attack without some groups (:func:`ablation_attack`) and the flat-image
baseline they are scored against.

Shapes: N images per batch, C channels, H x W pixels, K classes.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import nn

from ..attacks.base import best_restart
from ..attacks.inversion import MatchingLoss, SegmentationInversion
from ..attacks.objectives import GradientMatcher, select_names
from ..attacks.recovery import head_bias, recover_labels_or_composition
from ..errors import SegauditError
from ..fl import check_update, trainable_params
from ..losses import task_loss
from ..metrics import score
from ..models import layer_groups
from ..types import Batch, ClientUpdate, Prior, Reconstruction
from .context import LAYER_SCORERS, ScoringContext

__all__ = ["PSNR_SPAN_DB", "ablation_attack", "attack_exposure", "attack_scorer", "attack_with_layers",
           "flat_baseline", "sensitivity_scorer"]

PSNR_SPAN_DB = 10.0  # attack exposure: PSNR gain over the flat-image baseline, 10 dB = fully exposed


def attack_with_layers(model: nn.Module, update: ClientUpdate, prior: Prior, layers: Iterable[str],
                       steps: int = 30, seed: int = 0) -> Reconstruction:
    """The ``seg`` attack matching only ``layers`` (parameter names or prefixes) of ``update``.

    The attacker gets only those tensors: the mask starts from the class composition recovered from the
    head's bias gradient when that tensor is among ``layers``, else from a uniform composition. For
    FedSGD only the chosen parameters are differentiated (exact and cheaper); for FedAvg the whole
    unrolled client computation is simulated and only the chosen tensors compared. No BatchNorm prior;
    the ``layer_cosine`` objective with exact double backpropagation (better than ``seg``'s defaults at
    these short budgets).

    Args:
        model, update, prior: as for :meth:`segaudit.attacks.Attack.run`.
        layers: what the attacker sees.
        steps: optimisation steps (one restart).
        seed: the restart's seed.

    Returns:
        The reconstruction (images ``[N,C,H,W]``, masks ``[N,H,W]``).
    """
    check_update(model, update)
    if prior.task != "segmentation":
        raise SegauditError("per-layer attack scores need a segmentation model; classification models get "
                            "analytic and sensitivity scores only (scorers=('analytic', 'sensitivity'))")
    # short budgets on small crops: plain layer_cosine did better there than the long-run defaults of `seg`
    # (tiny U-Net, 16 px, 50 steps: 18.9 dB against 12.4 dB)
    attacker = SegmentationInversion(steps=steps, seed=seed, bn=0.0, objective="layer_cosine", relu_curvature=0.0)
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    objective, curvature = attacker.loss_settings(prior)
    matcher = GradientMatcher(update.tensors, objective, list(layers))
    bias = head_bias(net)
    if bias in matcher.names:
        extras = recover_labels_or_composition(net, update, prior)
    else:
        extras = {"composition": torch.full((prior.num_classes,), 1.0 / prior.num_classes)}
    loss = MatchingLoss(net, update, matcher, relu_curvature=curvature)
    [result] = attacker.run_restarts(loss, prior, [torch.Generator().manual_seed(seed)], extras)
    return best_restart([result], prior.task, extras)


def ablation_attack(model: nn.Module, update: ClientUpdate, batch: Batch, drop: Iterable[str] = (),
                    steps: int = 30, seed: int = 0) -> dict[str, float | None]:
    """The full attack with the tensors of ``drop`` removed from the update, scored against ``batch``.

    Args:
        drop: layer group names of :func:`~segaudit.models.layer_groups` (e.g. ``"encoder.stem"``),
            parameter names or name prefixes.

    Returns:
        :func:`segaudit.metrics.score` of the reconstruction (``psnr``, ``ssim``, ``mask_dice``, ...).
    """
    by_group = {g.name: list(g.params) for g in layer_groups(model)}
    drop = list(drop)
    dropped = {p for d in drop for p in by_group.get(d, ()) if p in update.tensors}  # frozen params: no tensor
    others = [d for d in drop if d not in by_group]
    dropped |= set(select_names(update.tensors, others)) if others else set()
    keep = [n for n in update.tensors if n not in dropped]
    if not keep:
        raise SegauditError("dropping these groups leaves no tensor to attack; drop fewer groups")
    rec = attack_with_layers(model, update, Prior.from_batch_shape(batch), keep, steps, seed)
    return score(rec, batch)


def flat_baseline(batch: Batch) -> dict[str, float | None]:
    """Scores of a flat image at each true image's mean and an empty (background) mask."""
    flat = batch.images.mean(dim=(2, 3), keepdim=True).expand_as(batch.images).clone()
    masks = torch.zeros_like(batch.masks) if batch.task == "segmentation" else None
    labels = None if batch.task == "segmentation" else torch.zeros_like(batch.masks)
    return score(Reconstruction(flat, masks=masks, labels=labels), batch)


def attack_exposure(metrics: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> float | None:
    """Mean of the PSNR gain over the flat baseline (/10 dB), the SSIM gain over it (/(1 - SSIM_flat))
    and the mask Dice, each clipped to [0, 1]; ``None`` when the attack produced nothing."""
    if metrics.get("psnr") is None:
        return None
    psnr = _clip((metrics["psnr"] - baseline["psnr"]) / PSNR_SPAN_DB)
    ssim = _clip((metrics["ssim"] - baseline["ssim"]) / max(1e-6, 1 - baseline["ssim"]))
    parts = [psnr, ssim] + ([_clip(metrics["mask_dice"])] if metrics.get("mask_dice") is not None else [])
    return sum(parts) / len(parts)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if math.isfinite(x) else (1.0 if x > 0 else 0.0)


@LAYER_SCORERS.register("attack")
def attack_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """The group-restricted ``seg`` attack, ``ctx.steps`` steps, scored against the true batch."""
    names = [p for p in group.params if p in ctx.update.tensors]
    if not names or all(float(ctx.update.tensors[n].abs().max()) == 0 for n in names):
        return {}
    if "baseline" not in ctx.cache:
        ctx.cache["baseline"] = flat_baseline(ctx.batch)
    rec = attack_with_layers(ctx.model, ctx.update, ctx.prior, names, ctx.steps, ctx.seed)
    m = score(rec, ctx.batch)
    out: dict[str, Any] = {"attack_psnr": m["psnr"], "attack_ssim": m["ssim"], "attack_dice": m["mask_dice"]}
    exposure = attack_exposure(m, ctx.cache["baseline"])
    if exposure is not None:
        out["components"] = {"attack": exposure}
    return out


# --------------------------------------------------------------------------------------------------
# Sensitivity

_SAMPLE = 50_000  # coordinates per group kept for cosines (a fixed random subset of larger groups)


def _per_image_grads(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, meta, groups,
                     seed: int) -> list[dict[str, torch.Tensor]]:
    """Per image: group name -> the group's gradient (flattened, subsampled to ``_SAMPLE`` entries)."""
    params = trainable_params(model)
    gen = torch.Generator().manual_seed(seed)
    index: dict[str, list[tuple[str, torch.Tensor | None]]] = {}
    for g in groups:
        names = [p for p in g.params if p in params]
        total = sum(params[p].numel() for p in names)
        keep = min(1.0, _SAMPLE / max(total, 1))
        index[g.name] = [(p, None if keep >= 1 else
                          torch.randperm(params[p].numel(), generator=gen)[: max(1, int(params[p].numel() * keep))])
                         for p in names]
    model.train(meta.train_mode)
    out = []
    for i in range(images.shape[0]):
        loss = task_loss(model(images[i: i + 1]), masks[i: i + 1], meta.loss, meta.reduction)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
        row = {}
        for gname, entries in index.items():
            parts = []
            for p, idx in entries:
                gp = grads[p] if grads[p] is not None else torch.zeros_like(params[p])
                parts.append(gp.detach().flatten() if idx is None else gp.detach().flatten()[idx])
            row[gname] = torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)
        out.append(row)
    return out


@LAYER_SCORERS.register("sensitivity")
def sensitivity_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """How strongly and how uniquely the group's gradient depends on the image.

    Over M single images of the dataset (``ctx.probes``, the client's images first):

    * ``uniqueness`` = mean over images of ``1 - max_{j != i} cos(g_i, g_j)`` (clipped to [0, 1]): 0 when
      another image gives the same gradient direction, so the group cannot tell them apart;
    * ``gain`` = mean over images of ``(||g(x + e) - g(x)|| / ||g(x)||) / (||e|| / ||x||)`` for a random
      perturbation ``e`` of 1 % of the image norm: the elasticity of the gradient to the input;
    * ``sensitivity = uniqueness * gain / (1 + gain)``.

    Groups with more than 50 000 entries are compared on a fixed random subset of that size.
    """
    if "sens" not in ctx.cache:
        ctx.cache["sens"] = _sensitivities(ctx)
    values = ctx.cache["sens"].get(group.name)
    if values is None:
        return {}
    uniqueness, gain = values
    sensitivity = uniqueness * gain / (1 + gain)
    return {"uniqueness": uniqueness, "gain": gain, "sensitivity": sensitivity,
            "components": {"sensitivity": sensitivity}}


def _sensitivities(ctx: ScoringContext) -> dict[str, tuple[float, float]]:
    images, masks = ctx.probes
    if images.shape[0] < 2:
        return {}
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    noise = torch.randn(images.shape, generator=gen)
    scale = 0.01 * images.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
    shifted = images + noise * scale.view(-1, 1, 1, 1)
    clean = _per_image_grads(ctx.model, images, masks, ctx.update.meta, ctx.groups, ctx.seed)
    moved = _per_image_grads(ctx.model, shifted, masks, ctx.update.meta, ctx.groups, ctx.seed)
    out = {}
    for g in ctx.groups:
        vecs = torch.stack([row[g.name] for row in clean])
        if vecs.shape[1] == 0:
            continue
        norms = vecs.norm(dim=1)
        if float(norms.min()) == 0:
            continue
        unit = vecs / norms[:, None]
        cos = unit @ unit.t()
        cos.fill_diagonal_(-math.inf)
        uniqueness = float((1 - cos.max(dim=1).values).clamp(0, 1).mean())
        change = torch.stack([row[g.name] for row in moved]) - vecs
        gain = float((change.norm(dim=1) / norms / 0.01).mean())
        out[g.name] = (uniqueness, gain)
    return out
