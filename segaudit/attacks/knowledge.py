"""What the attacker holds besides the update: images and masks of the same kind that are not the client's.

They give the baselines a reconstruction is scored against (the attacker's prior image, its public masks; see
:func:`segaudit.metrics.score`) and the distractors it must pick the client's image out of
(:func:`segaudit.metrics.identification`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import make_batch
from ..types import Batch

CROPS_PER_IMAGE = 4  # random crops per other image: 15 other nuclei tiles give 60 distractors (>= 31 needed)
MIN_CANDIDATES = 32  # with fewer other images, more crops of each, so the pool still holds 31 distractors


@dataclass(frozen=True)
class AttackerData:
    """Crops of images outside the client's batch.

    Attributes:
        public: ``[M,C,H,W]`` images (normalised as the client's) and ``[M,H,W]`` masks.
    """

    public: Batch

    @property
    def prior_image(self) -> torch.Tensor:
        """``[C,H,W]``: the per-pixel mean of the public images (the attacker's best guess without the update)."""
        return self.public.images.mean(0)

    def score_kwargs(self) -> dict:
        """Keyword arguments of :func:`segaudit.metrics.score`."""
        return {"prior_image": self.prior_image, "public_masks": self.public.masks}


def attacker_data(dataset, batch: Batch, size: int, *, fit: str, norm: dict, seed: int = 0,
                  stride: int = 32) -> AttackerData | None:
    """Crops of every image of ``dataset`` whose file stem is not in ``batch`` (None when there is none).

    Args:
        fit: as the client's batch was made (``"crop"``: :data:`CROPS_PER_IMAGE` random crops per image, more
            when fewer than 8 other images would give fewer than :data:`MIN_CANDIDATES`; ``"resize"``: the one
            resized image).
        norm: ``mean``/``std`` of the client's normalisation (:func:`segaudit.preprocessing.normalisation`).
    """
    stems = {name.split("@")[0] for name in batch.names}
    others = [i for i, name in enumerate(dataset.names) if name not in stems]
    if not others:
        return None
    per = max(CROPS_PER_IMAGE, -(-MIN_CANDIDATES // len(others))) if fit == "crop" else 1
    picks = [i for i in others for _ in range(per)]
    return AttackerData(make_batch(dataset, picks, size=size, fit=fit, seed=seed + 7919, stride=stride, **norm))
