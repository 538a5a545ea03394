"""Attacks on client updates. Importing this package registers every attack in :data:`ATTACKS`."""
from .base import ATTACKS, Attack
from . import inversion  # noqa: F401  (registers dlg, ig, seg)
from . import dropout  # noqa: F401  (registers dropout, after inversion)

__all__ = ["ATTACKS", "Attack"]
