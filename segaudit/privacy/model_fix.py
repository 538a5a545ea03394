"""What Opacus needs of a model: per-sample gradient modes, and the check that refuses models it cannot train.

The fix itself, :func:`segaudit.models.dp_compatible.make_private_model`, lives in :mod:`segaudit.models`
(``load_model`` rebuilds DP-trained models with it); :mod:`segaudit.privacy` re-exports it.
"""
from __future__ import annotations

from torch import nn

from ..errors import SegauditError
from ..models.dp_compatible import check_per_sample_layout

#: Per-sample gradient modes of Opacus; "hooks" is the fastest on the smp U-Net (``bench/dp_speed.py``).
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")

FIX_HINT = "use segaudit.privacy.make_private_model(model) (Opacus ModuleValidator.fix: BatchNorm -> GroupNorm)"


def check_private_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot compute per-sample gradients for (e.g. one with BatchNorm)."""
    from opacus.validators import ModuleValidator

    check_per_sample_layout(model)
    # the mode is the caller's business (a client sets it; train_private refuses eval mode itself)
    errors = [e for e in ModuleValidator.validate(model, strict=False) if "training mode" not in str(e)]
    if errors:
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
        what = f"BatchNorm layer {first!r}" if first is not None else type(errors[0]).__name__
        raise SegauditError(f"the model has {what}, which DP-SGD cannot handle (a sample's gradient depends on "
                            f"its batch): {FIX_HINT}")
