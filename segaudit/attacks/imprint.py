"""The malicious-server worst case: a trap block the server puts in front of the model it sends.

A separate, opt-in threat model (``Attack.threat``): the server no longer runs the protocol honestly, it alters
the architecture. After Fowl et al. 2022 ("Robbing the Fed"), the block is

    y = x + gain * v * sum_i relu(q . x - t_i),

with one query ``q`` (a fixed random direction over the ``D = C*H*W`` pixels) shared by all ``n`` rows,
increasing thresholds ``t_0 < ... < t_{n-1}`` and one fixed direction ``v`` back to the input, so the rest of
the network sees the image almost unchanged. Each sample k reaches every row whose threshold its query value
exceeds, always with the same upstream scalar ``s_k = gain * v . dL/dy_k``, hence

    dL/dW_i = sum_{k: q.x_k > t_i} s_k x_k,   dL/db_i = sum_{k: q.x_k > t_i} s_k,

and the difference of two neighbouring rows holds only the samples whose query falls between their thresholds.
A sample alone in its bin comes back exactly: ``x_k = (dW_i - dW_{i+1}) / (db_i - db_{i+1})``. The thresholds
sit at quantiles of the query over the attacker's public images, so bins are about equally likely; with n bins
a sample of a batch of N is alone with probability about ``(1 - 1/n)^(N-1)``.

FedAvg deltas work the same (``-lr`` times the sum of each step's gradients; the ratio cancels both), nearly
exactly as long as the local steps do not move a sample across a threshold; the rows' scale (:data:`SCALE`)
trades that drift against the float32 resolution of the delta ``w_after - w_before``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SegauditError
from ..types import ClientUpdate, Prior, Reconstruction
from .base import ATTACKS, MALICIOUS_SERVER, Attack, box_bounds
from .masks import masks_for
from .recovery import estimate_composition

#: Name of the trap block inside the model the malicious server sends.
BLOCK = "imprint"
#: Scale of the trap's rows (see :func:`trap_model`).
SCALE = 0.1


class ImprintBlock(nn.Module):
    """The trap: ``[N,C,H,W] -> [N,C,H,W]``, ``x + gain * v * sum_i relu(q . x - t_i)``.

    Args:
        query: ``[D]`` the query every row starts with.
        thresholds: ``[n]`` increasing thresholds on ``q . x`` (the biases are their negatives).
        back: ``[D]`` the direction back to the input, a fixed buffer.
        gain: scale of the perturbation of the input.
    """

    def __init__(self, query: torch.Tensor, thresholds: torch.Tensor, back: torch.Tensor, gain: float = 1e-3):
        super().__init__()
        self.weight = nn.Parameter(query.view(1, -1).repeat(len(thresholds), 1).clone())  # [n, D]
        self.bias = nn.Parameter(-thresholds.clone())  # [n]
        self.register_buffer("back", back.view(-1) * gain)  # [D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x.flatten(1) @ self.weight.T + self.bias)  # [N, n]
        return x + (h.sum(1, keepdim=True) * self.back).view_as(x)


class TrappedModel(nn.Module):
    """The model a malicious server sends: ``model(imprint(x))``. Carries the model's ``segaudit_spec``."""

    def __init__(self, model: nn.Module, block: ImprintBlock):
        super().__init__()
        self.imprint, self.model = block, model
        if hasattr(model, "segaudit_spec"):
            self.segaudit_spec = model.segaudit_spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.imprint(x))


def trap_model(model: nn.Module, prior: Prior, public: torch.Tensor | None, bins: int = 128,
               seed: int = 0) -> TrappedModel:
    """A copy of ``model`` behind an :class:`ImprintBlock` of ``bins`` rows for images of ``prior.image_shape``.

    Args:
        public: ``[M,C,H,W]`` normalised images the server holds (never the client's), at least 2: the thresholds
            are the ``1/bins .. (bins-1)/bins`` quantiles of their query values, after a first threshold below
            the smallest query value any valid image can have, so every client sample reaches at least one row.
    """
    if bins < 2:
        raise SegauditError(f"the imprint block needs at least 2 bins, got {bins}")
    if public is None or len(public) < 2:
        raise SegauditError("the imprint attack places its bins at quantiles of public images of the same kind: "
                            "give the attacker at least 2 (--distractors DIR, or --data with more images)")
    gen = torch.Generator().manual_seed(seed)
    d = int(torch.tensor(prior.image_shape).prod())
    query = torch.randn(d, generator=gen)
    query /= query.norm()
    back = torch.randn(d, generator=gen)
    back /= back.norm()
    lo, hi = (b.expand(1, *prior.image_shape).flatten() for b in box_bounds(prior))
    values = public.flatten(1) @ query
    inner = values.quantile(torch.arange(1, bins, dtype=values.dtype) / bins)
    lowest = torch.minimum(query * lo, query * hi).sum()  # no valid image has a smaller query value
    thresholds = torch.cat([lowest.view(1) - 1e-3, inner])
    # rows scaled down by SCALE and the way back up by 1/SCALE: the same forward, gradients 1/SCALE larger
    # relative to the weights, so that a FedAvg delta (w_after - w_before in float32) still resolves them
    return TrappedModel(copy.deepcopy(model), ImprintBlock(query * SCALE, thresholds * SCALE, back / SCALE))


def recover_imprinted(update: ClientUpdate, block: ImprintBlock) -> torch.Tensor:
    """The samples alone in their bins, from the trap block's shared tensors: ``[M, D]`` (M <= batch size).

    A bin holds no sample when its bias difference is below 1e-5 of the largest or, for a FedAvg delta
    ``w_after - w_before``, within the float32 rounding of the two biases sent; a bin with several
    samples gives their weighted mixture (the caller cannot tell it from a single sample). Of more occupied
    bins than the batch has samples, the ones with the largest bias differences are kept.
    """
    w, b = update.tensors[f"{BLOCK}.weight"].double(), update.tensors[f"{BLOCK}.bias"].double()
    dw = w - torch.cat([w[1:], torch.zeros_like(w[:1])])  # row i minus row i+1; the last row alone
    db = b - torch.cat([b[1:], torch.zeros_like(b[:1])])
    occupied = db.abs() > 1e-5 * db.abs().max()
    if update.meta.mode == "fedavg":  # each delta entry carries float32 rounding of the weight it was taken from
        sent = block.bias.detach().double().abs()
        larger = torch.maximum(sent, torch.cat([sent[1:], sent[-1:]]))
        occupied &= db.abs() > 8 * torch.finfo(torch.float32).eps * larger
    if int(occupied.sum()) > update.meta.batch_size:  # FedAvg drift splits a sample over neighbouring bins
        keep = db.abs().masked_fill(~occupied, 0).topk(update.meta.batch_size).indices
        occupied = torch.zeros_like(occupied).index_fill_(0, keep, True)
    return (dw[occupied] / db[occupied, None]).float()


def inner_update(update: ClientUpdate) -> ClientUpdate:
    """The part of a trapped model's update that belongs to the model behind the trap, under its own names."""
    cut = len("model.")
    return ClientUpdate({n[cut:]: t for n, t in update.tensors.items() if n.startswith("model.")}, update.meta,
                        {n[cut:]: b for n, b in update.buffers.items() if n.startswith("model.")})


@ATTACKS.register("imprint")
@dataclass
class ImprintAttack(Attack):
    """Malicious server: send the model behind a trap block (:func:`trap_model`), read the images back exactly
    (:func:`recover_imprinted`), then the masks with the images known (:func:`segaudit.attacks.masks.masks_for`).

    Args:
        bins: rows of the trap block (more bins: fewer collisions, ``bins * C*H*W`` more weights to send).
        steps: conjugate-gradient iterations of the mask recovery (:func:`~segaudit.attacks.masks.solve_masks`).
        restarts: 1 (the recovery is closed-form; accepted so that every attack takes the same options).
        seed: the trap's random query and back direction.
        show_progress: accepted as by every attack; the recovery is too short to need a bar.
    """

    threat = MALICIOUS_SERVER
    bins: int = 128
    steps: int = 150
    restarts: int = 1
    seed: int = 0
    show_progress: bool = False

    def __post_init__(self):
        if self.bins < 2 or self.steps < 1:
            raise SegauditError(f"the imprint attack needs bins >= 2 and steps >= 1, got bins={self.bins}, "
                                f"steps={self.steps}")
        if self.restarts != 1:
            raise SegauditError(f"the imprint attack is closed-form and has no restarts; got restarts={self.restarts}")

    def send(self, model: nn.Module, prior: Prior, public: torch.Tensor | None = None) -> nn.Module:
        return trap_model(model, prior, public, self.bins, self.seed)

    def _run(self, model: nn.Module, update: ClientUpdate, prior: Prior) -> Reconstruction:
        if not isinstance(model, TrappedModel) or f"{BLOCK}.weight" not in update.tensors:
            raise SegauditError("the imprint attack reads the trap block of the model it sent; the update was "
                                "made on a model without one (use attack_batch, which sends the trapped model)")
        lo, hi = box_bounds(prior)
        n = prior.batch_size
        found = recover_imprinted(update, model.imprint).view(-1, *prior.image_shape)[:n].clamp(lo, hi)
        m = len(found)
        images = ((lo + hi) / 2).expand(n, *prior.image_shape).clone()  # samples that shared a bin: unknown
        images[:m] = found
        extras = {"threat": self.threat, "recovered_bins": m, "bins": self.bins}
        rec = Reconstruction(images, restart_losses=[0.0], restart_status=["ok"], extras=extras)
        if prior.task == "segmentation":
            inner = inner_update(update)
            with torch.no_grad():
                seen = model.imprint(found)  # what the model behind the trap saw, known with the images
            composition = estimate_composition(model.model, inner, prior, reference=seen if m else None)
            rec.masks = composition.argmax().expand(n, *prior.image_shape[1:]).clone()
            extras["composition"] = composition
            if m:
                rec.masks[:m], mask_extras = masks_for(model.model, inner, prior, seen, iterations=self.steps)
                extras.update(mask_extras)
        return rec
