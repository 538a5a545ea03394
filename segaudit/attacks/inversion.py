"""Optimisation-based gradient inversion: DLG, Inverting Gradients, and the segmentation attack.

Each restart optimises dummy images ``[N,C,H,W]`` (and soft labels/masks) until the update the attacker
simulates for them matches the shared one; the restart with the lowest matching loss wins.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegauditError
from ..progress import progress
from ..types import ClientUpdate, Prior, Reconstruction
from .base import ATTACKS, Attack, RestartResult, best_restart, box_bounds, total_variation
from .adaptive import Adaptation, adapt_to_defense
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
        adaptive: read ``update.meta.defense`` and adapt the matching loss to the defense the client applied
            (see :func:`~segaudit.attacks.adaptive.adapt_to_defense`); ``False`` is the naive attacker.
        show_progress: a progress bar over steps.
        callback: ``callback(step, images)`` after every step (e.g. to plot progress); it gets the attack's
            current images ``[N,C,H,W]`` only.
    """

    steps: int = 300
    restarts: int = 1
    seed: int = 0
    objective: str = "l2"
    layers: tuple[str, ...] | None = None
    bn: float = 0.0
    adaptive: bool = True
    show_progress: bool = False
    callback: Callable[[int, torch.Tensor], None] | None = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1:
            raise SegauditError(f"an attack needs at least 1 step and 1 restart, got steps={self.steps}, "
                                f"restarts={self.restarts}")

    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        adaptation = adapt_to_defense(update) if self.adaptive else Adaptation()
        matcher = GradientMatcher(update.tensors, self.objective, self.layers, weights=adaptation.weights,
                                  support_only=adaptation.support_only)
        params = {n: p.detach() for n, p in model.named_parameters() if n in update.tensors}
        buffers = {n: b.detach() for n, b in model.named_buffers()}
        bn_prior = BatchNormPrior.from_update(model, update) if self.bn > 0 else None

        def simulate(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            loss = matcher(simulate_update(model, params, buffers, images, targets, update.meta))
            return loss if bn_prior is None else loss + self.bn * bn_prior.distance()

        results, extras = [], {**self._analytic(model, update, prior), "adaptation": adaptation.summary()}
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
            if self.callback:
                self.callback(step, x.detach())
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
            if self.callback:
                self.callback(step, x.detach())
        return RestartResult(x.detach(), logits.detach().softmax(1), history)


@ATTACKS.register("seg")
@dataclass
class SegmentationInversion(InvertingGradients):
    """The segmentation attack: image and per-pixel mask logits optimised jointly, coarse to fine.

    What differs from :class:`InvertingGradients`, each measured to matter on smp U-Nets:

    * the matching loss averages the cosine distance **per parameter tensor** (``layer_cosine``), so the
      early encoder layers, which carry the image detail, weigh as much as the large decoder tensors;
    * image and mask logits live on a coarse grid first (1/8, 1/4, 1/2, then full resolution, upsampled
      bilinearly to the client's size), which finds the large structures before the noise-prone detail;
    * the mask logits start from the class composition recovered analytically from the head's bias;
    * signed Adam with a cosine learning-rate decay, scaled down in the fine stages; the iterate with the
      lowest matching loss is kept;
    * when the client shares BatchNorm buffers after a train-mode FedSGD step, the batch mean and
      variance of every BatchNorm input are matched (GradInversion's prior, exact here).

    Args:
        stages: ``(downscale, end fraction of the steps, lr scale)`` per stage.
    """

    steps: int = 200
    objective: str = "layer_cosine"
    tv: float = 1e-3
    bn: float = 1e-2
    stages: tuple[tuple[int, float, float], ...] = ((8, 0.15, 1.0), (4, 0.45, 1.0), (2, 0.75, 0.2), (1, 1.0, 0.1))

    def _stage_at(self, step: int) -> tuple[int, float]:
        """``(downscale, lr scale)`` of the stage that ``step`` falls in."""
        for down, end, lr_scale in self.stages:
            if step < end * self.steps:
                return down, lr_scale
        return self.stages[-1][0], self.stages[-1][2]

    def _joint_variables(self) -> list[torch.Tensor]:
        """Extra leaf tensors optimised jointly with the image and mask (e.g. dropout masks); none here."""
        return []

    def _restart(self, simulate, prior, gen, extras) -> RestartResult:
        n, (c, h, w) = prior.batch_size, prior.image_shape
        lo, hi = box_bounds(prior)
        x = (lo + torch.rand((n, c, h, w), generator=gen) * (hi - lo)).requires_grad_()
        m = self._init_targets(prior, gen, extras).requires_grad_()
        history: list[float] = []
        best = (math.inf, x.detach(), m.detach())
        stage = None
        for step in self._steps():
            down, lr_scale = self._stage_at(step)
            if down != stage:  # a finer grid: carry the current estimate over, with a fresh optimiser
                stage, size = down, (max(h // down, 1), max(w // down, 1))
                x = _resize(x.detach(), size).requires_grad_()
                m = _resize(m.detach(), size).requires_grad_()
                opt = torch.optim.Adam([x, m, *self._joint_variables()], lr=self.lr)
            for group in opt.param_groups:
                group["lr"] = self.lr * lr_scale * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / self.steps)))
            opt.zero_grad()
            x_full, m_full = _resize(x, (h, w)), _resize(m, (h, w))
            match = simulate(x_full, m_full.softmax(1))
            (match + self.tv * total_variation(x_full)).backward()
            value = _check_finite(match.detach(), step)
            history.append(value)
            if value < best[0]:
                best = (value, x_full.detach(), m_full.detach())
            for v in (x, m, *self._joint_variables()):
                if v.grad is not None:
                    v.grad.sign_()
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            if self.callback:
                self.callback(step, _resize(x.detach(), (h, w)))
        history.append(best[0])  # the restart's loss is that of the iterate it returns
        return RestartResult(best[1], best[2].softmax(1), history)


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample or bilinearly upsample ``[N,C,h,w]`` to ``size`` (identity when equal)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    mode = "area" if t.shape[-1] > size[-1] else "bilinear"
    return F.interpolate(t, size=size, mode=mode, **({"align_corners": False} if mode == "bilinear" else {}))
