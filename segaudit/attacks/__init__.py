"""Attacks on client updates. Importing this package registers every attack in :data:`ATTACKS`."""
from .base import ATTACKS, Attack
from . import inversion  # noqa: F401  (registers dlg, ig, seg)
from . import dropout  # noqa: F401  (registers dropout, after inversion)
from . import imprint  # noqa: F401  (registers imprint: the malicious-server worst case, only when asked for)

__all__ = ["ATTACKS", "Attack"]
