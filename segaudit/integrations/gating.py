"""What the framework gates share: their actions, the check of their arguments and the reason a block gives."""
from __future__ import annotations

import importlib.util
import numbers

from ..errors import SegauditError
from ..leakage.report import GateResult

ACTIONS = ("block", "flag")
"""What a gate does with an update above its threshold: replace it by an error reply, or only report it."""


def require_extra(package: str, extra: str) -> None:
    """Refuse, in one line, to go on without the framework ``package`` that the extra ``extra`` installs."""
    if importlib.util.find_spec(package) is None:
        raise SegauditError(f"segaudit.integrations.{extra} needs pip install 'segaudit[{extra}]' ({package} is not "
                            "installed)")


def check_gate_arguments(size: int, threshold: float, action: str) -> None:
    """Refuse a gate that could never decide, one line each: an unknown action, a threshold outside [0, 1], a size
    that is not a positive number of pixels."""
    if action not in ACTIONS:
        raise SegauditError(f"action must be 'block' or 'flag', got {action!r}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold <= 1:
        raise SegauditError(f"threshold must be in [0, 1], got {threshold!r}")
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise SegauditError(f"size must be a positive number of pixels, got {size!r}")


def blocked_reason(result: GateResult) -> str:
    """``"segaudit leakage gate blocked the update: risk 1.00 > 0.50 (riskiest: encoder.stem)"``."""
    where = f" (riskiest: {result.riskiest[0]})" if result.riskiest else ""
    return f"segaudit leakage gate blocked the update: risk {result.risk:.2f} > {result.threshold:.2f}{where}"
