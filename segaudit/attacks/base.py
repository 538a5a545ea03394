"""The attack interface: ``Attack.run(model, update, prior) -> Reconstruction``.

The threat-model boundary is a rule of the code: an attack receives the model, the shared
``ClientUpdate`` and an explicit ``Prior`` — never the client's batch.
"""
from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SegauditError
from ..fl import check_update
from ..metrics import match_order
from ..registry import Registry
from ..types import ClientUpdate, Prior, Reconstruction

#: The attackers (``Attack.threat``): the protocol's honest-but-curious server, and the opt-in worst case of a
#: server that alters the model it sends (the verdict reads only the first; the report shows the second apart).
HONEST_SERVER, MALICIOUS_SERVER = "honest-but-curious server", "malicious server"


class Attack(ABC):
    """Base class of every attack. Subclasses implement :meth:`_run` on validated inputs.

    ``threat`` names the attacker (:data:`HONEST_SERVER`): an honest-but-curious server runs the protocol as
    agreed and attacks the model it was going to send anyway; a malicious server (:data:`MALICIOUS_SERVER`)
    alters that model first (:meth:`send`).
    """

    threat = HONEST_SERVER

    def send(self, model: nn.Module, prior: Prior, public: torch.Tensor | None = None) -> nn.Module:
        """The model the server sends the client: ``model`` itself, unless the attacker is malicious.

        Args:
            public: ``[M,C,H,W]`` normalised images the server holds (never the client's).
        """
        return model

    def run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        """Attack ``update`` of ``model``; the model itself is never modified.

        Raises:
            SegauditError: an update that does not fit the model (naming the first mismatched tensor),
                NaN/Inf in the update, or a prior that contradicts the update.
        """
        check_update(model, update)
        if prior.batch_size != update.meta.batch_size:
            raise SegauditError(f"the prior says {prior.batch_size} images but the update was made from "
                                f"{update.meta.batch_size}; give the update's batch size")
        attacker_model = copy.deepcopy(model)
        for p in attacker_model.parameters():
            p.requires_grad_(False)
        return self._run(attacker_model, update, prior)

    @abstractmethod
    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        ...


ATTACKS: Registry[Attack] = Registry("attack")


@dataclass
class RestartResult:
    """One restart's outcome: final tensors, matching loss per step and why it stopped."""

    images: torch.Tensor | None
    targets: torch.Tensor | None  # [N,K,H,W] / [N,K] soft targets (probabilities)
    history: list[float] = field(default_factory=list)
    status: str = "ok"

    @property
    def loss(self) -> float:
        return self.history[-1] if self.history and self.status == "ok" else math.nan


def best_restart(restarts: list[RestartResult], task: str, extras: dict | None = None) -> Reconstruction:
    """The restart with the lowest final matching loss; ``"no valid reconstruction"`` if none finished.

    Soft targets become hard masks ``[N,H,W]`` (segmentation) or labels ``[N]`` (classification).
    """
    losses = [r.loss for r in restarts]
    valid = [i for i, loss in enumerate(losses) if math.isfinite(loss)]
    rec = Reconstruction(images=None, restart_losses=losses, restart_status=[r.status for r in restarts],
                         extras=extras or {})
    if not valid:
        rec.status = "no valid reconstruction"
        return rec
    best = restarts[min(valid, key=lambda i: losses[i])]
    rec.images, rec.history = best.images.detach(), best.history
    hard = best.targets.detach().argmax(1)
    if task == "segmentation":
        rec.masks = hard
    else:
        rec.labels = hard
    return rec


def median_restart(restarts: list[RestartResult], task: str, extras: dict | None = None) -> Reconstruction:
    """The pixel-wise median of the finished restarts' images and soft targets (a consensus), or the best
    restart when fewer than two finished.

    Restarts reach different local optima whose errors partly cancel: on the bundled nuclei crop (untrained
    U-Net, 200 steps) the median of 8 restarts scored 28.6 dB where the best single restart scored 26.5 dB,
    although its matching loss is higher. The order of the images within a batch is arbitrary, so each
    restart's batch is first put in the order of the best restart's (one-to-one by least MSE).
    """
    rec = best_restart(restarts, task, extras)
    done = [r for r in restarts if math.isfinite(r.loss)]
    if len(done) < 2:
        return rec
    order = [torch.as_tensor(match_order(r.images, rec.images)) for r in done]
    rec.images = torch.stack([r.images[o] for r, o in zip(done, order)]).quantile(0.5, dim=0)
    hard = torch.stack([r.targets[o] for r, o in zip(done, order)]).quantile(0.5, dim=0).argmax(1)
    if task == "segmentation":
        rec.masks = hard
    else:
        rec.labels = hard
    return rec


COMBINE = {"best": best_restart, "median": median_restart}


def box_bounds(prior: Prior) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel bounds ``[1,C,1,1]`` of images in [0, 1] after the client's normalisation."""
    c = prior.image_shape[0]
    mean = torch.tensor(prior.mean if len(prior.mean) == c else prior.mean * c).view(1, c, 1, 1)
    std = torch.tensor(prior.std if len(prior.std) == c else prior.std * c).view(1, c, 1, 1)
    return (0 - mean) / std, (1 - mean) / std


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between neighbouring pixels, per restart: ``[R,N,C,H,W]`` -> ``[R]``."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(1).mean(1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(1).mean(1)
    return dx + dy


def cosine_decay(step: int, steps: int) -> float:
    """The learning-rate factor at ``step`` of ``steps``: a cosine from 1 down to 0.01."""
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / steps))


def resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-downsample or bilinearly upsample ``[..., h, w]`` to ``size`` (identity when equal)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    mode = "area" if t.shape[-1] > size[-1] else "bilinear"
    out = F.interpolate(t.flatten(0, -4), size=size, mode=mode,
                        **({"align_corners": False} if mode == "bilinear" else {}))
    return out.unflatten(0, t.shape[:-3])
