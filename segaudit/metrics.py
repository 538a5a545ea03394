"""Reconstruction and segmentation metrics. They run after an attack, outside it.

Images are compared in [0, 1] (the normalisation is undone first); masks as class-index maps.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Sequence

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from .types import Batch, Reconstruction


def denormalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[N,C,H,W]`` normalised images -> ``[N,C,H,W]`` in [0, 1] (clamped)."""
    c = images.shape[1]
    m = torch.as_tensor(tuple(mean) if len(mean) == c else tuple(mean) * c, dtype=images.dtype).view(1, c, 1, 1)
    s = torch.as_tensor(tuple(std) if len(std) == c else tuple(std) * c, dtype=images.dtype).view(1, c, 1, 1)
    return (images * s + m).clamp(0, 1)


def class_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-class Dice and IoU of two label maps; NaN for a class absent from both.

    Args:
        pred, target: ``[..., H, W]`` class indices.

    Returns:
        ``(dice[K], iou[K])``.
    """
    dice = np.full(num_classes, np.nan)
    iou = np.full(num_classes, np.nan)
    for k in range(num_classes):
        p, t = pred == k, target == k
        inter, union = int((p & t).sum()), int((p | t).sum())
        if union:
            dice[k] = 2 * inter / (int(p.sum()) + int(t.sum()))
            iou[k] = inter / union
    return dice, iou


def segmentation_scores(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict[str, float]:
    """Mean Dice and IoU over the foreground classes (class 0 is background), NaN-skipping."""
    dice, iou = class_scores(pred, target, num_classes)
    fg = slice(1, None) if num_classes > 1 else slice(None)
    with np.errstate(all="ignore"):
        return {"dice": _nanmean(dice[fg]), "iou": _nanmean(iou[fg])}


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else 1.0  # both empty everywhere: a perfect (trivial) agreement


def image_scores(rec: np.ndarray, true: np.ndarray) -> dict[str, float]:
    """MSE, PSNR (dB) and SSIM of one ``[C,H,W]`` image pair in [0, 1]."""
    mse = float(np.mean((rec - true) ** 2))
    psnr = float(peak_signal_noise_ratio(true, rec, data_range=1.0)) if mse > 0 else math.inf
    ssim = float(structural_similarity(true, rec, data_range=1.0, channel_axis=0,
                                       win_size=min(7, *[s - (s + 1) % 2 for s in true.shape[1:]])))
    return {"mse": mse, "psnr": psnr, "ssim": ssim}


def match_order(rec: torch.Tensor, true: torch.Tensor) -> np.ndarray:
    """One-to-one assignment of reconstructions to ground truth by minimal MSE (Hungarian).

    Args:
        rec, true: ``[N, ...]`` tensors.

    Returns:
        ``perm`` with ``rec[perm[i]]`` matched to ``true[i]``.
    """
    cost = torch.cdist(true.flatten(1).double(), rec.flatten(1).double()) ** 2
    rows, cols = linear_sum_assignment(cost.numpy())
    return cols[np.argsort(rows)]


def score(reconstruction: Reconstruction, batch: Batch) -> dict[str, float | None]:
    """Compare an attack's output with the client's true batch.

    Returns:
        ``{"mse", "psnr", "ssim", "mask_dice", "mask_iou", "label_acc"}``: means over the batch after
        one-to-one matching; ``None`` where not applicable or when the attack produced nothing.
    """
    out: dict[str, float | None] = dict.fromkeys(("mse", "psnr", "ssim", "mask_dice", "mask_iou", "label_acc"))
    if reconstruction.status != "ok" or reconstruction.images is None:
        return out
    true = denormalize(batch.images.detach(), batch.mean or (0.5,), batch.std or (0.5,))
    rec = denormalize(reconstruction.images.detach(), batch.mean or (0.5,), batch.std or (0.5,))
    perm = match_order(rec, true)
    rows = [image_scores(rec[j].numpy().astype(np.float64), true[i].numpy().astype(np.float64))
            for i, j in enumerate(perm)]
    for key in ("mse", "psnr", "ssim"):
        out[key] = float(np.mean([r[key] for r in rows]))
    if batch.task == "segmentation" and reconstruction.masks is not None:
        per = [segmentation_scores(reconstruction.masks[j], batch.masks[i], batch.num_classes) for i, j in enumerate(perm)]
        out["mask_dice"] = float(np.mean([p["dice"] for p in per]))
        out["mask_iou"] = float(np.mean([p["iou"] for p in per]))
    if batch.task == "classification" and reconstruction.labels is not None:
        # Labels are scored as a multiset: recovered labels need not follow the image order.
        common = Counter(reconstruction.labels.tolist()) & Counter(batch.masks.tolist())
        out["label_acc"] = sum(common.values()) / len(batch)
    return out
