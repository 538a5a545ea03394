"""What is asked about a client batch (:class:`PropertySpec`), what the attacker sees of one update
(:class:`Case`) and the truth kept apart from it (:class:`Truth`)."""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import SegauditError
from ...types import Batch, ClientUpdate, Prior

# -- the property ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PropertySpec:
    """A yes/no property of a client batch, parsed from ``CLASS>X`` or ``any:CLASS>X`` (``present:CLASS``).

    ``CLASS>X``: class CLASS covers more than the share X of the batch's pixels ("how large").
    ``any:CLASS>X``: at least one image has more than X of its pixels in CLASS ("a lesion is present");
    ``present:CLASS`` is ``any:CLASS>0``. CLASS is a class name or index. X may be ``median``: the median
    over the attacker's own random batches of that size (:meth:`at_median`), a balanced question.
    """

    cls: int
    threshold: float | None
    scope: str  # "batch" or "any"
    text: str

    @classmethod
    def parse(cls, spec: str, class_names: tuple[str, ...]) -> PropertySpec:
        text = spec.strip()
        m = re.fullmatch(r"present:(.+)", text)
        if m:
            return cls(_class_index(m.group(1), class_names), 0.0, "any", text)
        m = re.fullmatch(r"(any:)?([^<>]+)>\s*([0-9.eE+-]+|median)", text)
        if not m:
            raise SegauditError(f"property {spec!r} is not CLASS>X, any:CLASS>X or present:CLASS "
                                "(e.g. 'nucleus>0.2', 'nucleus>median', 'present:nucleus')")
        if m.group(3) == "median":
            return cls(_class_index(m.group(2), class_names), None, "any" if m.group(1) else "batch", text)
        try:
            threshold = float(m.group(3))
        except ValueError:
            raise SegauditError(f"property {spec!r}: {m.group(3)!r} is not a number") from None
        if not 0.0 <= threshold < 1.0:
            raise SegauditError(f"property {spec!r}: the share X must be in [0, 1), got {threshold}")
        return cls(_class_index(m.group(2), class_names), threshold, "any" if m.group(1) else "batch", text)

    def at_median(self, pool: Batch, batch_size: int, seed: int = 0, draws: int = 400) -> PropertySpec:
        """This property with ``X`` the median share over ``draws`` random batches of ``pool`` (per image for
        ``any:``)."""
        shares = (pool.masks == self.cls).flatten(1).double().mean(1)
        if self.scope == "any":
            median = float(shares.median())
        else:
            rng = np.random.default_rng(seed)
            size = min(batch_size, len(pool))
            median = float(np.median([float(shares[rng.choice(len(pool), size, replace=False)].mean())
                                      for _ in range(draws)]))
        return PropertySpec(self.cls, median, self.scope, f"{self.text} ({median:.3f})")

    def image_holds(self, masks: torch.Tensor) -> torch.Tensor:
        """Per image ``[N]`` bool: the image's share of the class exceeds the threshold."""
        return (masks == self.cls).flatten(1).double().mean(1) > self.threshold

    def holds(self, masks: torch.Tensor) -> bool:
        """Whether the batch ``[N,H,W]`` has the property."""
        if self.scope == "any":
            return bool(self.image_holds(masks).any())
        return float((masks == self.cls).double().mean()) > self.threshold


def _class_index(token: str, class_names: tuple[str, ...]) -> int:
    token = token.strip()
    if token in class_names:
        return class_names.index(token)
    if token.isdigit() and int(token) < len(class_names):
        return int(token)
    raise SegauditError(f"unknown class {token!r} in the property; the data's classes are: "
                        f"{', '.join(f'{i}={n}' for i, n in enumerate(class_names))}")


# -- what the attacker sees, and the truth kept apart --------------------------------------------------------

@dataclass(frozen=True)
class Case:
    """One update as the attacker sees it: the update, the public prior and, for membership, the candidate.

    Attributes:
        candidate: a known image ``[1,C,H,W]`` with its mask ``[1,H,W]`` whose membership is asked, or None.
    """

    update: ClientUpdate
    prior: Prior
    candidate: Batch | None = None


@dataclass(frozen=True)
class Truth:
    """The truth behind one update, for fitting on shadow updates and for scoring target updates.

    Attributes:
        composition: per-class pixel share of the batch ``[K]``.
        label: the property holds / the candidate is a member (None when not asked).
    """

    composition: torch.Tensor
    label: bool | None = None
