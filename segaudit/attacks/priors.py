"""Image priors an attacker adds to the matching loss."""
from __future__ import annotations

import torch
from torch import nn

from ..types import ClientUpdate


class BatchNormPrior:
    """Match the per-channel mean and variance of every BatchNorm input to the client's batch statistics.

    A client that shares its BatchNorm buffers after one train-mode step reveals them exactly:
    ``running = (1 - m) * old + m * batch_stat`` with the momentum ``m`` and ``old`` known to the server,
    so ``batch_stat = (running - (1 - m) * old) / m`` (variance unbiased, as PyTorch stores it); after K steps,
    their weighted mean (:func:`client_batch_stats`).
    Forward hooks record the statistics of the attacker's dummy batch on its first forward of a round.
    """

    def __init__(self, model: nn.Module, targets: dict[str, tuple[torch.Tensor, torch.Tensor]]):
        self.targets = targets
        self.records: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name)) for name in targets]

    @classmethod
    def from_update(cls, model: nn.Module, update: ClientUpdate) -> BatchNormPrior | None:
        """The prior for ``update``, or ``None`` when it reveals no batch statistics."""
        stats = client_batch_stats(model, update)
        return cls(model, stats) if stats else None

    def _hook(self, name: str):
        def record(module, inputs, output):
            if name not in self.records:
                x = inputs[0]
                self.records[name] = (x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=True))
        return record

    def distance(self) -> torch.Tensor:
        """Mean over layers of ``(||mean - mean*||^2 + ||std - std*||^2) / ||std*||^2`` for the last forward (every
        layer counts whatever its scale); then resets."""
        total = 0.0
        for name, (mean, var) in self.records.items():
            target_mean, target_std = self.targets[name][0], self.targets[name][1].clamp_min(0).sqrt()
            total = total + ((mean - target_mean).pow(2).sum() + (var.clamp_min(1e-12).sqrt() - target_std).pow(2).sum()
                             ) / target_std.pow(2).sum().clamp_min(1e-12)
        count = max(len(self.records), 1)
        self.reset()
        return total / count

    def reset(self) -> None:
        """Forget what the hooks recorded (e.g. a forward pass made for another purpose)."""
        self.records = {}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def client_batch_stats(model: nn.Module, update: ClientUpdate) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """BatchNorm module name -> (batch mean ``[C]``, unbiased batch variance ``[C]``) revealed by ``update``.

    After ``K`` train-mode steps with momentum ``m`` a running statistic is ``(1 - m)^K old + sum_k m (1 - m)^(K-k)
    stat_k``, so ``(new - (1 - m)^K old) / (1 - (1 - m)^K)`` is exactly the weighted mean of the K steps' batch
    statistics (weights ``m (1 - m)^(K-k)``, normalised; the statistic itself for one step, as NVFlare's
    gradient-inversion filter and LeakPro's "inferred" BatchNorm strategy recover it). The steps of one FedAvg round
    see weights that move by little, so it estimates the statistics of the client's batch at the global weights.

    Empty unless the update is a train-mode update that shares the buffers.
    """
    meta = update.meta
    if not meta.train_mode or not update.buffers:
        return {}
    stats = {}
    for name, module in model.named_modules():
        if not isinstance(module, nn.modules.batchnorm._BatchNorm) or module.momentum is None:
            continue
        new_mean, new_var = update.buffers.get(f"{name}.running_mean"), update.buffers.get(f"{name}.running_var")
        if new_mean is None or new_var is None or module.running_mean is None:
            continue
        keep = (1 - module.momentum) ** max(meta.local_steps, 1)
        stats[name] = ((new_mean - keep * module.running_mean) / (1 - keep),
                       (new_var - keep * module.running_var) / (1 - keep))
    return stats
