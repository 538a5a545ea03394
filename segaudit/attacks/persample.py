"""The matching loss of R restarts from one batched pass through the model.

An attack with R restarts needs R simulated updates, one per restart's dummy batch. Running restarts one
after another repeats every small operator R times; stacking the R dummy batches on the batch axis runs the
model once and uses the hardware far better (on 2 CPU cores a batch of 8 costs about twice a batch of 1 at
64 px), but autograd then returns only the *sum* of the R gradients. :class:`GroupedMatcher` gets each
restart's matching loss from the one batched pass, the way per-sample-gradient engines do: forward hooks
record each layer's input ``a``, one backward pass gives the gradient ``delta`` at each layer's output, and
a Conv2d/Linear weight gradient is ``delta @ unfold(a)^T`` per restart. The cosine objectives need only
``<g, g*>`` and ``||g||^2`` per tensor, so for the large, deep weights (few positions, many entries) those are
computed without materialising ``g`` ("ghost" inner products and norms, as in ghost clipping):

    <g, T> = <delta, T @ unfold(a)>          ||g||^2 = <delta^T delta, unfold(a)^T unfold(a)>

Everything is differentiable, so the attack backpropagates its R losses to the R dummy batches at once.

Exact for FedSGD clients in eval mode (the samples of a batch do not interact) whose matched tensors belong
to Conv2d, Linear, GroupNorm and eval-mode BatchNorm2d layers, matched with an objective of ``FROM_STATS``: every smp
architecture on a ResNet-style encoder. :func:`unsupported` says why a case falls outside; attacks then run
their restarts one by one.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..losses import task_loss
from ..types import UpdateMeta
from .objectives import FROM_STATS, GradientMatcher

SUPPORTED = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GroupNorm)


def unsupported(model: nn.Module, matcher: GradientMatcher, meta: UpdateMeta) -> str | None:
    """Why the restarts of this attack cannot share one batched pass (``None`` when they can)."""
    if matcher.name not in FROM_STATS:
        return f"objective {matcher.name!r} needs whole simulated updates"
    if meta.mode != "fedsgd":
        return "FedAvg unrolls local steps with per-restart weights"
    if meta.train_mode:
        return "train-mode BatchNorm couples the samples of a batch"
    for name, module in _owners(model, matcher.names).items():
        if not isinstance(module, SUPPORTED):
            return f"{name} belongs to a {type(module).__name__}"
        if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
            return f"{name}: padding {module.padding!r}, mode {module.padding_mode!r}"
        if isinstance(module, nn.BatchNorm2d) and module.running_mean is None:
            return f"{name}: BatchNorm without running statistics"
    return None


class GroupedMatcher:
    """R restarts' matching losses from one batched forward and backward pass.

    Args:
        model: the attacker's copy of the global model (put in eval mode; its parameters are not used).
        params: parameter name -> value at the start of the round.
        buffers: buffer name -> value.
        matcher: the objective (one of ``FROM_STATS``) and the shared tensors.
        meta: the shared update's metadata; :func:`unsupported` must return ``None`` for this case.

    Example:
        >>> losses = GroupedMatcher(model, params, buffers, matcher, update.meta)(images, targets)  # [R]
    """

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                 matcher: GradientMatcher, meta: UpdateMeta):
        self.model, self.params, self.buffers, self.matcher, self.meta = model, params, buffers, matcher, meta
        self.owners = _owners(model, matcher.names)
        self.support = dict(zip(matcher.names, matcher.support or [None] * len(matcher.names)))
        self.copied: set[nn.Module] = set()  # layers whose input or output a later in-place op changes

    def __call__(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``images [R,N,C,H,W]`` and soft ``targets [R,N,K,H,W]`` (or ``[R,N,K]``) -> losses ``[R]``."""
        r, n = images.shape[:2]
        inputs: dict[nn.Module, torch.Tensor] = {}
        outputs: dict[nn.Module, torch.Tensor] = {}
        versions: dict[nn.Module, tuple[int, int]] = {}

        def copy_input(module, args):
            return (args[0].clone(), *args[1:]) if module in self.copied else None

        def record(module, args, out):
            inputs[module], outputs[module] = args[0], out
            versions[module] = (args[0]._version, out._version)
            return out.clone() if module in self.copied else out

        modules = set(self.owners.values())
        handles = [h for m in modules
                   for h in (m.register_forward_pre_hook(copy_input), m.register_forward_hook(record))]
        try:
            self.model.eval()
            logits = functional_call(self.model, {**self.params, **self.buffers}, (images.flatten(0, 1),))
        finally:
            for h in handles:
                h.remove()
        changed = {m for m in outputs if (inputs[m]._version, outputs[m]._version) != versions[m]}
        if changed:  # an in-place op (ReLU, residual +=) overwrote a recorded tensor: copy those and run again
            self.copied |= changed
            return self(images, targets)
        logits = logits.unflatten(0, (r, n))
        loss = sum(task_loss(logits[i], targets[i], self.meta.loss, self.meta.reduction) for i in range(r))
        seen = list(outputs)
        deltas = dict(zip(seen, torch.autograd.grad(loss, [outputs[m] for m in seen], create_graph=True)))
        dots, norms = [], []
        for name, target in zip(self.matcher.names, self.matcher.target):
            module = self.owners[name]
            if module not in inputs:  # not on the forward path (e.g. encoder stages beyond the depth used)
                dots.append(logits.new_zeros(r))
                norms.append(logits.new_zeros(r))
                continue
            dot, sq = _stats(module, name.rsplit(".", 1)[-1], inputs[module], deltas[module], r, target,
                             self.support[name])
            dots.append(dot)
            norms.append(sq)
        return self.matcher.from_stats(dots, norms)


def _owners(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """Parameter name -> the module that owns it."""
    modules = dict(model.named_modules())
    return {n: modules[n.rsplit(".", 1)[0] if "." in n else ""] for n in names}


def _stats(module: nn.Module, kind: str, a: torch.Tensor, delta: torch.Tensor, r: int, target: torch.Tensor,
           support: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(<g_r, target>, ||g_r||^2)``, each ``[R]``, for one parameter (``kind`` "weight"/"bias") of ``module``,
    from its input ``a`` and output gradient ``delta`` (R*N samples on dim 0)."""
    if isinstance(module, nn.BatchNorm2d):
        # eval mode, y = (x - mean) / std * w + b: dw = (sum delta * x - mean * sum delta) / std
        a, delta = a.unflatten(0, (r, -1)).flatten(3), delta.unflatten(0, (r, -1)).flatten(3)  # [R,N,C,HW]
        grad = delta.sum((1, 3))
        if kind == "weight":
            std = (module.running_var + module.eps).sqrt()
            grad = (torch.einsum("rncp,rncp->rc", delta, a) - module.running_mean * grad) / std
        return _dense_stats(grad, target, support)
    if isinstance(module, nn.GroupNorm):  # per sample: y = x_hat * w + b
        x_hat = F.group_norm(a, module.num_groups, eps=module.eps) if kind == "weight" else 1
        return _dense_stats(_channel_sums(delta * x_hat, r), target, support)
    if kind == "bias":
        grad = (delta.reshape(r, -1, delta.shape[-1]).sum(1) if isinstance(module, nn.Linear)
                else _channel_sums(delta, r))
        return _dense_stats(grad, target, support)
    groups = getattr(module, "groups", 1)
    o, k = target.shape[0] // groups, target[0].numel()
    m = delta.numel() // (r * target.shape[0])  # samples x positions per restart
    if support is not None or m * (o + k) >= o * k:  # few entries or a support mask: materialise g
        return _dense_stats(_weight_grads(module, a, delta, r), target, support)
    d, cols = _factors(module, a, delta, r)  # [R,G,o,M], [R,G,k,M]: g_r = d_r @ cols_r^T per group
    t_cols = target.reshape(groups, o, k) @ cols.permute(1, 2, 0, 3).flatten(2)  # one GEMM for all restarts
    dot = (t_cols.unflatten(2, (r, m)).permute(2, 0, 1, 3) * d).sum((1, 2, 3))
    sq = ((d.transpose(-1, -2) @ d) * (cols.transpose(-1, -2) @ cols)).sum((1, 2, 3))
    return dot, sq


def _channel_sums(t: torch.Tensor, r: int) -> torch.Tensor:
    """``[R*N, C, ...] -> [R, C]``: each restart's sum over its samples and positions."""
    return t.unflatten(0, (r, -1)).transpose(1, 2).flatten(2).sum(-1)


def _dense_stats(grad: torch.Tensor, target: torch.Tensor, support: torch.Tensor | None):
    """``(<g_r, target>, ||g_r||^2)`` of materialised per-restart gradients ``[R, *shape]``."""
    if support is not None:
        grad = grad * support
    flat = grad.flatten(1)
    return flat @ target.flatten(), flat.pow(2).sum(1)


def _factors(module: nn.Module, a: torch.Tensor, delta: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-restart factors of a Conv2d/Linear weight gradient, ``d [R,G,o,M]`` and ``cols [R,G,k,M]`` with
    ``grad_r = d_r @ cols_r^T`` per group (G groups, o outputs and k inputs per group, M = samples x positions)."""
    if isinstance(module, nn.Linear):
        a = a.reshape(r, -1, a.shape[-1]).transpose(1, 2).unsqueeze(1)
        return delta.reshape(r, -1, delta.shape[-1]).transpose(1, 2).unsqueeze(1), a
    g = module.groups
    cols = F.unfold(a, module.kernel_size, dilation=module.dilation, padding=module.padding, stride=module.stride)
    positions = cols.shape[-1]
    cols = cols.view(r, -1, g, cols.shape[1] // g, positions).permute(0, 2, 3, 1, 4).flatten(3)
    d = delta.reshape(r, -1, g, delta.shape[1] // g, positions).permute(0, 2, 3, 1, 4).flatten(3)
    return d, cols


def _weight_grads(module: nn.Module, a: torch.Tensor, delta: torch.Tensor, r: int) -> torch.Tensor:
    """Materialised per-restart weight gradients ``[R, *weight.shape]`` of a Conv2d or Linear layer."""
    if isinstance(module, nn.Linear):
        d, cols = _factors(module, a, delta, r)
        return (d @ cols.transpose(-1, -2)).flatten(1, 2)
    # the R restarts as R convolution groups: one weight-gradient call gives every restart's gradient
    to_groups = lambda t: t.unflatten(0, (r, -1)).transpose(0, 1).flatten(1, 2)  # noqa: E731 [N, R*C, H, W]
    weight = module.weight.repeat(r, 1, 1, 1)
    grad = torch.ops.aten.convolution_backward(
        to_groups(delta), to_groups(a), weight, None, module.stride, module.padding, module.dilation, False,
        [0, 0], module.groups * r, [False, True, False])[1]
    return grad.unflatten(0, (r, -1))
