"""Make a model DP-SGD-compatible for Opacus (BatchNorm -> GroupNorm, no in-place edits of hooked outputs).

:mod:`segaudit.privacy` re-exports :func:`make_private_model`; it lives here because :func:`segaudit.models.load_model`
rebuilds a DP-trained model (spec ``"dp_compatible": True``) with it.
"""
from __future__ import annotations

import copy
import warnings

from torch import nn

from segaudit.errors import SegauditError


def quiet_opacus():
    """Opacus warns about secure RNG and PRV/GDP precision on every call; the results carry the facts."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", module=r"opacus.*")
    warnings.filterwarnings("ignore", message=r".*(secure|Secure|Full backward hook|Optimal order).*")
    return ctx


#: module classes whose layers see a batch that is not the samples' (Swin folds attention windows into the batch
#: dimension), so Opacus's per-layer per-sample gradients would be per window; no fix keeps the network.
NO_PER_SAMPLE_GRADIENTS = {"SwinTransformer": "its window attention folds the attention windows into the batch "
                                              "dimension, so Opacus's per-layer gradients would be per window"}


def check_per_sample_layout(model: nn.Module) -> None:
    """Refuse a model whose layers see windows or patches as batch entries (see :data:`NO_PER_SAMPLE_GRADIENTS`)."""
    for path, module in model.named_modules():
        reason = NO_PER_SAMPLE_GRADIENTS.get(type(module).__name__)
        if reason is not None:
            raise SegauditError(f"DP-SGD cannot train this model ({type(module).__name__} at {path or 'the root'}): "
                                f"{reason}, not per image; use a convolutional network (e.g. monai.unet)")


def make_private_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` that Opacus can train, and what was changed to get it.

    Changes: every BatchNorm becomes a GroupNorm (Opacus ``ModuleValidator.fix``: per-sample gradients
    are undefined when a sample's output depends on its batch peers), in-place activations become
    out-of-place and residual blocks (torchvision's ResNet, MONAI's SegResNet and UnetResBlock) add their skip
    out of place (Opacus's hooks refuse in-place edits of a hooked module's output). The DP model therefore
    differs from the baseline.

    Args:
        model: e.g. from :func:`segaudit.models.build_model`; left untouched.

    Returns:
        ``(fixed_model, changes)``: the model (same parameter names except BatchNorm buffers, same mode,
        ``segaudit_spec`` with ``"dp_compatible": True`` so :func:`segaudit.models.load_model` rebuilds it)
        and one line per kind of change.
    """
    from opacus.validators import ModuleValidator

    from .out_of_place import OUT_OF_PLACE_BLOCKS  # imports torchvision: seconds, so only here

    check_per_sample_layout(model)
    blocks_of = dict(OUT_OF_PLACE_BLOCKS)
    if any(type(m).__module__.startswith("monai.") for m in model.modules()):
        from .monai_out_of_place import OUT_OF_PLACE_BLOCKS as MONAI_BLOCKS

        blocks_of.update(MONAI_BLOCKS)

    norms = [f"{name}: {type(m).__name__}" for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ctx = quiet_opacus()
    try:
        fixed = ModuleValidator.fix(copy.deepcopy(model))
    finally:
        ctx.__exit__(None, None, None)
    left = {name for name, m in fixed.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    norms = [n for n in norms if n.split(":")[0] not in left]  # Opacus leaves frozen (unused) ones alone
    changes = []
    if norms:
        groups = sorted({m.num_groups for m in fixed.modules() if isinstance(m, nn.GroupNorm)})
        changes.append(f"{len(norms)} BatchNorm layers -> GroupNorm (groups {', '.join(map(str, groups))}), "
                       f"e.g. {norms[0]}")
    blocks = inplace = 0
    for m in fixed.modules():
        if type(m) in blocks_of:
            m.__class__ = blocks_of[type(m)]
            blocks += 1
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            inplace += 1
    if blocks:
        changes.append(f"{blocks} residual blocks add the skip connection out of place")
    if inplace:
        changes.append(f"{inplace} in-place activations made out-of-place")
    fixed.train(model.training)
    spec = getattr(model, "segaudit_spec", None)
    if spec is not None:
        fixed.segaudit_spec = {**copy.deepcopy(spec), "dp_compatible": True}
    return fixed, changes
