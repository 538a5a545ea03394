"""The one exception type users see: its message is a single line that says what to do."""
from __future__ import annotations


class SegauditError(ValueError):
    """A bad input or an impossible request; the CLI prints ``error: <message>`` and exits 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))
