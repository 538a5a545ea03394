"""The one exception type users see: its message is a single line that says what to do."""
from __future__ import annotations


class SegauditError(ValueError):
    """A bad input or an impossible request; the CLI prints ``error: <message>`` and exits 2."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class NotApplicable(SegauditError):
    """A setting no real client can run (e.g. train-mode BatchNorm on one value per channel): an audit records
    the cell as not applicable, with this message, instead of failing it."""

    STATUS = "not applicable"  # the status of such a cell in an audit's results
