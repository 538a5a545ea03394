"""What the layer scores and the update gate report: :class:`GroupScore`, :class:`LayerReport`, :class:`GateResult`."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["GateResult", "GroupScore", "LayerReport"]


@dataclass
class GroupScore:
    """Scores of one layer group.

    Attributes:
        name, kind, params: the :class:`~segaudit.models.LayerGroup`.
        score: combined exposure in [0, 1] (higher = leaks more); ``None`` if nothing was scored.
        attack_psnr, attack_ssim, attack_dice: the group-restricted attack against the truth.
        rank_deficiency: fraction in [0, 1] of the most exposed layer's input values that its weight
            gradient leaves undetermined (``None`` for groups without conv/linear weights).
        condition: condition number of that layer's gradient system on its row space.
        sensitivity: ``uniqueness * gain / (1 + gain)`` in [0, 1].
        uniqueness, gain: the two parts of ``sensitivity``.
        components: the exposures that ``score`` averages (``attack``, ``analytic``, ``sensitivity``).
        tensors: per weight tensor: name, shape, rank_deficiency, condition, unknowns, rank.
    """

    name: str
    kind: str
    params: list[str]
    score: float | None = None
    attack_psnr: float | None = None
    attack_ssim: float | None = None
    attack_dice: float | None = None
    rank_deficiency: float | None = None
    condition: float | None = None
    sensitivity: float | None = None
    uniqueness: float | None = None
    gain: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LayerReport:
    """What :func:`layer_scores` found.

    Attributes:
        groups: one :class:`GroupScore` per layer group, in model order.
        full: the attack on the whole update with the same budget (``psnr``, ``ssim``, ``mask_dice``, ...).
        baseline: a flat image at each true image's mean intensity and an empty mask, scored the same way
            (what an attacker gets for free).
        settings: scorers, steps, seed, batch size, mode, size.
        runtime_s: wall time of each scorer and in total.
    """

    groups: list[GroupScore]
    full: dict[str, float | None] = field(default_factory=dict)
    baseline: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    runtime_s: dict[str, float] = field(default_factory=dict)

    def ranking(self) -> list[str]:
        """Group names, most exposed first (unscored groups last)."""
        scored = sorted((g for g in self.groups if g.score is not None), key=lambda g: -g.score)
        return [g.name for g in scored] + [g.name for g in self.groups if g.score is None]

    def to_dict(self) -> dict[str, Any]:
        """The ``layers.json`` payload: ``{"groups": [...], "ranking", "full", "baseline", ...}``."""
        return {"groups": [asdict(g) for g in self.groups], "ranking": self.ranking(), "full": self.full,
                "baseline": self.baseline, "settings": self.settings, "runtime_s": self.runtime_s}


@dataclass
class GateResult:
    """What :func:`gate_update` decided.

    Attributes:
        risk: the update's risk score in [0, 1]: the risk of the image-facing group.
        threshold: the threshold compared with.
        above: ``risk > threshold`` (the CLI exits 3).
        groups: per group ``{"name", "kind", "risk", "determined", "signal", "nonzero"}``, model order.
        riskiest: group names by decreasing risk (at most 3).
        notes: facts worth a line each (e.g. the head bias gradient exposes the class composition).
    """

    risk: float
    threshold: float
    above: bool
    groups: list[dict[str, Any]]
    riskiest: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
