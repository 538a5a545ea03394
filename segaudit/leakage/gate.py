"""The update gate: an update-only risk score a client runs before sharing (no batch, no attack, a few seconds).

Shapes: N images behind the update, C channels, ``size`` x ``size`` pixels, O output channels, k kernel side.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..attacks.recovery import head_bias
from ..errors import SegauditError
from ..fl import check_update, trainable_params
from ..losses import task_loss
from ..models import is_segmentation, layer_groups
from ..types import ClientUpdate, UpdateMeta
from .layers import WEIGHT_LAYERS, LayerRecorder
from .report import GateResult

__all__ = ["DEFAULT_THRESHOLD", "NORM_SLACK", "gate_update"]

DEFAULT_THRESHOLD = 0.5
NORM_SLACK = 4.0  # a real update may be this many times the probe gradient's norm before the excess counts as noise


def gate_update(model: nn.Module, update: ClientUpdate, threshold: float = DEFAULT_THRESHOLD, size: int = 64,
                seed: int = 0) -> GateResult:
    """Score a client's update before it is shared, from the update alone (a few seconds on CPU).

    Per layer group ``g``, ``risk_g = determined_g * nonzero_g * signal_g`` where

    * ``determined_g``: R-GAP's count for the group's weight layers, data-free: the largest, over the
      group's conv/linear layers, of ``min(1, O * kh * kw / (N * H_in * W_in))`` (linear:
      ``min(O, N) / N``) — the share of the layer's input values its weight gradient can pin down with
      N images behind the update and ``size`` x ``size`` inputs (``H_in``, ``W_in`` from one forward pass);
    * ``nonzero_g``: share of the group's update entries that are not zero (pruning lowers it);
    * ``signal_g``: ``min(1, (NORM_SLACK * ||ref_g|| / ||u_g||)^2)``, where ``ref_g`` is the gradient of N
      smooth random probe images (times ``lr * local_steps`` for FedAvg deltas): energy far above a
      plausible gradient's is treated as added noise (DP-SGD/Gaussian defenses lower it).

    The update's ``risk`` is the image-facing group's (the group of the first conv/linear layer the
    image meets), because every gradient-inversion result has to pass through that layer's input; the
    other groups are listed for context. The head bias gradient of a FedSGD update gives the class
    composition analytically whatever the risk (reported in ``notes``).

    Calibration (``python bench/layers.py``, docs/benchmarks.md): for Unet-resnet18 at 64 px the image-facing
    count is 3136 / (4096 N), so risk 0.77 at N = 1 (where the full attack beats a flat image) and
    0.38 at N = 2, 0.19 at N = 4 (where it does not): the default threshold 0.5 separates them.

    Args:
        model: the global model the update was computed on.
        update: gradients or weight delta keyed by parameter name (:func:`segaudit.updates.load_update`).
        threshold: risk above which the update should not be shared.
        size: side of the client's (square) images in pixels.
        seed: seeds the probe images.

    Raises:
        SegauditError: tensors missing, extra or of the wrong shape (naming the tensor), NaN/Inf, or a
            threshold outside [0, 1].
    """
    if not 0 <= threshold <= 1:
        raise SegauditError(f"threshold must be in [0, 1], got {threshold}")
    check_update(model, update)
    spec = getattr(model, "segaudit_spec", None) or {}
    model = copy.deepcopy(model)
    n = max(1, int(update.meta.batch_size))
    modules = {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}
    ref, recorder = _probe_gradient(model, spec, update.meta, modules, n, size, seed)
    shapes = {name: calls[0] for name, calls in recorder.input_shapes.items()}  # first call of each layer
    scale = update.meta.lr * update.meta.local_steps if update.meta.mode == "fedavg" else 1.0
    groups = layer_groups(model)
    rows = []
    for g in groups:
        row = _group_risk(g, update, ref, scale, modules, shapes, n)
        if row is not None:
            rows.append(row)
    facing = _image_facing_group(groups, modules, recorder.order)
    risk = next((r["risk"] for r in rows if r["name"] == facing), 0.0)
    riskiest = [r["name"] for r in sorted(rows, key=lambda r: -r["risk"])[:3]]
    return GateResult(float(risk), float(threshold), bool(risk > threshold), rows, riskiest,
                      _notes(model, update, facing))


def _probe_gradient(model: nn.Module, spec: Mapping[str, Any], meta: UpdateMeta, modules: Mapping[str, nn.Module],
                    n: int, size: int, seed: int) -> tuple[dict[str, torch.Tensor | None], LayerRecorder]:
    """The gradient of ``n`` smooth random probe images ``[n, C, size, size]`` with random targets, by parameter
    name (``None`` for a parameter the loss does not reach), and the record of ``modules``' inputs in that pass."""
    c = int(spec.get("in_channels")
            or next(m for m in model.modules() if isinstance(m, WEIGHT_LAYERS)).weight.shape[1])
    k = int(spec.get("classes") or 2)
    gen = torch.Generator().manual_seed(seed)
    probes = F.interpolate(torch.randn(n, c, max(size // 8, 1), max(size // 8, 1), generator=gen), size=(size, size),
                           mode="bilinear", align_corners=False)
    model.train(meta.train_mode)
    try:
        with LayerRecorder(modules) as recorder:
            logits = model(probes)
    except (RuntimeError, ValueError) as error:
        raise SegauditError(f"the model cannot run on {size}x{size} images ({str(error).splitlines()[0][:120]}): "
                            f"give the client's image size with --size") from None
    target = (torch.randint(0, k, logits.shape[:1] + logits.shape[2:], generator=gen) if is_segmentation(model)
              else torch.randint(0, k, (n,), generator=gen))
    params = trainable_params(model)
    loss = task_loss(logits, target, meta.loss, meta.reduction)
    return dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True))), recorder


def _group_risk(group, update: ClientUpdate, ref: Mapping[str, torch.Tensor | None], scale: float,
                modules: Mapping[str, nn.Module], shapes: Mapping[str, torch.Size], n: int) -> dict[str, Any] | None:
    """``{"name", "kind", "risk", "determined", "signal", "nonzero"}`` of one layer group (see :func:`gate_update`);
    ``None`` when the update holds none of its tensors. ``ref`` is the probe gradient, ``scale`` its FedAvg factor."""
    names = [p for p in group.params if p in update.tensors]
    if not names:
        return None
    entries = sum(update.tensors[p].numel() for p in names)
    nonzero = sum(int((update.tensors[p] != 0).sum()) for p in names) / max(entries, 1)
    u_norm = math.sqrt(sum(float(update.tensors[p].double().pow(2).sum()) for p in names))
    r_norm = scale * math.sqrt(sum(float(ref[p].double().pow(2).sum()) for p in names if ref[p] is not None))
    signal = 0.0 if u_norm == 0 else min(1.0, (NORM_SLACK * r_norm / u_norm) ** 2) if r_norm > 0 else 1.0
    determined = max((_count_determined(modules[p.rsplit('.', 1)[0]], shapes[p.rsplit('.', 1)[0]], n)
                      for p in names if p.endswith(".weight") and p.rsplit(".", 1)[0] in shapes), default=0.0)
    return {"name": group.name, "kind": group.kind, "risk": determined * nonzero * signal, "determined": determined,
            "signal": signal, "nonzero": nonzero}


def _image_facing_group(groups, modules: Mapping[str, nn.Module], order: list[str]) -> str | None:
    """The group holding the first trainable conv/linear weight the image meets (``order``: layer call order)."""
    first = next((name for name in order if modules[name].weight.requires_grad), None)
    return next((g.name for g in groups if first is not None and f"{first}.weight" in g.params), None)


def _notes(model: nn.Module, update: ClientUpdate, facing: str | None) -> list[str]:
    """One line per fact worth reporting: the image-facing group, and a head bias that reveals the composition."""
    notes = []
    if facing is not None:
        notes.append(f"image-facing group: {facing}")
    bias = head_bias(model)
    if bias in update.tensors and update.meta.mode == "fedsgd" and bool((update.tensors[bias] != 0).any()):
        notes.append(f"{bias} reveals the batch's class composition analytically (any risk)")
    return notes


def _count_determined(module: nn.Module, x_shape: torch.Size, n: int) -> float:
    """R-GAP's data-free count: the share of a layer's input values its weight gradient can determine."""
    if isinstance(module, nn.Linear):
        return min(module.out_features, n) / n
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        kh, kw = module.kernel_size
        return min(1.0, module.out_channels * kh * kw / (n * int(x_shape[-2]) * int(x_shape[-1])))
    return 0.0
