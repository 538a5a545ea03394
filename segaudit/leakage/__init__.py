"""Per-layer leakage scores and the update gate.

Two entry points:

* :func:`layer_scores` (audit, with the client's batch): for every group of
  :func:`~segaudit.models.layer_groups` it runs the scorers of :data:`LAYER_SCORERS`:

  - ``attack``: the ``seg`` inversion attack matching **only that group's tensors** of the update
    (same step budget for every group), scored against the truth by PSNR / SSIM / mask Dice;
  - ``analytic``: R-GAP-style constraint counting for every conv/linear layer of the group (see
    :func:`gradient_system` and :func:`analyze_system`): how many of the layer's input values the
    layer's own weight gradient pins down (rank deficiency) and how stably (condition number);
  - ``sensitivity``: how strongly (relative gradient change under a small input change) and how
    uniquely (one minus the largest cosine between different images' gradients) the group's gradient
    depends on the input, over a few images of the dataset.

  The combined ``score`` in [0, 1] is the mean of the available component exposures (each in [0, 1],
  see :func:`combine`) and groups are ranked by it.

* :func:`gate_update` (no batch, no attack, a few seconds): an update-only risk score a client runs
  before sharing (see its docstring for what it computes and how its scale was calibrated).

Modules: :mod:`~segaudit.leakage.report` (result types), :mod:`~segaudit.leakage.context` (the scorer registry
and the inputs scorers share), :mod:`~segaudit.leakage.layers` (layer helpers and the forward-hook recorder),
:mod:`~segaudit.leakage.analytic` and :mod:`~segaudit.leakage.scorers` (the scorers),
:mod:`~segaudit.leakage.scoring` (:func:`layer_scores`), :mod:`~segaudit.leakage.gate` (:func:`gate_update`).

Shapes: N images per batch, C channels, H x W pixels, O output channels, k kernel side.
"""
from __future__ import annotations

# Importing analytic and scorers registers their scorers in LAYER_SCORERS.
from .analytic import analyze_system, gradient_system
from .context import LAYER_SCORERS, ScoringContext
from .gate import DEFAULT_THRESHOLD, gate_update
from .report import GateResult, GroupScore, LayerReport
from .scorers import ablation_attack, attack_with_layers
from .scoring import combine, layer_scores

__all__ = [
    "DEFAULT_THRESHOLD", "GateResult", "GroupScore", "LAYER_SCORERS", "LayerReport", "ScoringContext",
    "ablation_attack", "analyze_system", "attack_with_layers", "combine", "gate_update", "gradient_system",
    "layer_scores",
]
