"""The adaptive attacker: how an inversion attack changes its matching loss once it knows the defense.

The server reads ``update.meta.defense`` (name and parameters, see :mod:`segaudit.defenses`) and adapts:

* ``prune`` (top-k) and ``quant``: only the entries the client actually sent are matched — the simulated
  update is multiplied by ``shared != 0`` before the objective, so the attacker is not pulled towards the
  zeros the defense wrote. (Quantisation on segaudit's even-level grid writes zeros only into all-zero
  tensors; its rounding error is matched as it is, which cosine objectives tolerate.)
* ``clip``: nothing to do for the cosine objectives of ``seg``/``ig``, which are invariant to the one global
  scale factor that clipping applies (at any batch size, since the whole update is clipped once).
* ``noise`` and ``dp`` (DP-SGD, whose ``meta.defense`` records sigma and the clip norm C): the attacker
  knows sigma, so it can estimate each tensor's signal share from the shared update itself —
  ``||shared_l||^2 = ||g_l||^2 + n_l s^2`` — and weights tensor ``l`` by its estimated signal fraction
  ``max(1 - n_l s^2 / ||shared_l||^2, 1e-3)``: small tensors (biases, norm scales) that still stand above
  the noise lead, tensors drowned in it barely count. The noise itself cannot be removed.
* ``dropout``: modelled by the ``dropout`` attack (:mod:`segaudit.attacks.dropout`); the plain attacks are
  naive to it. ``localsteps``: the FedAvg unrolling already follows ``meta`` — nothing more to adapt.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..types import ClientUpdate


@dataclass(frozen=True)
class Adaptation:
    """Changes to the matching loss for one defended update.

    Attributes:
        defense: the defense's name (``"none"`` when the update records none).
        support_only: match only entries where the shared update is non-zero.
        weights: per-tensor weights by parameter name (``None``: all 1).
        note: what the attacker does, in words (for results and reports).
    """

    defense: str = "none"
    support_only: bool = False
    weights: dict[str, float] | None = None
    note: str = "naive: the update is matched as shared"

    def summary(self) -> dict:
        w = list(self.weights.values()) if self.weights else []
        return {"defense": self.defense, "support_only": self.support_only, "note": self.note,
                **({"weight_min": min(w), "weight_mean": sum(w) / len(w)} if w else {})}


def adapt_to_defense(update: ClientUpdate) -> Adaptation:
    """The :class:`Adaptation` for ``update``, from its ``meta.defense`` (see the module docstring)."""
    spec = update.meta.defense or {}
    name = str(spec.get("name", "none"))
    if name in ("prune", "quant"):
        return Adaptation(name, support_only=True, note="matched only where the shared update is non-zero")
    if name == "clip":
        return Adaptation(name, note="cosine matching is invariant to the clipping factor; nothing to adapt")
    std = noise_std(update)
    if std is not None and std > 0:
        return Adaptation(name, weights=signal_weights(update.tensors, std),
                          note=f"tensors weighted by their estimated signal fraction (noise std {std:.3g})")
    if name == "dropout":
        return Adaptation(name, note="naive to dropout; the 'dropout' attack models the masks")
    return Adaptation(name, note="nothing to adapt" if name != "none" else Adaptation.note)


def noise_std(update: ClientUpdate) -> float | None:
    """Per-entry standard deviation of the noise the defense added, as far as the attacker can tell.

    ``noise:sigma`` adds ``sigma * ||g||`` per entry; ``||g||`` is estimated from the shared norm as
    ``||shared|| / sqrt(1 + sigma^2 D)``. ``dp`` (DP-SGD) adds ``sigma * clip`` to the sum of the clipped
    per-sample gradients, so ``sigma * clip / N`` to the shared mean. A defense that records ``noise_std``
    gives it directly. ``None`` when no noise was added.
    """
    spec = update.meta.defense or {}
    if spec.get("noise_std") is not None:
        return float(spec["noise_std"])
    if spec.get("name") == "dp" and spec.get("sigma") is not None:  # noise sigma*C on the sum of N samples
        per_sum = float(spec["sigma"]) * float(spec.get("clip", 1.0))
        return per_sum / update.meta.batch_size if update.meta.reduction == "mean" else per_sum
    if spec.get("name") != "noise":
        return None
    sigma = float(spec.get("sigma", 0.0))
    d = sum(t.numel() for t in update.tensors.values())
    return sigma * update.norm() / (1 + sigma ** 2 * d) ** 0.5


def signal_weights(tensors: dict[str, torch.Tensor], std: float) -> dict[str, float]:
    """Per-tensor estimated signal fraction ``max(1 - n s^2 / ||t||^2, 1e-3)`` for per-entry noise std ``s``."""
    out = {}
    for name, t in tensors.items():
        energy = float((t.double() ** 2).sum())
        out[name] = max(1.0 - t.numel() * std ** 2 / energy, 1e-3) if energy > 0 else 1e-3
    return out
