"""The client's training losses. The attacker imports the same functions, so both sides match exactly."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .errors import SegauditError

LOSSES = ("ce", "dice_ce")


def _as_probs(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[N,H,W]`` class indices or ``[N,K,H,W]`` probabilities -> ``[N,K,H,W]`` float probabilities."""
    if target.dtype in (torch.long, torch.int32, torch.int64, torch.uint8):
        return F.one_hot(target.long(), num_classes).movedim(-1, 1).float()
    return target


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - mean over classes of the batch soft Dice (smoothed by ``eps``).

    Args:
        logits: ``[N, K, H, W]``.
        target: ``[N, H, W]`` indices or ``[N, K, H, W]`` probabilities.
    """
    probs = logits.softmax(1)
    onehot = _as_probs(target, logits.shape[1])
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    card = probs.sum(dims) + onehot.sum(dims)
    return 1.0 - ((2 * inter + eps) / (card + eps)).mean()


def task_loss(logits: torch.Tensor, target: torch.Tensor, loss: str = "ce", reduction: str = "mean") -> torch.Tensor:
    """The loss a client minimises.

    Args:
        logits: ``[N, K, H, W]`` (segmentation) or ``[N, K]`` (classification).
        target: class indices (``[N, H, W]`` / ``[N]``) or soft targets with the class on dim 1.
        loss: ``"ce"`` (cross-entropy) or ``"dice_ce"`` (cross-entropy + soft Dice, segmentation only).
        reduction: ``"mean"`` (over samples and pixels) or ``"sum"``.

    Returns:
        A scalar tensor.
    """
    if loss not in LOSSES:
        raise SegauditError(f"unknown loss {loss!r}; use one of {', '.join(LOSSES)}")
    if reduction not in ("mean", "sum"):
        raise SegauditError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    value = F.cross_entropy(logits, target, reduction=reduction)
    if loss == "dice_ce":
        if logits.dim() != 4:
            raise SegauditError("loss 'dice_ce' needs a segmentation model; use 'ce' for classification")
        dice = soft_dice_loss(logits, target)
        value = value + (dice if reduction == "mean" else dice * target.shape[0])
    return value
