"""The layer-scorer registry and the inputs every scorer shares."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..registry import Registry
from ..types import Batch, ClientUpdate, Prior

__all__ = ["LAYER_SCORERS", "LayerScorer", "ScoringContext"]

# A scorer maps (context, group) -> fields of GroupScore; it may fill ctx.cache once for all groups.
LayerScorer = Callable[["ScoringContext", Any], dict[str, Any]]
LAYER_SCORERS: Registry[LayerScorer] = Registry("layer scorer")


@dataclass
class ScoringContext:
    """Inputs shared by the scorers (built once by :func:`~segaudit.leakage.layer_scores`).

    Attributes:
        model: the model the update was simulated on; batch: the client's batch (``[N, C, H, W]`` images).
        update: the simulated client update; prior: what the attacker knows (shapes, classes).
        groups: the model's :class:`~segaudit.models.LayerGroup` list.
        probes: images ``[M, C, H, W]`` and masks ``[M, H, W]`` for the sensitivity scorer.
        steps, seed: the attack budget per group and the seed.
        cache: work a scorer computes once and shares across groups.
    """

    model: nn.Module
    batch: Batch
    update: ClientUpdate
    prior: Prior
    groups: list
    probes: tuple[torch.Tensor, torch.Tensor]
    steps: int
    seed: int
    cache: dict[str, Any] = field(default_factory=dict)
