"""The analytic scorer: R-GAP-style constraint counting on the linear system of each layer's weight gradient.

Shapes: N images per batch, C channels, H x W pixels, O output channels, k kernel side.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..errors import SegauditError
from ..losses import task_loss
from ..types import Batch
from .context import LAYER_SCORERS, ScoringContext
from .layers import WEIGHT_LAYERS, LayerRecorder

__all__ = ["analytic_exposure", "analytic_scorer", "analyze_system", "gradient_system"]


def gradient_system(layer: nn.Module, x_shape: Sequence[int], delta: torch.Tensor) -> torch.Tensor:
    """The matrix ``D`` of the linear map from one input channel to that channel's weight gradient.

    For ``y = conv(x, W)`` the weight gradient is ``dW[o, c, u, v] = sum_n sum_p delta[n, o, p] *
    x[n, c, p * stride + (u, v) * dilation - padding]``: linear in ``x`` once ``delta = dL/dy`` is known
    (R-GAP and Chen & Campbell solve the layers backward from the output, so ``delta`` is known when the
    layer is reached). The map is the same for every input channel ``c``, so the whole system is
    ``I_C (x) D`` and ``rank = C * rank(D)``. For ``nn.Linear`` (``dW = delta^T x``), ``D = delta^T``.

    Args:
        layer: ``nn.Conv2d`` (``groups == 1``) or ``nn.Linear``.
        x_shape: the layer input's shape, ``[N, C, H, W]`` or ``[N, F]`` (``[N, ..., F]`` for tokens).
        delta: ``dL/dy``, ``[N, O, Ho, Wo]`` or ``[N, O]`` (``[N, ..., O]``).

    Returns:
        ``D``: ``[O * kh * kw, N * H * W]`` (conv) or ``[O, N]`` (linear; ``[O, N * T]`` for T tokens),
        float64; rows are the weight gradient entries of one input channel (order ``o, u, v``), columns that
        channel's input values (order ``n, i, j``).

    Example:
        >>> D = gradient_system(nn.Linear(3, 2), (1, 3), torch.tensor([[1.0, 2.0]]))   # [[1], [2]]
    """
    delta = delta.detach().double()
    if isinstance(layer, nn.Linear):  # tokens ([N, T, F] inputs, as in a transformer) are columns too
        return delta.reshape(-1, delta.shape[-1]).t().contiguous()
    if not isinstance(layer, nn.Conv2d) or layer.groups != 1 or isinstance(layer.padding, str):
        raise SegauditError(f"gradient_system handles nn.Linear and nn.Conv2d with groups=1 and numeric "
                            f"padding, got {layer}")
    n, _, h, w = x_shape
    kh, kw = layer.kernel_size
    sh, sw = layer.stride
    ph, pw = layer.padding
    dh, dw = layer.dilation
    o, ho, wo = delta.shape[1:]
    rows = torch.zeros(kh, kw, n, o, h + 2 * ph, w + 2 * pw, dtype=torch.float64)
    for u in range(kh):
        for v in range(kw):
            # output position p reads padded input (p * stride + offset): place delta there
            rows[u, v, :, :, u * dh: u * dh + sh * (ho - 1) + 1: sh, v * dw: v * dw + sw * (wo - 1) + 1: sw] = delta
    rows = rows[..., ph: ph + h, pw: pw + w]  # padding positions are zeros, not unknowns
    return rows.permute(3, 0, 1, 2, 4, 5).reshape(o * kh * kw, n * h * w)


def analyze_system(D: torch.Tensor, channels: int = 1) -> dict[str, float]:
    """Rank deficiency and condition number of the system ``(I_channels (x) D) x = vec(dW)``.

    Args:
        D: ``[m, u]`` from :func:`gradient_system`; ``u`` unknowns per input channel.
        channels: C, the number of identical blocks.

    Returns:
        ``unknowns = C * u``, ``constraints = C * m`` (R-GAP's count), ``rank = C * rank(D)`` (singular
        values above ``max(m, u) * eps * sigma_max``), ``deficiency = unknowns - rank``,
        ``rank_deficiency = deficiency / unknowns`` and ``condition = sigma_max / sigma_min`` over the
        nonzero singular values (``inf`` when ``D`` is zero): how much noise in the gradient is amplified
        in the part of the input the system determines.
    """
    m, u = D.shape
    small = D @ D.t() if m <= u else D.t() @ D  # same nonzero spectrum, smaller eigenproblem
    eig = torch.linalg.eigvalsh(small).clamp_min(0).flip(0)
    sigma = eig.sqrt()
    top = float(sigma[0]) if sigma.numel() else 0.0
    tol = max(m, u) * torch.finfo(torch.float64).eps * top * 1e3  # squared-spectrum round-off
    rank = int((sigma > tol).sum()) if top > 0 else 0
    condition = top / float(sigma[rank - 1]) if rank else math.inf
    unknowns = channels * u
    deficiency = unknowns - channels * rank
    return {"unknowns": unknowns, "constraints": channels * m, "rank": channels * rank,
            "deficiency": deficiency, "rank_deficiency": deficiency / unknowns, "condition": condition}


def analytic_exposure(rank_deficiency: float, condition: float) -> float:
    """``(1 - rank_deficiency) / (1 + log10(condition))``: determined share, discounted for instability."""
    if not math.isfinite(condition):
        return 0.0
    return (1.0 - rank_deficiency) / (1.0 + math.log10(max(condition, 1.0)))


def _layer_io(model: nn.Module, batch: Batch, update_meta, modules: Mapping[str, nn.Module]
              ) -> dict[str, tuple[torch.Size, torch.Tensor]]:
    """Input shape and output gradient ``dL/dy`` of each module for the client's batch (one pass)."""
    with LayerRecorder(modules, keep_outputs=True) as recorder:
        model.train(update_meta.train_mode)
        loss = task_loss(model(batch.images), batch.masks, update_meta.loss, update_meta.reduction)
        outputs = recorder.outputs
        names = list(outputs)
        grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
    return {n: (recorder.input_shapes[n][-1], g if g is not None else torch.zeros_like(outputs[n]))
            for n, g in zip(names, grads)}


@LAYER_SCORERS.register("analytic")
def analytic_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """R-GAP-style counting for every conv/linear weight of ``group`` (see :func:`analyze_system`).

    The group reports its **most exposed** layer (highest :func:`analytic_exposure`).
    """
    if "layer_io" not in ctx.cache:
        modules = {n: m for n, m in ctx.model.named_modules()
                   if isinstance(m, WEIGHT_LAYERS) and getattr(m, "groups", 1) == 1
                   and m.weight.requires_grad}
        ctx.cache["weight_modules"] = modules
        ctx.cache["layer_io"] = _layer_io(ctx.model, ctx.batch, ctx.update.meta, modules)
    modules, io = ctx.cache["weight_modules"], ctx.cache["layer_io"]
    rows, best = [], None
    for param in group.params:
        module_name = param.rsplit(".", 1)[0]
        if not param.endswith(".weight") or module_name not in io:
            continue
        x_shape, delta = io[module_name]
        layer = modules[module_name]
        channels = int(x_shape[-1] if isinstance(layer, nn.Linear) else x_shape[1])
        stats = analyze_system(gradient_system(layer, x_shape, delta), channels=channels)
        row = {"name": param, "shape": list(layer.weight.shape), **stats,
               "exposure": analytic_exposure(stats["rank_deficiency"], stats["condition"])}
        rows.append(row)
        if best is None or row["exposure"] > best["exposure"]:
            best = row
    if best is None:
        return {"tensors": rows}
    return {"rank_deficiency": best["rank_deficiency"], "condition": best["condition"],
            "components": {"analytic": best["exposure"]}, "tensors": rows}
