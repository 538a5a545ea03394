"""Attacks on client updates. Importing this package registers every attack in :data:`ATTACKS`."""
# isort: off
# (base first, then the attacks in the order they register)
from .base import ATTACKS, Attack
from . import inversion  # noqa: F401  (registers dlg, ig, seg)
from . import dropout  # noqa: F401  (registers dropout, after inversion)
from . import imprint  # noqa: F401  (registers imprint: the malicious-server worst case, only when asked for)
# isort: on

__all__ = ["ATTACKS", "Attack"]
