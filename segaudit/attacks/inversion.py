"""Optimisation-based gradient inversion: DLG, Inverting Gradients, and the segmentation attack.

Each restart optimises dummy images ``[N,C,H,W]`` (and soft labels/masks) until the update the attacker
simulates for them matches the shared one; the restart with the lowest matching loss wins.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SegauditError
from ..progress import progress
from ..types import ClientUpdate, Prior, Reconstruction
from .adaptive import Adaptation, adapt_to_defense
from .base import (
    ATTACKS,
    COMBINE,
    Attack,
    RestartResult,
    best_restart,
    box_bounds,
    cosine_decay,
    resize,
    total_variation,
)
from .curvature import relu_curvature
from .objectives import GradientMatcher, simulate_update
from .persample import GroupedMatcher, unsupported
from .priors import BatchNormPrior
from .recovery import recover_labels_or_composition
from .statistics import invert_statistics


class MatchingLoss:
    """The matching loss of R restarts' dummy batches: ``images [R,N,C,H,W]``, soft ``targets [R,N,K,...]``
    -> ``[R]``, all R in one batched pass when :func:`~segaudit.attacks.persample.unsupported` allows it
    (eval-mode FedSGD, cosine objectives), else one simulated client update per restart.

    Args:
        model: the attacker's frozen copy of the global model.
        update: the shared update (its metadata says how the client computed it).
        matcher: the objective and the shared tensors to match.
        bn: weight of the BatchNorm-statistics prior (train-mode updates that reveal batch statistics).
        batched: allow the batched pass.
        relu_curvature: temperature scale of the surrogate ReLU curvature the loss's gradient sees
            (:func:`~segaudit.attacks.curvature.relu_curvature`; 0 = exact double backpropagation).
    """

    def __init__(self, model: nn.Module, update: ClientUpdate, matcher: GradientMatcher, bn: float = 0.0,
                 batched: bool = True, relu_curvature: float = 0.0):
        self.model, self.matcher, self.meta = model, matcher, update.meta
        self.relu_curvature = relu_curvature
        wanted = matcher.names if update.meta.mode == "fedsgd" else update.tensors  # FedAvg unrolls all weights
        self.params = {n: p.detach() for n, p in model.named_parameters() if n in wanted}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.bn_prior = BatchNormPrior.from_update(model, update) if bn > 0 else None
        self.bn = bn
        self.sequential_because = unsupported(model, matcher, update.meta) if batched else "not batchable"
        self.grouped = (GroupedMatcher(model, self.params, self.buffers, matcher, update.meta)
                        if self.sequential_because is None else None)

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with relu_curvature(self.relu_curvature):
            if self.grouped is not None:
                return self.grouped(images, targets)
            return torch.stack([self._one(x, t) for x, t in zip(images, targets)])

    def _one(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = self.matcher(simulate_update(self.model, self.params, self.buffers, images, targets, self.meta))
        return loss if self.bn_prior is None else loss + self.bn * self.bn_prior.distance()

    def close(self) -> None:
        if self.bn_prior is not None:
            self.bn_prior.remove()


class RestartTracker:
    """Loss histories, best iterates and NaN abandonment of R restarts optimised together.

    Args:
        count: R.
        keep_best: return each restart's iterate with the lowest matching loss (else the last one).
    """

    def __init__(self, count: int, keep_best: bool = False):
        self.histories: list[list[float]] = [[] for _ in range(count)]
        self.status = ["ok"] * count
        self.alive = torch.ones(count, dtype=torch.bool)
        self.keep_best = keep_best
        self.best_loss = torch.full((count,), math.inf)
        self.best: tuple[torch.Tensor, ...] = ()

    def record(self, step: int, losses: torch.Tensor, *iterate: torch.Tensor) -> torch.Tensor:
        """Log step ``step``'s losses ``[R]`` (and the iterate's tensors ``[R,...]``); returns the alive mask."""
        losses = losses.detach()
        for i, value in enumerate(losses.tolist()):
            if not self.alive[i]:
                continue
            if math.isfinite(value):
                self.histories[i].append(value)
            else:
                self.alive[i] = False
                self.status[i] = f"abandoned: matching loss became {value} at step {step}"
        if self.keep_best:
            better = self.alive & (losses < self.best_loss)
            self.best_loss = torch.where(better, losses, self.best_loss)
            if not self.best:
                self.best = tuple(t.detach() for t in iterate)
            else:
                self.best = tuple(torch.where(better.view(-1, *[1] * (t.dim() - 1)), t.detach(), b)
                                  for t, b in zip(iterate, self.best))
        return self.alive

    def results(self, images: torch.Tensor, targets: torch.Tensor) -> list[RestartResult]:
        """One :class:`RestartResult` per restart from the final ``images``/soft ``targets`` ``[R,...]`` (or
        the best iterates, whose loss then ends the history)."""
        if self.keep_best and self.best:
            images, targets = self.best
        out = []
        for i, history in enumerate(self.histories):
            if not self.alive[i]:
                out.append(RestartResult(None, None, [], self.status[i]))
                continue
            if self.keep_best:
                history = [*history, float(self.best_loss[i])]
            out.append(RestartResult(images[i], targets[i], history))
        return out


@dataclass
class InversionAttack(Attack):
    """Shared machinery: restarts with their own seeds, run together in one batched pass where the client's
    computation allows it (:class:`MatchingLoss`), NaN abandonment, best-restart choice.

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
        restart_batch: the most restarts optimised together in one batched pass (memory grows with it).
        combine: how the restarts make the result: ``"best"``, the restart with the lowest matching loss (as in
            the papers), or ``"median"``, their pixel-wise median (:func:`~segaudit.attacks.base.median_restart`).
        relu_curvature: let the loss's gradient see ReLU units switch, through a sigmoid surrogate of ReLU's
            second derivative with temperature ``relu_curvature * std`` of each ReLU input (loss values stay
            exact; :mod:`~segaudit.attacks.curvature`); 0 = plain double backpropagation, as in the papers.
        show_progress: a progress bar over steps.
        callback: ``callback(step, images)`` after every step (e.g. to plot progress), once per restart; it
            gets that restart's current images ``[N,C,H,W]`` only.
    """

    steps: int = 300
    restarts: int = 1
    seed: int = 0
    objective: str = "l2"
    layers: tuple[str, ...] | None = None
    bn: float = 0.0
    adaptive: bool = True
    restart_batch: int = 8
    combine: str = "best"
    relu_curvature: float = 0.0
    show_progress: bool = False
    callback: Callable[[int, torch.Tensor], None] | None = None

    def __post_init__(self):
        if self.steps < 1 or self.restarts < 1 or self.restart_batch < 1:
            raise SegauditError(f"an attack needs at least 1 step and 1 restart, got steps={self.steps}, "
                                f"restarts={self.restarts}, restart_batch={self.restart_batch}")
        if self.relu_curvature is not None and not 0 <= self.relu_curvature < math.inf:
            raise SegauditError(f"relu_curvature must be a finite number >= 0, got {self.relu_curvature}")
        if self.combine not in COMBINE:
            raise SegauditError(f"unknown combine {self.combine!r}; use one of {', '.join(COMBINE)}")

    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        adaptation = adapt_to_defense(update) if self.adaptive else Adaptation()
        objective, curvature = self.loss_settings(prior)
        matcher = GradientMatcher(update.tensors, objective, self.layers, weights=adaptation.weights,
                                  support_only=adaptation.support_only)
        loss = MatchingLoss(model, update, matcher, self.bn, batched=self._batchable(), relu_curvature=curvature)
        extras = {**self._analytic(model, update, prior), "adaptation": adaptation.summary(),
                  "objective": objective, "relu_curvature": curvature, "combine": self.combine,
                  "restarts_batched": loss.sequential_because or "yes"}
        size = self.restart_batch if loss.grouped is not None else 1
        results: list[RestartResult] = []
        try:
            for first in range(0, self.restarts, size):
                seeds = range(self.seed + first, self.seed + min(first + size, self.restarts))
                results += self.run_restarts(loss, prior, [torch.Generator().manual_seed(s) for s in seeds], extras)
        finally:
            loss.close()
        return self._combine(results, prior.task, extras)

    def _combine(self, results: list[RestartResult], task: str, extras: dict) -> Reconstruction:
        """The reconstruction made of the restarts' results (:data:`~segaudit.attacks.base.COMBINE`)."""
        return COMBINE[self.combine](results, task, extras)

    def loss_settings(self, prior: Prior) -> tuple[str, float]:
        """The objective and surrogate ReLU curvature used for an update of ``prior.batch_size`` images."""
        return self.objective, self.relu_curvature

    def _batchable(self) -> bool:
        """Whether restarts may share one batched pass (not for optimisers that couple them, e.g. L-BFGS)."""
        return True

    def _analytic(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> dict:
        """Closed-form facts recovered before optimising (labels, class composition); none by default."""
        return {}

    def run_restarts(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], prior: Prior,
                     gens: list[torch.Generator], extras: dict) -> list[RestartResult]:
        """Optimise one restart per generator together; ``loss(images [R,N,...], targets [R,N,...]) -> [R]``."""
        raise NotImplementedError

    def _steps(self):
        return progress(range(self.steps), type(self).__name__, total=self.steps, enabled=self.show_progress)

    def _report(self, step: int, images: torch.Tensor, size: tuple[int, int] | None = None) -> None:
        """Hand each restart's current images (resized to ``size``) to the callback, if there is one."""
        if self.callback:
            for restart in resize(images.detach(), size or tuple(images.shape[-2:])):
                self.callback(step, restart)


def _target_shape(prior: Prior) -> tuple[int, ...]:
    n, k = prior.batch_size, prior.num_classes
    return (n, k, *prior.image_shape[1:]) if prior.task == "segmentation" else (n, k)


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

    def _batchable(self) -> bool:
        return False  # L-BFGS's line search and history would couple restarts optimised together

    def run_restarts(self, loss, prior, gens, extras) -> list[RestartResult]:
        x = torch.stack([torch.randn((prior.batch_size, *prior.image_shape), generator=g) for g in gens])
        logits = torch.stack([torch.randn(_target_shape(prior), generator=g) for g in gens])
        x.requires_grad_()
        logits.requires_grad_()
        opt = torch.optim.LBFGS([x, logits], lr=self.lr, history_size=self.history_size, max_iter=self.max_iter)
        track = RestartTracker(len(gens))

        def closure():
            opt.zero_grad()
            value = loss(x, logits.softmax(2)).sum()
            value.backward()
            return value

        for step in self._steps():
            if not track.record(step, opt.step(closure).view(1)).all():
                break
            self._report(step, x)
        return track.results(x.detach(), logits.detach().softmax(2))


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
        return recover_labels_or_composition(model, update, prior)

    def _init_targets(self, prior: Prior, gen: torch.Generator, extras: dict) -> torch.Tensor:
        """Logits ``[N,K,H,W]`` (or ``[N,K]``) of the starting soft targets."""
        if prior.task == "classification":
            labels = extras["labels"]
            return torch.nn.functional.one_hot(labels, prior.num_classes).float().mul(20.0)
        comp = extras["composition"].clamp(1e-4, 1.0)
        noise = 0.1 * torch.randn(_target_shape(prior), generator=gen)
        return comp.log().view(1, -1, *([1] * (len(prior.image_shape) - 1))) + noise

    def run_restarts(self, loss, prior, gens, extras) -> list[RestartResult]:
        lo, hi = box_bounds(prior)
        x = torch.stack([torch.randn((prior.batch_size, *prior.image_shape), generator=g).clamp(lo, hi) for g in gens])
        logits = torch.stack([self._init_targets(prior, g, extras) for g in gens])
        x.requires_grad_()
        logits.requires_grad_(prior.task == "segmentation")
        variables = [x, logits] if prior.task == "segmentation" else [x]
        opt = torch.optim.Adam(variables, lr=self.lr)
        sched = torch.optim.lr_scheduler.MultiStepLR(
            opt, milestones=[int(self.steps * f) for f in (3 / 8, 5 / 8, 7 / 8)], gamma=0.1)
        track = RestartTracker(len(gens))
        for step in self._steps():
            opt.zero_grad()
            match = loss(x, logits.softmax(2))
            alive = track.record(step, match)
            if not alive.any():
                break
            torch.where(alive, match + self.tv * total_variation(x), 0.0).sum().backward()
            _signed(variables, alive)
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            self._report(step, x)
        return track.results(x.detach(), logits.detach().softmax(2))


@ATTACKS.register("seg")
@dataclass
class SegmentationInversion(InvertingGradients):
    """The segmentation attack: image and per-pixel mask logits optimised jointly, coarse to fine.

    What differs from :class:`InvertingGradients`, each measured to matter on smp U-Nets:

    * the matching loss averages the cosine distance **per parameter tensor** (``layer_cosine``), so every
      tensor counts whatever its size; for one image and at least 200 steps, its log (``layer_log_cosine``),
      so every tensor counts by its relative change, and the loss's gradient sees ReLU units switch
      (:mod:`~segaudit.attacks.curvature`; exact double backpropagation cannot, and then raises the loss
      again near the true image);
    * image and mask logits live on a coarse grid first (1/8, 1/4, 1/2, then full resolution, upsampled
      bilinearly to the client's size), which finds the large structures before the noise-prone detail;
    * the mask logits start from the class composition recovered analytically from the head's bias;
    * signed Adam with a cosine learning-rate decay, scaled down in the fine stages; the iterate with the
      lowest matching loss is kept;
    * with several restarts, the result is their pixel-wise median (``combine="median"``), not the restart
      with the lowest matching loss: their errors partly cancel;
    * when a train-mode client shares its BatchNorm buffers, they reveal the batch mean and variance of
      every BatchNorm input; the images are then found by matching those alone
      (:mod:`~segaudit.attacks.statistics`: train-mode gradients are chaotic in the images), and the mask
      logits by gradient matching with the images fixed; with several restarts, the result is the restart whose
      statistics match best.

    Args:
        objective, relu_curvature: ``None`` = chosen by batch size and budget, as measured best on the
            bundled data (``bench/attack_quality.py``): ``layer_log_cosine`` with curvature 0.05 for one
            image and at least 200 steps; else ``layer_cosine`` with exact double backpropagation (with
            batches, or within 60-100 steps, the single-image loss cost PSNR).
        stages: ``(downscale, end fraction of the steps, lr scale)`` per stage.
        statistics_steps: steps of the statistics inversion (train-mode clients that share their BatchNorm
            buffers); ``None`` = 15 x ``steps`` (each costs a forward and a backward pass, about a tenth of a
            matching step); 0 matches images by their gradients there too.
    """

    steps: int = 200
    combine: str = "median"
    objective: str | None = None
    relu_curvature: float | None = None
    tv: float = 1e-3
    bn: float = 1e-2
    stages: tuple[tuple[int, float, float], ...] = ((8, 0.15, 1.0), (4, 0.45, 1.0), (2, 0.75, 0.2), (1, 1.0, 0.1))
    statistics_steps: int | None = None

    def loss_settings(self, prior: Prior) -> tuple[str, float]:
        single = prior.batch_size == 1 and self.steps >= 200
        objective = self.objective or ("layer_log_cosine" if single else "layer_cosine")
        curvature = self.relu_curvature if self.relu_curvature is not None else (0.05 if single else 0.0)
        return objective, curvature

    def _stage_at(self, step: int) -> tuple[int, float]:
        """``(downscale, lr scale)`` of the stage that ``step`` falls in."""
        for down, end, lr_scale in self.stages:
            if step < end * self.steps:
                return down, lr_scale
        return self.stages[-1][0], self.stages[-1][2]

    def _joint_variables(self) -> list[torch.Tensor]:
        """Extra leaf tensors optimised jointly with the image and mask (e.g. dropout masks); none here."""
        return []

    def run_restarts(self, loss, prior, gens, extras) -> list[RestartResult]:
        n, (c, h, w) = prior.batch_size, prior.image_shape
        lo, hi = box_bounds(prior)
        fixed = self._images_from_statistics(loss, prior, gens, extras)
        x = fixed if fixed is not None else torch.stack([lo + torch.rand((n, c, h, w), generator=g) * (hi - lo)
                                                         for g in gens])
        m = torch.stack([self._init_targets(prior, g, extras) for g in gens])
        track = RestartTracker(len(gens), keep_best=True)
        stage = None
        for step in self._steps():
            down, lr_scale = self._stage_at(step)
            if down != stage:  # a finer grid: carry the current estimate over, with a fresh optimiser
                stage, size = down, (max(h // down, 1), max(w // down, 1))
                if fixed is None:
                    x = resize(x.detach(), size).requires_grad_()
                m = resize(m.detach(), size).requires_grad_()
                opt = torch.optim.Adam([m, *([x] if fixed is None else []), *self._joint_variables()], lr=self.lr)
            for group in opt.param_groups:
                group["lr"] = self.lr * lr_scale * cosine_decay(step, self.steps)
            opt.zero_grad()
            x_full, probs = resize(x, (h, w)), resize(m, (h, w)).softmax(2)
            match = loss(x_full, probs)
            alive = track.record(step, match, x_full, probs)
            if not alive.any():
                break
            torch.where(alive, match + self.tv * total_variation(x_full), 0.0).sum().backward()
            _signed([x, m], alive)
            _signed(self._joint_variables())
            opt.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            self._report(step, x, (h, w))
        return track.results(x_full.detach(), probs.detach())

    def _images_from_statistics(self, loss: Callable, prior: Prior, gens: list[torch.Generator],
                                extras: dict) -> torch.Tensor | None:
        """Each restart's images ``[R,N,C,H,W]`` from the client's BatchNorm statistics
        (:func:`~segaudit.attacks.statistics.invert_statistics`), or ``None`` where the update reveals none."""
        steps = 15 * self.steps if self.statistics_steps is None else self.statistics_steps
        statistics = getattr(loss, "bn_prior", None)  # a plain callable loss has none
        if statistics is None or not loss.meta.train_mode or steps == 0:
            return None
        found = [invert_statistics(loss.model, statistics, prior, g, steps) for g in gens]
        extras["images_from"] = f"BatchNorm statistics ({steps} steps; masks by gradient matching)"
        extras.setdefault("statistics_distance", []).extend(history[-1] for _, history in found)
        return torch.stack([images for images, _ in found])

    def _combine(self, results: list[RestartResult], task: str, extras: dict) -> Reconstruction:
        """With images from the statistics, the restart whose statistics match best: the final distance ranks
        the starts as their PSNR does, and a median would blend a good start with bad ones."""
        distances = extras.get("statistics_distance")
        if not distances or len(results) < 2:
            return super()._combine(results, task, extras)
        rec = best_restart([results[distances.index(min(distances))]], task, extras)
        rec.restart_losses, rec.restart_status = [r.loss for r in results], [r.status for r in results]
        extras["combine"] = "lowest statistics distance"
        return rec


def _signed(variables: list[torch.Tensor], alive: torch.Tensor | None = None) -> None:
    """Signed gradients (Inverting Gradients' Adam on signs). With ``alive [R]`` the variables are stacked by
    restart ``[R, ...]`` and the rows of abandoned restarts stay still."""
    for v in variables:
        if v.grad is not None:
            v.grad.sign_()
            if alive is not None:
                v.grad[~alive] = 0
