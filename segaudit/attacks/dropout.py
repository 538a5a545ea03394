"""The Dropout Inversion Attack (Scheliga, Mäder and Seeland, AAAI 2023) for segmentation models.

A client that computes its update with dropout active (``dropout`` defense) makes the update depend on
random masks the server does not see; an attacker that simulates the client without them (or with the
expected, all-ones mask) matches a different function and fails — dropout then *looks* protective. The
DIA models the stochastic client instead: it optimises the dropout masks jointly with the dummy data.

Here each mask is a tensor of logits of the features' shape ``[n, C, h, w]`` per dropout site and per
forward of the client's computation (one per FedAvg local step); the applied mask is
``sigmoid(logits) / (1 - p)``, initialised at the keep probability ``1 - p`` (i.e. the expected mask), and a
penalty ``mask_reg * mean_sites (mean(sigmoid) - (1 - p))^2`` keeps the masks' keep rate at the known
``1 - p``. Everything else is the ``seg`` attack (coarse-to-fine image and mask, signed Adam).

With ``known_masks=True`` the attacker regenerates the client's exact masks from the seed recorded in
``meta.defense`` (a server that dictates the clients' seeds); then dropout hides nothing at all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..defenses import dropout_sites, mask_sites
from ..errors import SegauditError
from ..fl import local_batches
from ..types import ClientUpdate, Prior, Reconstruction
from .base import ATTACKS, RestartResult
from .inversion import SegmentationInversion


@ATTACKS.register("dropout")
@dataclass
class DropoutInversion(SegmentationInversion):
    """``seg`` with the client's dropout masks optimised jointly with the image and mask (DIA).

    The dropout rate and sites come from ``update.meta.defense`` (the ``dropout`` defense records them);
    ``p``/``where`` override or supply them. On an update made without dropout it is the ``seg`` attack.

    Args:
        p: drop probability (``None``: from ``meta.defense``).
        where: ``"head"`` or ``"decoder"`` (``None``: from ``meta.defense``, else ``"head"``).
        known_masks: use the exact masks regenerated from the recorded seed instead of optimising them.
        mask_reg: weight of the keep-rate penalty.

    Example:
        >>> update = parse_defense("dropout:0.5").client_update(model, batch, train_mode=False)
        >>> rec = ATTACKS.create("dropout", steps=200).run(model, update, Prior.from_batch_shape(batch))
    """

    p: float | None = None
    where: str | None = None
    known_masks: bool = False
    mask_reg: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        if self.p is not None and not 0 <= self.p < 1:
            raise SegauditError(f"dropout attack: p must be in [0, 1), got {self.p}")
        if self.where not in (None, "head", "decoder"):
            raise SegauditError(f"dropout attack: where must be 'head' or 'decoder', got {self.where!r}")
        self._state: MaskState | None = None

    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        spec = update.meta.defense if update.meta.defense.get("name") == "dropout" else {}
        p = self.p if self.p is not None else spec.get("p", 0.0)
        if not p:
            return super()._run(model, update, prior)
        where = self.where or spec.get("where", "head")
        sites = (list(spec.get("sites") or dropout_sites(model, where)) if self.where is None
                 else dropout_sites(model, where))
        order = forward_order(model, sites, update, prior)
        if self.known_masks and "seed" not in spec:
            raise SegauditError("known_masks needs the client's dropout seed in update.meta.defense; "
                                "use known_masks=False to optimise the masks")
        state = MaskState(float(p), order, spec["seed"] if self.known_masks else None)
        self._state = state
        try:
            with mask_sites(model, sites, state.mask) as calls:
                state.calls = calls
                rec = super()._run(model, update, prior)
        finally:
            self._state = None
        rec.extras["dropout"] = {"p": float(p), "sites": sites, "known_masks": self.known_masks,
                                 "masks": len(order)}
        return rec

    def _joint_variables(self) -> list[torch.Tensor]:
        return [] if self._state is None else list(self._state.logits.values())

    def _batchable(self) -> bool:
        return self._state is None  # the masks hook into the model's forward, one restart at a time

    def run_restarts(self, loss, prior, gens, extras) -> list[RestartResult]:
        state = self._state
        if state is None:
            return super().run_restarts(loss, prior, gens, extras)
        state.start(gens[0])

        def loss_with_masks(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            state.reset()
            state.active = True
            try:
                value = loss(images, targets)
            finally:
                state.active = False
            return value + self.mask_reg * state.penalty() if state.logits else value

        return super().run_restarts(loss_with_masks, prior, gens, extras)


class MaskState:
    """The attacker's dropout masks, one per (site, forward call), exact or as optimised logits."""

    def __init__(self, p: float, order: list[tuple[str, int, torch.Size]], seed: int | None):
        self.keep = 1.0 - p
        self.order = order
        self.calls: dict[str, int] = {}
        self.active = False  # masks apply inside the simulated client update only
        self.logits: dict[tuple[str, int], torch.Tensor] = {}
        self.exact: dict[tuple[str, int], torch.Tensor] = {}
        if seed is not None:  # the client's draws, in its order: forward call, then site in firing order
            generator = torch.Generator().manual_seed(int(seed))
            for site, call, shape in order:
                self.exact[(site, call)] = (torch.rand(shape, generator=generator) < self.keep).float() / self.keep

    def start(self, gen: torch.Generator) -> None:
        """Fresh mask logits for a restart: the keep probability plus a little noise."""
        if self.exact:
            return
        base = math.log(self.keep / (1 - self.keep)) if self.keep < 1 else 10.0
        self.logits = {(site, call): (base + 0.1 * torch.randn(shape, generator=gen)).requires_grad_()
                       for site, call, shape in self.order}

    def reset(self) -> None:
        for site in self.calls:
            self.calls[site] = 0

    def mask(self, site: str, call: int, shape: torch.Size) -> torch.Tensor:
        """The mask of one site and forward; outside a simulation (e.g. analytic recovery) the expected mask 1."""
        if not self.active:
            return torch.ones(())
        key = (site, call)
        if key in self.exact:
            return self.exact[key]
        if key not in self.logits:
            raise SegauditError(f"dropout attack: no mask for site {site!r}, forward {call}; the update's "
                                "protocol does not match the client's computation")
        return self.logits[key].sigmoid() / self.keep

    def penalty(self) -> torch.Tensor:
        """Mean over masks of ``(keep rate - (1 - p))^2``."""
        return sum((v.sigmoid().mean() - self.keep) ** 2 for v in self.logits.values()) / len(self.logits)


@torch.no_grad()
def forward_order(model: nn.Module, sites: list[str], update: ClientUpdate, prior: Prior
                   ) -> list[tuple[str, int, torch.Size]]:
    """``(site, call, feature shape)`` in the order the client's hooks fire, from a dry run in eval mode
    (eval keeps the attacker's BatchNorm buffers untouched; the shapes are the same)."""
    was_training = model.training
    model.eval()
    order: list[tuple[str, int, torch.Size]] = []

    def record(site: str, call: int, shape: torch.Size) -> torch.Tensor:
        order.append((site, call, shape))
        return torch.ones(())

    meta = update.meta
    sizes = [len(idx) for idx in local_batches(prior.batch_size, meta)] if meta.mode == "fedavg" else [prior.batch_size]
    try:
        with mask_sites(model, sites, record):
            for n in sizes:
                model(torch.zeros((n, *prior.image_shape)))
    finally:
        model.train(was_training)
    return order
