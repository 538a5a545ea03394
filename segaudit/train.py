"""Train a segmentation model on CPU-sized patches and score it on a held-out split."""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .data import Dataset, make_batch, split
from .errors import SegauditError
from .losses import task_loss
from .metrics import segmentation_scores
from .preprocessing import normalisation
from .progress import progress as _progress


@dataclass
class TrainResult:
    """A trained model and its held-out quality (mean foreground Dice / IoU)."""

    model: nn.Module
    dice: float
    iou: float
    steps: int
    seconds: float
    train_names: list[str]
    heldout_names: list[str]
    losses: list[float] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"heldout_dice": self.dice, "heldout_iou": self.iou, "steps": self.steps, "seconds": self.seconds,
                "final_loss": float(np.mean(self.losses[-20:])) if self.losses else None,
                "train_images": self.train_names, "heldout_images": self.heldout_names, **self.settings}


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, indices: list[int], size: int) -> dict[str, float]:
    """Mean per-image foreground Dice and IoU of ``model`` (eval mode) on ``indices`` at ``size`` px."""
    model.eval()
    scores, norm = [], normalisation(model)
    for i in indices:
        batch = make_batch(dataset, [i], size=size, **norm)
        pred = model(batch.images).argmax(1)[0]
        scores.append(segmentation_scores(pred, batch.masks[0], batch.num_classes))
    return {k: float(np.mean([s[k] for s in scores])) for k in ("dice", "iou")}


def train_model(model: nn.Module, dataset: Dataset, size: int = 64, steps: int = 300, batch_size: int = 8,
                lr: float = 1e-3, loss: str = "dice_ce", holdout: float = 0.25, seed: int = 0,
                eval_size: int | None = None, progress: bool = True) -> TrainResult:
    """Adam on random augmented ``size`` px crops of the training split; Dice/IoU on the held-out split.

    Args:
        model: a segmentation model whose input channels and classes match ``dataset``.
        dataset: from :func:`segaudit.data.load_dataset`.
        size: crop size in pixels (a multiple of the model's output stride).
        eval_size: size of the held-out images (default: the largest multiple of 32 the images allow).

    Returns:
        A ``TrainResult``; ``model`` is trained in place and left in eval mode.
    """
    if steps < 1:
        raise SegauditError(f"steps must be at least 1, got {steps}")
    if batch_size < 1:
        raise SegauditError(f"batch size must be at least 1, got {batch_size}")
    train_idx, test_idx = split(dataset, holdout=holdout, seed=seed)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    batches = (rng.choice(train_idx, size=batch_size, replace=len(train_idx) < batch_size).tolist()
               for _ in range(steps))
    return run_training(model, dataset, train_idx, test_idx, opt, batches, steps=steps, size=size, loss=loss,
                        seed=seed, eval_size=eval_size, progress=progress, lr=lr, batch_size=batch_size)


def run_training(model: nn.Module, dataset: Dataset, train_idx: list[int], test_idx: list[int],
                 optimizer: torch.optim.Optimizer, batches: Iterable[list[int]], *, steps: int, size: int,
                 loss: str, seed: int, eval_size: int | None, progress: bool, lr: float, batch_size: int,
                 on_empty: Callable[[nn.Module], None] | None = None) -> TrainResult:
    """The training loop shared by :func:`train_model` and DP-SGD (:func:`segaudit.privacy.train_private`).

    Each step takes the next list of sample indices from ``batches``, makes augmented ``size`` px crops
    of them, and steps ``optimizer`` (plain Adam, or Opacus's ``DPOptimizer`` that clips and adds noise)
    on a cosine learning-rate schedule. An empty list (Poisson sampling can draw nobody) calls
    ``on_empty(model)`` and still steps, as DP accounting assumes.
    """
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    losses: list[float] = []
    start = time.perf_counter()
    model.train()
    batches, norm = iter(batches), normalisation(model)
    for step in _progress(range(steps), "train", enabled=progress):
        idx = next(batches)
        optimizer.zero_grad()
        if idx:
            batch = make_batch(dataset, idx, size=size, augment=True, seed=seed * 1_000_003 + step, fit="crop",
                               **norm)
            value = task_loss(model(batch.images), batch.masks, loss)
            value.backward()
            losses.append(value.item())
        elif on_empty is not None:
            on_empty(model)
        else:
            raise SegauditError("an empty training batch; use a batch size of at least 1")
        optimizer.step()
        sched.step()
    seconds = time.perf_counter() - start
    eval_size = eval_size or max(32, min(dataset.min_size // 32 * 32, 256))
    inner = getattr(model, "_module", model)  # Opacus's GradSampleModule wraps the model
    quality = evaluate(inner, dataset, test_idx, eval_size)
    names = dataset.names
    return TrainResult(inner, quality["dice"], quality["iou"], steps, seconds,
                       [names[i] for i in train_idx], [names[i] for i in test_idx], losses,
                       {"size": size, "batch_size": batch_size, "lr": lr, "loss": loss, "seed": seed,
                        "eval_size": eval_size})
