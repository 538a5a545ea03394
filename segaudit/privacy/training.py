"""DP-SGD training (Opacus ``PrivacyEngine``) with the loop of :func:`segaudit.train.train_model`.

Example:
    >>> result = train_private(model, load_dataset("nuclei"), DPSpec(target_epsilon=8), epochs=20, batch_size=3)
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..data import split
from ..errors import SegauditError
from ..models.dp_compatible import make_private_model, quiet_opacus
from ..train import run_training
from .accounting import ACCOUNTANTS, check_delta, check_epsilon, check_sample_rate, noise_for_epsilon
from .model_fix import GRAD_SAMPLE_MODES


@dataclass(frozen=True)
class DPSpec:
    """How private training is made private. Give exactly one of ``noise_multiplier`` / ``target_epsilon``.

    Attributes:
        noise_multiplier: sigma; the Gaussian noise has std ``sigma * max_grad_norm``.
        target_epsilon: epsilon to spend over the whole run; sigma is then chosen by Opacus.
        delta: the delta of the guarantee, in (0, 1); it must be below 1 / (training images).
        max_grad_norm: C, each sample's gradient is clipped to this L2 norm (over all parameters).
        accountant: ``"rdp"`` or ``"prv"``.
        poisson: Poisson sampling (each image joins a step with probability q); the accounting assumes it.
        grad_sample_mode: Opacus per-sample gradient mode (``"hooks"`` is the fastest here).
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: Literal["rdp", "prv"] = "rdp"
    poisson: bool = True
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = "hooks"

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise SegauditError("give exactly one of noise_multiplier (sigma) or target_epsilon")
        if self.target_epsilon is not None:
            check_epsilon(self.target_epsilon)
        if self.noise_multiplier is not None and not (self.noise_multiplier >= 0
                                                      and math.isfinite(self.noise_multiplier)):
            raise SegauditError(f"noise multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        check_delta(self.delta)
        if not (self.max_grad_norm > 0):
            raise SegauditError(f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise SegauditError(f"unknown accountant {self.accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise SegauditError(f"unknown grad sample mode {self.grad_sample_mode!r}; "
                                f"use one of {', '.join(GRAD_SAMPLE_MODES)}")
        if not self.poisson:
            raise SegauditError("the accounting assumes Poisson sampling; keep poisson=True")


@dataclass
class PrivateTrainResult:
    """A DP-SGD-trained model, its privacy guarantee and its held-out quality.

    Attributes:
        train: the shared :class:`segaudit.train.TrainResult` (model, Dice, IoU, losses, settings).
        epsilon, delta: the guarantee the accountant gives the whole run.
        noise_multiplier, max_grad_norm: sigma and C.
        sample_rate: q = batch size / training images (Poisson sampling).
        steps, epochs: optimiser steps (each one accounted) and ``steps * q``.
        accountant: ``"rdp"`` or ``"prv"``.
        model_changes: how the DP model differs from the baseline (see :func:`make_private_model`).
    """

    train: object
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epochs: float
    accountant: str
    target_epsilon: float | None
    grad_sample_mode: str
    model_changes: list[str]

    @property
    def model(self) -> nn.Module:
        return self.train.model

    @property
    def dice(self) -> float:
        return self.train.dice

    @property
    def iou(self) -> float:
        return self.train.iou

    def privacy(self) -> dict:
        """The DP parameters as plain values (what ``train.json`` records under ``"dp"``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "train"}

    def summary(self) -> dict:
        return {**self.train.summary(), "dp": self.privacy()}


class _Indices(torch.utils.data.Dataset):
    """The training images as a map-style dataset of their indices (Opacus samples from it)."""

    def __init__(self, indices: list[int]):
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.tensor(self.indices[i]),)  # a tuple of tensors: Opacus builds empty batches from it


def _collate(items: list[tuple[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack([t for (t,) in items])]


def train_private(model: nn.Module, dataset, spec: DPSpec, size: int = 64, steps: int | None = None,
                  epochs: int | None = None, batch_size: int = 3, lr: float = 1e-3, loss: str = "ce",
                  holdout: float = 0.25, seed: int = 0, eval_size: int | None = None,
                  progress: bool = True) -> PrivateTrainResult:
    """DP-SGD (Opacus ``PrivacyEngine``) on random crops of the training images; Dice/IoU on held-out images.

    The privacy unit is one training image: each step, Opacus's Poisson sampler takes every training image
    with probability ``q = batch_size / N_train``; each taken image gives one augmented ``size`` px crop.
    Everything else (split, Adam, cosine schedule, crops, evaluation) is :func:`segaudit.train.train_model`'s
    loop, so a non-private baseline with the same ``steps``, ``batch_size``, ``lr`` and ``loss`` is comparable.

    Args:
        model: in train mode; BatchNorm models are converted (see :func:`make_private_model`), the
            argument itself is left untouched.
        dataset: from :func:`segaudit.data.load_dataset`.
        spec: sigma or target epsilon, delta, C, accountant.
        steps / epochs: the budget (give one); ``epochs`` = ``steps * q``. Target-epsilon mode with
            ``epochs`` calls Opacus's ``make_private_with_epsilon``.
        batch_size: the expected batch; it must divide N_train (Opacus samples at ``1/ceil(N/B)``).
        loss: ``"ce"`` (the batch Dice of ``dice_ce`` has no per-sample gradient).

    Returns:
        A :class:`PrivateTrainResult`; its model is trained (GroupNorm, eval mode).

    Raises:
        SegauditError: a model in eval mode, both or neither of steps/epochs, a batch size that does not
            divide N_train, delta >= 1/N_train, ``dice_ce``, or an epsilon that cannot be reached.
    """
    from opacus import PrivacyEngine

    _check_private_training(model, spec, loss, steps, epochs)
    train_idx, test_idx = split(dataset, holdout=holdout, seed=seed)
    n_train = len(train_idx)
    loader = _private_loader(train_idx, batch_size, spec.delta)
    q = batch_size / n_train
    steps = _total_steps(steps, epochs, len(loader))

    fixed, changes = make_private_model(model)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(fixed.parameters(), lr=lr)
    ctx = quiet_opacus()
    engine = PrivacyEngine(accountant=spec.accountant)
    common = dict(module=fixed, optimizer=opt, data_loader=loader, max_grad_norm=spec.max_grad_norm,
                  poisson_sampling=True, grad_sample_mode=spec.grad_sample_mode,
                  noise_generator=torch.Generator().manual_seed(seed))
    try:
        module, dp_opt, dp_loader = _make_private(engine, spec, common, epochs, steps, q)
        dp_loader.batch_sampler.generator = torch.Generator().manual_seed(seed + 1)

        def empty_step(_):  # nobody sampled: the step is noise only, as the accounting assumes
            for p in dp_opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)

        result = run_training(module, dataset, train_idx, test_idx, dp_opt, _sampled_batches(dp_loader), steps=steps,
                              size=size, loss=loss, seed=seed, eval_size=eval_size, progress=progress, lr=lr,
                              batch_size=batch_size, on_empty=empty_step)
        eps = float(engine.get_epsilon(spec.delta))
    finally:
        ctx.__exit__(None, None, None)
    module.remove_hooks() if hasattr(module, "remove_hooks") else None
    result.model = module._module if hasattr(module, "_module") else module
    result.model.eval()
    return PrivateTrainResult(result, eps, spec.delta, float(dp_opt.noise_multiplier), spec.max_grad_norm, q,
                              steps, steps * q, spec.accountant, spec.target_epsilon, spec.grad_sample_mode, changes)


def _check_private_training(model: nn.Module, spec: DPSpec, loss: str, steps: int | None,
                            epochs: int | None) -> None:
    """Refuse what DP-SGD training cannot do: no DPSpec, eval mode, ``dice_ce``, not one of steps/epochs."""
    if not isinstance(spec, DPSpec):
        raise SegauditError(f"spec must be a DPSpec, got {type(spec).__name__}")
    if not model.training:
        raise SegauditError("the model is in eval mode; call model.train() before private training "
                            "(Opacus computes per-sample gradients only in train mode)")
    if loss != "ce":
        raise SegauditError(f"loss {loss!r} couples the samples of a batch (batch Dice), so DP-SGD has no per-sample "
                            "gradient for it; use loss='ce'")
    if (steps is None) == (epochs is None):
        raise SegauditError("give exactly one of steps or epochs")


def _private_loader(train_idx: list[int], batch_size: int, delta: float) -> torch.utils.data.DataLoader:
    """A loader of the training indices (Opacus swaps in its Poisson sampler), refused unless the accounting
    holds: a batch size that divides N_train, and delta below 1/N_train."""
    n_train = len(train_idx)
    if not 1 <= batch_size <= n_train:
        raise SegauditError(f"batch size must be in 1..{n_train} (the training images), got {batch_size}")
    loader = torch.utils.data.DataLoader(_Indices(train_idx), batch_size=batch_size, collate_fn=_collate)
    check_sample_rate(1 / len(loader), batch_size, n_train)
    if delta >= 1 / n_train:
        raise SegauditError(f"delta {delta} is not below 1/N = {1 / n_train:.3g} for {n_train} training images: "
                            "such a delta allows leaking a whole image; use a smaller delta")
    return loader


def _total_steps(steps: int | None, epochs: int | None, per_epoch: int) -> int:
    """The number of optimiser steps: ``steps``, or ``epochs`` times the loader's batches per epoch."""
    if epochs is not None:
        if epochs < 1:
            raise SegauditError(f"epochs must be at least 1, got {epochs}")
        steps = int(epochs) * per_epoch
    elif steps < 1:
        raise SegauditError(f"steps must be at least 1, got {steps}")
    return steps


def _make_private(engine, spec: DPSpec, common: dict, epochs: int | None, steps: int, q: float):
    """``engine.make_private[_with_epsilon]``: Opacus's (module, DP optimizer, Poisson loader) for ``spec``."""
    if spec.target_epsilon is not None and epochs is not None:
        try:
            return engine.make_private_with_epsilon(
                target_epsilon=spec.target_epsilon, target_delta=spec.delta, epochs=int(epochs), **common)
        except ValueError as e:  # Opacus: "The privacy budget is too low."
            raise SegauditError(f"epsilon {spec.target_epsilon} cannot be reached in {epochs} epochs at q={q:.3g}, "
                                f"delta={spec.delta}: raise the epsilon or train fewer epochs ({e})") from None
    sigma = spec.noise_multiplier if spec.target_epsilon is None else \
        noise_for_epsilon(spec.target_epsilon, q, steps, spec.delta, spec.accountant)
    return engine.make_private(noise_multiplier=sigma, **common)


def _sampled_batches(dp_loader) -> Iterator[list[int]]:
    """The index lists Opacus's Poisson sampler draws, epoch after epoch (a list may be empty)."""
    while True:
        for (idx,) in dp_loader:
            yield idx.tolist()
