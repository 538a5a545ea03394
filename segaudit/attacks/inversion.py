"""Optimisation-based gradient inversion: DLG, Inverting Gradients, and the segmentation attack.

Each restart optimises dummy images ``[N,C,H,W]`` (and soft labels/masks) until the update the attacker
simulates for them matches the shared one; the restart with the lowest matching loss wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..progress import progress
from ..types import ClientUpdate, Prior, Reconstruction
from .base import ATTACKS, Attack, RestartResult, best_restart, box_bounds, total_variation
from .objectives import GradientMatcher, simulate_update
from .priors import BatchNormPrior


@dataclass
class InversionAttack(Attack):
    """Shared machinery: restarts with their own seeds, NaN abandonment, best-restart choice.

    Args:
        steps: optimisation steps per restart.
        restarts: independent restarts (seeds ``seed, seed+1, ...``).
        seed: makes the attack reproducible on CPU.
        objective: a name in :data:`~segaudit.attacks.objectives.OBJECTIVES`.
        layers: restrict matching to these parameter names/prefixes (``None`` = all).
        bn: weight of the BatchNorm-statistics prior, used when the client's buffers reveal its batch
            statistics (see :class:`~segaudit.attacks.priors.BatchNormPrior`); 0 disables it.
        show_progress: a progress bar over steps.
    """

    steps: int = 300
    restarts: int = 1
    seed: int = 0
    objective: str = "l2"
    layers: tuple[str, ...] | None = None
    bn: float = 0.0
    show_progress: bool = False

    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        matcher = GradientMatcher(update.tensors, self.objective, self.layers)
        params = {n: p.detach() for n, p in model.named_parameters() if n in update.tensors}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        bn_prior = BatchNormPrior.from_update(model, update) if self.bn > 0 else None

        def simulate(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = matcher(simulate_update(model, params, buffers, images, targets, update.meta))
            return loss if bn_prior is None else loss + self.bn * bn_prior.distance()

        results, extras = [], self._analytic(model, update, prior)
        try:
            for r in range(self.restarts):
                gen = torch.Generator().manual_seed(self.seed + r)
                try:
                    results.append(self._restart(simulate, prior, gen, extras))
                except FloatingPointError as e:
                    results.append(RestartResult(None, None, [], f"abandoned: {e}"))
        finally:
            if bn_prior is not None:
                bn_prior.remove()
        return best_restart(results, prior.task, extras)

    def _analytic(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> dict:
        """Closed-form facts recovered before optimising (labels, class composition); none by default."""
        return {}

    def _restart(self, simulate, prior: Prior, gen: torch.Generator, extras: dict) -> RestartResult:
        raise NotImplementedError

    def _steps(self):
        return progress(range(self.steps), type(self).__name__, total=self.steps, enabled=self.show_progress)


def _target_shape(prior: Prior) -> tuple[int, ...]:
    n, k = prior.batch_size, prior.num_classes
    return (n, k, *prior.image_shape[1:]) if prior.task == "segmentation" else (n, k)


def _check_finite(value: torch.Tensor, step: int) -> float:
    v = value.item()
    if not math.isfinite(v):
        raise FloatingPointError(f"matching loss became {v} at step {step}")
    return v


@ATTACKS.register("dlg")
@dataclass
class DLG(InversionAttack):
    """Deep Leakage from Gradients (Zhu et al. 2019): L-BFGS on the L2 distance, images and soft labels
    (soft masks for segmentation) optimised jointly from Gaussian noise.

    Args:
        lr, history_size, max_iter: L-BFGS settings of the paper (1, 100, 20 function evaluations per step).
    """

    lr: float = 1.0
    history_size: int = 100
    max_iter: int = 20

    def _restart(self, simulate, prior, gen, extras) -> RestartResult:
        x = torch.randn((prior.batch_size, *prior.image_shape), generator=gen).requires_grad_()
        logits = torch.randn(_target_shape(prior), generator=gen).requires_grad_()
        opt = torch.optim.LBFGS([x, logits], lr=self.lr, history_size=self.history_size, max_iter=self.max_iter)
        history: list[float] = []

        def closure():
            opt.zero_grad()
            loss = simulate(x, logits.softmax(1))
            loss.backward()
            return loss

        for step in self._steps():
            history.append(_check_finite(opt.step(closure), step))
        return RestartResult(x.detach(), logits.detach().softmax(1), history)


@ATTACKS.register("ig")
@dataclass
class InvertingGradients(InversionAttack):
    """Inverting Gradients (Geiping et al. 2020): cosine distance + total variation, Adam on the signed
    gradient, images clamped to the valid box, learning rate cut by 10x at 3/8, 5/8 and 7/8 of the steps.

    Classification labels come from analytic recovery (iDLG / bias counts) and stay fixed; segmentation
    masks are optimised jointly as per-pixel logits, initialised from the recovered class composition.

    Args:
        lr: Adam learning rate (on signed gradients).
        tv: total-variation weight.
    """

    objective: str = "cosine"
    lr: float = 0.1
    tv: float = 1e-4

    def _analytic(self, model, update, prior) -> dict:
        from .recovery import recover_labels_or_composition

        return recover_labels_or_composition(model, update, prior)

    def _init_targets(self, prior: Prior, gen: torch.Generator, extras: dict) -> torch.Tensor:
        """Logits ``[N,K,H,W]`` (or ``[N,K]``) of the starting soft targets."""
        if prior.task == "classification":
            labels = extras["labels"]
            return torch.nn.functional.one_hot(labels, prior.num_classes).float().mul(20.0)
        comp = extras["composition"].clamp(1e-4, 1.0)
        noise = 0.1 * torch.randn(_target_shape(prior), generator=gen)
        return comp.log().view(1, -1, *([1] * (len(prior.image_shape) - 1))) + noise

    def _restart(self, simulate, prior, gen, extras) -> RestartResult:
        lo, hi = box_bounds(prior)
        x = torch.randn((prior.batch_size, *prior.image_shape), generator=gen).clamp(lo, hi).requires_grad_()
        logits = self._init_targets(prior, gen, extras).requires_grad_(prior.task == "segmentation")
        variables = [x, logits] if prior.task == "segmentation" else [x]
        opt = torch.optim.Adam(variables, lr=self.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
        history: list[float] = []
        for step in self._steps():
            opt.zero_grad()
            match = simulate(x, logits.softmax(1))
            (match + self.tv * total_variation(x)).backward()
            history.append(_check_finite(match.detach(), step))
            for v in variables:
                v.grad.sign_()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
        return RestartResult(x.detach(), logits.detach().softmax(1), history)


@ATTACKS.register("seg")
@dataclass
class SegmentationInversion(InvertingGradients):
    """The segmentation attack: image and per-pixel mask logits optimised jointly.

    What differs from :class:`InvertingGradients`:

    * the matching loss averages the cosine distance **per parameter tensor** (``layer_cosine``), so the
      early encoder layers, which carry the image detail, weigh as much as the large decoder tensors;
    * the mask logits start from the class composition recovered analytically from the head's bias;
    * when the client shares BatchNorm buffers after a train-mode FedSGD step, the batch mean and
      variance of every BatchNorm input are matched (GradInversion's prior, exact here).
    """

    objective: str = "layer_cosine"
    bn: float = 1e-2
