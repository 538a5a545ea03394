"""Per-layer leakage scores and the update gate.

Two entry points:

* :func:`layer_scores` (audit, with the client's batch): for every group of
  :func:`~segaudit.models.layer_groups` it runs the scorers of :data:`LAYER_SCORERS`:

  - ``attack``: the ``seg`` inversion attack matching **only that group's tensors** of the update
    (same step budget for every group), scored against the truth by PSNR / SSIM / mask Dice;
  - ``analytic``: R-GAP-style constraint counting for every conv/linear layer of the group (see
    :func:`gradient_system` and :func:`analyze_system`): how many of the layer's input values the
    layer's own weight gradient pins down (rank deficiency) and how stably (condition number);
  - ``sensitivity``: how strongly (relative gradient change under a small input change) and how
    uniquely (one minus the largest cosine between different images' gradients) the group's gradient
    depends on the input, over a few images of the dataset.

  The combined ``score`` in [0, 1] is the mean of the available component exposures (each in [0, 1],
  see :func:`combine`) and groups are ranked by it.

* :func:`gate_update` (no batch, no attack, a few seconds): an update-only risk score a client runs
  before sharing (see its docstring for what it computes and how its scale was calibrated).

Shapes: N images per batch, C channels, H x W pixels, O output channels, k kernel side.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import SegauditError
from .registry import Registry
from .types import Batch, ClientUpdate, Prior, Reconstruction

__all__ = [
    "GateResult", "GroupScore", "LAYER_SCORERS", "LayerReport", "ablation_attack", "analyze_system",
    "attack_with_layers", "combine", "gate_update", "gradient_system", "layer_scores",
]

# A scorer maps (context, group) -> fields of GroupScore; it may fill ctx.cache once for all groups.
LayerScorer = Callable[["ScoringContext", Any], dict[str, Any]]
LAYER_SCORERS: Registry[LayerScorer] = Registry("layer scorer")

PSNR_SPAN_DB = 10.0  # attack exposure: PSNR gain over the flat-image baseline, 10 dB = fully exposed
_WEIGHT_LAYERS = (nn.Conv2d, nn.Linear)


# --------------------------------------------------------------------------------------------------
# Results


@dataclass
class GroupScore:
    """Scores of one layer group.

    Attributes:
        name, kind, params: the :class:`~segaudit.models.LayerGroup`.
        score: combined exposure in [0, 1] (higher = leaks more); ``None`` if nothing was scored.
        attack_psnr, attack_ssim, attack_dice: the group-restricted attack against the truth.
        rank_deficiency: fraction in [0, 1] of the most exposed layer's input values that its weight
            gradient leaves undetermined (``None`` for groups without conv/linear weights).
        condition: condition number of that layer's gradient system on its row space.
        sensitivity: ``uniqueness * gain / (1 + gain)`` in [0, 1].
        uniqueness, gain: the two parts of ``sensitivity``.
        components: the exposures that ``score`` averages (``attack``, ``analytic``, ``sensitivity``).
        tensors: per weight tensor: name, shape, rank_deficiency, condition, unknowns, rank.
    """

    name: str
    kind: str
    params: list[str]
    score: float | None = None
    attack_psnr: float | None = None
    attack_ssim: float | None = None
    attack_dice: float | None = None
    rank_deficiency: float | None = None
    condition: float | None = None
    sensitivity: float | None = None
    uniqueness: float | None = None
    gain: float | None = None
    components: dict[str, float] = field(default_factory=dict)
    tensors: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class LayerReport:
    """What :func:`layer_scores` found.

    Attributes:
        groups: one :class:`GroupScore` per layer group, in model order.
        full: the attack on the whole update with the same budget (``psnr``, ``ssim``, ``mask_dice``, ...).
        baseline: a flat image at each true image's mean intensity and an empty mask, scored the same way
            (what an attacker gets for free).
        settings: scorers, steps, seed, batch size, mode, size.
        runtime_s: wall time of each scorer and in total.
    """

    groups: list[GroupScore]
    full: dict[str, float | None] = field(default_factory=dict)
    baseline: dict[str, float | None] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    runtime_s: dict[str, float] = field(default_factory=dict)

    def ranking(self) -> list[str]:
        """Group names, most exposed first (unscored groups last)."""
        scored = sorted((g for g in self.groups if g.score is not None), key=lambda g: -g.score)
        return [g.name for g in scored] + [g.name for g in self.groups if g.score is None]

    def to_dict(self) -> dict[str, Any]:
        """The ``layers.json`` payload: ``{"groups": [...], "ranking", "full", "baseline", ...}``."""
        return {"groups": [asdict(g) for g in self.groups], "ranking": self.ranking(), "full": self.full,
                "baseline": self.baseline, "settings": self.settings, "runtime_s": self.runtime_s}


@dataclass
class ScoringContext:
    """Inputs shared by the scorers (built once by :func:`layer_scores`)."""

    model: nn.Module
    batch: Batch
    update: ClientUpdate
    prior: Prior
    groups: list
    probes: torch.Tensor | None
    steps: int
    seed: int
    cache: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------------
# Analytic: the linear system of one layer's weight gradient


def gradient_system(layer: nn.Module, x_shape: Sequence[int], delta: torch.Tensor) -> torch.Tensor:
    """The matrix ``D`` of the linear map from one input channel to that channel's weight gradient.

    For ``y = conv(x, W)`` the weight gradient is ``dW[o, c, u, v] = sum_n sum_p delta[n, o, p] *
    x[n, c, p * stride + (u, v) * dilation - padding]``: linear in ``x`` once ``delta = dL/dy`` is known
    (R-GAP and Chen & Campbell solve the layers backward from the output, so ``delta`` is known when the
    layer is reached). The map is the same for every input channel ``c``, so the whole system is
    ``I_C (x) D`` and ``rank = C * rank(D)``. For ``nn.Linear`` (``dW = delta^T x``), ``D = delta^T``.

    Args:
        layer: ``nn.Conv2d`` (``groups == 1``) or ``nn.Linear``.
        x_shape: the layer input's shape, ``[N, C, H, W]`` or ``[N, F]``.
        delta: ``dL/dy``, ``[N, O, Ho, Wo]`` or ``[N, O]``.

    Returns:
        ``D``: ``[O * kh * kw, N * H * W]`` (conv) or ``[O, N]`` (linear), float64; rows are the weight
        gradient entries of one input channel (order ``o, u, v``), columns that channel's input values
        (order ``n, i, j``).

    Example:
        >>> D = gradient_system(nn.Linear(3, 2), (1, 3), torch.tensor([[1.0, 2.0]]))   # [[1], [2]]
    """
    delta = delta.detach().double()
    if isinstance(layer, nn.Linear):
        return delta.t().contiguous()
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
    from .losses import task_loss

    seen: dict[str, tuple[torch.Size, torch.Tensor]] = {}
    outputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook(name):
        def fn(_module, inputs, output):
            seen[name] = (inputs[0].shape, None)
            outputs[name] = output
            return output.clone()  # later in-place ops (ReLU) must not touch the tensor we differentiate
        return fn

    for name, module in modules.items():
        handles.append(module.register_forward_hook(hook(name)))
    try:
        model.train(update_meta.train_mode)
        loss = task_loss(model(batch.images), batch.masks, update_meta.loss, update_meta.reduction)
        names = list(outputs)
        grads = torch.autograd.grad(loss, [outputs[n] for n in names], allow_unused=True)
    finally:
        for h in handles:
            h.remove()
    return {n: (seen[n][0], g if g is not None else torch.zeros_like(outputs[n])) for n, g in zip(names, grads)}


@LAYER_SCORERS.register("analytic")
def analytic_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """R-GAP-style counting for every conv/linear weight of ``group`` (see :func:`analyze_system`).

    The group reports its **most exposed** layer (highest :func:`analytic_exposure`).
    """
    if "layer_io" not in ctx.cache:
        modules = {n: m for n, m in ctx.model.named_modules()
                   if isinstance(m, _WEIGHT_LAYERS) and getattr(m, "groups", 1) == 1
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
        stats = analyze_system(gradient_system(modules[module_name], x_shape, delta), channels=int(x_shape[1]))
        row = {"name": param, "shape": list(modules[module_name].weight.shape), **stats,
               "exposure": analytic_exposure(stats["rank_deficiency"], stats["condition"])}
        rows.append(row)
        if best is None or row["exposure"] > best["exposure"]:
            best = row
    if best is None:
        return {"tensors": rows}
    return {"rank_deficiency": best["rank_deficiency"], "condition": best["condition"],
            "components": {"analytic": best["exposure"]}, "tensors": rows}


# --------------------------------------------------------------------------------------------------
# Attack


def attack_with_layers(model: nn.Module, update: ClientUpdate, prior: Prior, layers: Iterable[str],
                       steps: int = 30, seed: int = 0) -> Reconstruction:
    """The ``seg`` attack matching only ``layers`` (parameter names or prefixes) of ``update``.

    The attacker gets only those tensors: the mask starts from the class composition recovered from the
    head's bias gradient when that tensor is among ``layers``, else from a uniform composition. For
    FedSGD only the chosen parameters are differentiated (exact and cheaper); for FedAvg the whole
    unrolled client computation is simulated and only the chosen tensors compared. No BatchNorm prior;
    the ``layer_cosine`` objective with exact double backpropagation (better than ``seg``'s defaults at
    these short budgets).

    Args:
        model, update, prior: as for :meth:`segaudit.attacks.Attack.run`.
        layers: what the attacker sees.
        steps: optimisation steps (one restart).
        seed: the restart's seed.

    Returns:
        The reconstruction (images ``[N,C,H,W]``, masks ``[N,H,W]``).
    """
    from .attacks.base import best_restart
    from .attacks.inversion import MatchingLoss, SegmentationInversion
    from .attacks.objectives import GradientMatcher
    from .attacks.recovery import recover_labels_or_composition
    from .fl import check_update

    check_update(model, update)
    if prior.task != "segmentation":
        raise SegauditError("per-layer attack scores need a segmentation model; classification models get "
                            "analytic and sensitivity scores only (scorers=('analytic', 'sensitivity'))")
    # short budgets on small crops: plain layer_cosine did better there than the long-run defaults of `seg`
    # (tiny U-Net, 16 px, 50 steps: 18.9 dB against 12.4 dB)
    attacker = SegmentationInversion(steps=steps, seed=seed, bn=0.0, objective="layer_cosine", relu_curvature=0.0)
    net = copy.deepcopy(model)
    for p in net.parameters():
        p.requires_grad_(False)
    objective, curvature = attacker.loss_settings(prior)
    matcher = GradientMatcher(update.tensors, objective, list(layers))
    head_bias = _head_bias(net)
    if head_bias in matcher.names:
        extras = recover_labels_or_composition(net, update, prior)
    else:
        extras = {"composition": torch.full((prior.num_classes,), 1.0 / prior.num_classes)}
    loss = MatchingLoss(net, update, matcher, relu_curvature=curvature)
    [result] = attacker._restarts(loss, prior, [torch.Generator().manual_seed(seed)], extras)
    return best_restart([result], prior.task, extras)


def _head_bias(model: nn.Module) -> str | None:
    """Name of the last parameter ending in ``.bias`` (the output layer's bias), if any."""
    names = [n for n, _ in model.named_parameters() if n.endswith(".bias")]
    return names[-1] if names else None


def ablation_attack(model: nn.Module, update: ClientUpdate, batch: Batch, drop: Iterable[str] = (),
                    steps: int = 30, seed: int = 0) -> dict[str, float | None]:
    """The full attack with the tensors of ``drop`` removed from the update, scored against ``batch``.

    Args:
        drop: layer group names of :func:`~segaudit.models.layer_groups` (e.g. ``"encoder.stem"``),
            parameter names or name prefixes.

    Returns:
        :func:`segaudit.metrics.score` of the reconstruction (``psnr``, ``ssim``, ``mask_dice``, ...).
    """
    from .attacks.objectives import select_names
    from .metrics import score
    from .models import layer_groups

    by_group = {g.name: list(g.params) for g in layer_groups(model)}
    drop = list(drop)
    dropped = {p for d in drop for p in by_group.get(d, ()) if p in update.tensors}  # frozen params: no tensor
    others = [d for d in drop if d not in by_group]
    dropped |= set(select_names(update.tensors, others)) if others else set()
    keep = [n for n in update.tensors if n not in dropped]
    if not keep:
        raise SegauditError("dropping these groups leaves no tensor to attack; drop fewer groups")
    rec = attack_with_layers(model, update, Prior.from_batch_shape(batch), keep, steps, seed)
    return score(rec, batch)


def flat_baseline(batch: Batch) -> dict[str, float | None]:
    """Scores of a flat image at each true image's mean and an empty (background) mask."""
    from .metrics import score

    flat = batch.images.mean(dim=(2, 3), keepdim=True).expand_as(batch.images).clone()
    masks = torch.zeros_like(batch.masks) if batch.task == "segmentation" else None
    labels = None if batch.task == "segmentation" else torch.zeros_like(batch.masks)
    return score(Reconstruction(flat, masks=masks, labels=labels), batch)


def attack_exposure(metrics: Mapping[str, float | None], baseline: Mapping[str, float | None]) -> float | None:
    """Mean of the PSNR gain over the flat baseline (/10 dB), the SSIM gain over it (/(1 - SSIM_flat))
    and the mask Dice, each clipped to [0, 1]; ``None`` when the attack produced nothing."""
    if metrics.get("psnr") is None:
        return None
    psnr = _clip((metrics["psnr"] - baseline["psnr"]) / PSNR_SPAN_DB)
    ssim = _clip((metrics["ssim"] - baseline["ssim"]) / max(1e-6, 1 - baseline["ssim"]))
    parts = [psnr, ssim] + ([_clip(metrics["mask_dice"])] if metrics.get("mask_dice") is not None else [])
    return sum(parts) / len(parts)


def _clip(x: float) -> float:
    return float(min(1.0, max(0.0, x))) if math.isfinite(x) else (1.0 if x > 0 else 0.0)


@LAYER_SCORERS.register("attack")
def attack_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """The group-restricted ``seg`` attack, ``ctx.steps`` steps, scored against the true batch."""
    from .metrics import score

    names = [p for p in group.params if p in ctx.update.tensors]
    if not names or all(float(ctx.update.tensors[n].abs().max()) == 0 for n in names):
        return {}
    if "baseline" not in ctx.cache:
        ctx.cache["baseline"] = flat_baseline(ctx.batch)
    rec = attack_with_layers(ctx.model, ctx.update, ctx.prior, names, ctx.steps, ctx.seed)
    m = score(rec, ctx.batch)
    out: dict[str, Any] = {"attack_psnr": m["psnr"], "attack_ssim": m["ssim"], "attack_dice": m["mask_dice"]}
    exposure = attack_exposure(m, ctx.cache["baseline"])
    if exposure is not None:
        out["components"] = {"attack": exposure}
    return out


# --------------------------------------------------------------------------------------------------
# Sensitivity

_SAMPLE = 50_000  # coordinates per group kept for cosines (a fixed random subset of larger groups)


def _per_image_grads(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, meta, groups,
                     seed: int) -> list[dict[str, torch.Tensor]]:
    """Per image: group name -> the group's gradient (flattened, subsampled to ``_SAMPLE`` entries)."""
    from .fl import trainable_params
    from .losses import task_loss

    params = trainable_params(model)
    gen = torch.Generator().manual_seed(seed)
    index: dict[str, list[tuple[str, torch.Tensor | None]]] = {}
    for g in groups:
        names = [p for p in g.params if p in params]
        total = sum(params[p].numel() for p in names)
        keep = min(1.0, _SAMPLE / max(total, 1))
        index[g.name] = [(p, None if keep >= 1 else
                          torch.randperm(params[p].numel(), generator=gen)[: max(1, int(params[p].numel() * keep))])
                         for p in names]
    model.train(meta.train_mode)
    out = []
    for i in range(images.shape[0]):
        loss = task_loss(model(images[i: i + 1]), masks[i: i + 1], meta.loss, meta.reduction)
        grads = dict(zip(params, torch.autograd.grad(loss, list(params.values()), allow_unused=True)))
        row = {}
        for gname, entries in index.items():
            parts = []
            for p, idx in entries:
                gp = grads[p] if grads[p] is not None else torch.zeros_like(params[p])
                parts.append(gp.detach().flatten() if idx is None else gp.detach().flatten()[idx])
            row[gname] = torch.cat(parts).double() if parts else torch.zeros(0, dtype=torch.float64)
        out.append(row)
    return out


@LAYER_SCORERS.register("sensitivity")
def sensitivity_scorer(ctx: ScoringContext, group) -> dict[str, Any]:
    """How strongly and how uniquely the group's gradient depends on the image.

    Over M single images of the dataset (``ctx.probes``, the client's images first):

    * ``uniqueness`` = mean over images of ``1 - max_{j != i} cos(g_i, g_j)`` (clipped to [0, 1]): 0 when
      another image gives the same gradient direction, so the group cannot tell them apart;
    * ``gain`` = mean over images of ``(||g(x + e) - g(x)|| / ||g(x)||) / (||e|| / ||x||)`` for a random
      perturbation ``e`` of 1 % of the image norm: the elasticity of the gradient to the input;
    * ``sensitivity = uniqueness * gain / (1 + gain)``.

    Groups with more than 50 000 entries are compared on a fixed random subset of that size.
    """
    if "sens" not in ctx.cache:
        ctx.cache["sens"] = _sensitivities(ctx)
    values = ctx.cache["sens"].get(group.name)
    if values is None:
        return {}
    uniqueness, gain = values
    sensitivity = uniqueness * gain / (1 + gain)
    return {"uniqueness": uniqueness, "gain": gain, "sensitivity": sensitivity,
            "components": {"sensitivity": sensitivity}}


def _sensitivities(ctx: ScoringContext) -> dict[str, tuple[float, float]]:
    images, masks = ctx.probes
    if images.shape[0] < 2:
        return {}
    gen = torch.Generator().manual_seed(ctx.seed + 1)
    noise = torch.randn(images.shape, generator=gen)
    scale = 0.01 * images.flatten(1).norm(dim=1) / noise.flatten(1).norm(dim=1)
    shifted = images + noise * scale.view(-1, 1, 1, 1)
    clean = _per_image_grads(ctx.model, images, masks, ctx.update.meta, ctx.groups, ctx.seed)
    moved = _per_image_grads(ctx.model, shifted, masks, ctx.update.meta, ctx.groups, ctx.seed)
    out = {}
    for g in ctx.groups:
        vecs = torch.stack([row[g.name] for row in clean])
        if vecs.shape[1] == 0:
            continue
        norms = vecs.norm(dim=1)
        if float(norms.min()) == 0:
            continue
        unit = vecs / norms[:, None]
        cos = unit @ unit.t()
        cos.fill_diagonal_(-math.inf)
        uniqueness = float((1 - cos.max(dim=1).values).clamp(0, 1).mean())
        change = torch.stack([row[g.name] for row in moved]) - vecs
        gain = float((change.norm(dim=1) / norms / 0.01).mean())
        out[g.name] = (uniqueness, gain)
    return out


# --------------------------------------------------------------------------------------------------
# Combined


def combine(components: Mapping[str, float]) -> float | None:
    """The combined score: the unweighted mean of the available exposures, each in [0, 1]."""
    values = [v for v in components.values() if v is not None]
    return float(sum(values) / len(values)) if values else None


def layer_scores(model: nn.Module, batch: Batch, *, data=None, scorers: Sequence[str] = ("attack", "analytic",
                 "sensitivity"), steps: int = 30, seed: int = 0, mode: str = "fedsgd", train_mode: bool = True,
                 probes: int = 6, full_attack: bool = True, show_progress: bool = False) -> LayerReport:
    """Score every layer group of ``model`` for the client's ``batch``.

    Args:
        model: a segmentation model (classifiers: ``scorers=("analytic", "sensitivity")``).
        batch: the client's private batch; the update is simulated from it with :func:`segaudit.fl.client_update`.
        data: a :class:`~segaudit.data.Dataset` from which ``probes`` extra single images are drawn for the
            sensitivity scorer (crops of the batch's size); ``None`` uses the batch's own images only.
        scorers: names in :data:`LAYER_SCORERS`.
        steps: the attack budget per group (and for the full-update reference attack).
        seed: seeds the attacks and the probes.
        mode, train_mode: the client's protocol (FedSGD in train mode by default, as real clients train:
            see :data:`segaudit.config.CLIENT_MODE`).
        probes: images for the sensitivity scorer (at least 2 are needed).
        full_attack: also run the attack on the whole update (the report's ``full`` entry).
        show_progress: a progress bar over groups.

    Returns:
        A :class:`LayerReport`; ``report.ranking()`` lists groups from most to least exposed.

    Example:
        >>> report = layer_scores(build_model("unet", in_channels=1), make_batch(load_dataset("nuclei"), [0]))
        >>> report.ranking()[:3]
    """
    from .fl import client_update
    from .models import layer_groups
    from .progress import progress

    for name in scorers:
        LAYER_SCORERS.get(name)
    if steps < 1:
        raise SegauditError(f"steps must be at least 1, got {steps}")
    started = time.perf_counter()
    model = copy.deepcopy(model)
    update = client_update(model, batch, mode=mode, train_mode=train_mode, lr=0.01)
    groups = layer_groups(model)
    ctx = ScoringContext(model, batch, update, Prior.from_batch_shape(batch), groups,
                         _probe_batch(batch, data, probes, seed), steps, seed)
    results = [GroupScore(g.name, g.kind, list(g.params)) for g in groups]
    runtime: dict[str, float] = {}
    for name in scorers:
        scorer = LAYER_SCORERS.get(name)
        t0 = time.perf_counter()
        for group, result in progress(list(zip(groups, results)), f"{name} scores", total=len(groups),
                                      enabled=show_progress):
            _merge(result, scorer(ctx, group))
        runtime[name] = time.perf_counter() - t0
    for result in results:
        result.score = combine(result.components)
    full: dict[str, float | None] = {}
    if full_attack and ctx.prior.task == "segmentation":
        t0 = time.perf_counter()
        full = ablation_attack(model, update, batch, (), steps, seed)
        runtime["full_attack"] = time.perf_counter() - t0
    runtime["total"] = time.perf_counter() - started
    settings = {"scorers": list(scorers), "steps": steps, "seed": seed, "mode": mode, "train_mode": train_mode,
                "batch_size": len(batch), "size": list(batch.images.shape[-2:]), "probes": int(ctx.probes[0].shape[0])}
    baseline = ctx.cache.get("baseline") or (flat_baseline(batch) if ctx.prior.task == "segmentation" else {})
    return LayerReport(results, full, baseline, settings, runtime)


def _merge(result: GroupScore, values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if key == "components":
            result.components.update(value)
        elif key == "tensors":
            result.tensors.extend(value)
        else:
            setattr(result, key, value)


def _probe_batch(batch: Batch, data, count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images ``[M,C,H,W]`` and masks for the sensitivity scorer: the batch's images, then dataset crops."""
    images, masks = batch.images, batch.masks
    if data is not None and images.shape[0] < count:
        from .data import make_batch

        size = int(batch.images.shape[-1])
        extra = make_batch(data, [i % len(data) for i in range(count - images.shape[0])], size=size, seed=seed + 7,
                           fit="crop" if data.min_size >= size else "resize", stride=1,
                           mean=batch.mean or 0.5, std=batch.std or 0.5)
        images, masks = torch.cat([images, extra.images]), torch.cat([masks, extra.masks])
    return images[:max(count, 2)], masks[:max(count, 2)]


# --------------------------------------------------------------------------------------------------
# The update gate: an update-only risk score, no batch and no attack

DEFAULT_THRESHOLD = 0.5
NORM_SLACK = 4.0  # a real update may be this many times the probe gradient's norm before the excess counts as noise


@dataclass
class GateResult:
    """What :func:`gate_update` decided.

    Attributes:
        risk: the update's risk score in [0, 1]: the risk of the image-facing group.
        threshold: the threshold compared with.
        above: ``risk > threshold`` (the CLI exits 3).
        groups: per group ``{"name", "kind", "risk", "determined", "signal", "nonzero"}``, model order.
        riskiest: group names by decreasing risk (at most 3).
        notes: facts worth a line each (e.g. the head bias gradient exposes the class composition).
    """

    risk: float
    threshold: float
    above: bool
    groups: list[dict[str, Any]]
    riskiest: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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

    Calibration (``python bench/layers.py``, README): for Unet-resnet18 at 64 px the image-facing
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
    from .fl import check_update, trainable_params
    from .losses import task_loss
    from .models import is_segmentation, layer_groups

    if not 0 <= threshold <= 1:
        raise SegauditError(f"threshold must be in [0, 1], got {threshold}")
    check_update(model, update)
    spec = getattr(model, "segaudit_spec", None) or {}
    model = copy.deepcopy(model)
    n = max(1, int(update.meta.batch_size))
    c = int(spec.get("in_channels")
            or next(m for m in model.modules() if isinstance(m, _WEIGHT_LAYERS)).weight.shape[1])
    k = int(spec.get("classes") or 2)
    gen = torch.Generator().manual_seed(seed)
    probes = F.interpolate(torch.randn(n, c, max(size // 8, 1), max(size // 8, 1), generator=gen), size=(size, size),
                           mode="bilinear", align_corners=False)
    modules = {name: m for name, m in model.named_modules() if isinstance(m, _WEIGHT_LAYERS)}
    shapes: dict[str, torch.Size] = {}
    order: list[str] = []
    def record(name):
        def hook(_module, inputs, _output):
            shapes.setdefault(name, inputs[0].shape)
            order.append(name)
        return hook

    handles = [m.register_forward_hook(record(name)) for name, m in modules.items()]
    model.train(update.meta.train_mode)
    try:
        logits = model(probes)
    except (RuntimeError, ValueError) as error:
        raise SegauditError(f"the model cannot run on {size}x{size} images ({str(error).splitlines()[0][:120]}): "
                            f"give the client's image size with --size") from None
    finally:
        for h in handles:
            h.remove()
    target = (torch.randint(0, k, logits.shape[:1] + logits.shape[2:], generator=gen) if is_segmentation(model)
              else torch.randint(0, k, (n,), generator=gen))
    params = trainable_params(model)
    ref = dict(zip(params, torch.autograd.grad(task_loss(logits, target, update.meta.loss, update.meta.reduction),
                                               list(params.values()), allow_unused=True)))
    scale = update.meta.lr * update.meta.local_steps if update.meta.mode == "fedavg" else 1.0
    groups = layer_groups(model)
    rows = []
    for g in groups:
        names = [p for p in g.params if p in update.tensors]
        if not names:
            continue
        entries = sum(update.tensors[p].numel() for p in names)
        nonzero = sum(int((update.tensors[p] != 0).sum()) for p in names) / max(entries, 1)
        u_norm = math.sqrt(sum(float(update.tensors[p].double().pow(2).sum()) for p in names))
        r_norm = scale * math.sqrt(sum(float(ref[p].double().pow(2).sum()) for p in names if ref[p] is not None))
        signal = 0.0 if u_norm == 0 else min(1.0, (NORM_SLACK * r_norm / u_norm) ** 2) if r_norm > 0 else 1.0
        determined = max((_count_determined(modules[p.rsplit('.', 1)[0]], shapes[p.rsplit('.', 1)[0]], n)
                          for p in names if p.endswith(".weight") and p.rsplit(".", 1)[0] in shapes), default=0.0)
        rows.append({"name": g.name, "kind": g.kind, "risk": determined * nonzero * signal, "determined": determined,
                     "signal": signal, "nonzero": nonzero})
    first = next((name for name in order if modules[name].weight.requires_grad), None)
    facing = next((g.name for g in groups if first is not None and f"{first}.weight" in g.params), None)
    risk = next((r["risk"] for r in rows if r["name"] == facing), 0.0)
    notes = []
    if facing is not None:
        notes.append(f"image-facing group: {facing}")
    head_bias = _head_bias(model)
    if head_bias in update.tensors and update.meta.mode == "fedsgd" and bool((update.tensors[head_bias] != 0).any()):
        notes.append(f"{head_bias} reveals the batch's class composition analytically (any risk)")
    riskiest = [r["name"] for r in sorted(rows, key=lambda r: -r["risk"])[:3]]
    return GateResult(float(risk), float(threshold), bool(risk > threshold), rows, riskiest, notes)


def _count_determined(module: nn.Module, x_shape: torch.Size, n: int) -> float:
    """R-GAP's data-free count: the share of a layer's input values its weight gradient can determine."""
    if isinstance(module, nn.Linear):
        return min(module.out_features, n) / n
    if isinstance(module, nn.Conv2d) and module.groups == 1:
        kh, kw = module.kernel_size
        return min(1.0, module.out_channels * kh * kw / (n * int(x_shape[-2]) * int(x_shape[-1])))
    return 0.0
