"""Differential privacy with Opacus: DP-SGD training, DP client updates and privacy accounting.

Everything DP here is Opacus's own machinery: ``ModuleValidator.fix`` (BatchNorm -> GroupNorm),
``GradSampleModule`` per-sample gradients, ``DPOptimizer`` clipping and noise, ``PrivacyEngine`` with
Poisson sampling, and the RDP / PRV accountants. segaudit adds validation with one-line errors, the
in-place fixes smp models need, and the bookkeeping (epsilon, delta, sigma, C, q, steps) in results.

Example:
    >>> epsilon(1.5, 0.04, 2250, 1e-5)                       # RDP, ~7.33
    >>> sigma = noise_for_epsilon(8.0, 0.04, 2250, 1e-5)
    >>> result = train_private(model, load_dataset("nuclei"), DPSpec(target_epsilon=8), epochs=20, batch_size=3)
"""
from __future__ import annotations

import copy
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from .errors import SegauditError
from .fl import batchnorm_guard, client_meta, local_batches, trainable_params
from .types import Batch, ClientUpdate

ACCOUNTANTS = ("rdp", "prv")
#: Per-sample gradient modes of Opacus; "hooks" is the fastest on the smp U-Net (``bench/dp_speed.py``).
GRAD_SAMPLE_MODES = ("hooks", "functorch", "ew")

FIX_HINT = "use segaudit.privacy.make_private_model(model) (Opacus ModuleValidator.fix: BatchNorm -> GroupNorm)"


# -- accounting -----------------------------------------------------------------------------------------------


def _check_accounting(sample_rate: float, steps: int, delta: float, accountant: str) -> None:
    if accountant not in ACCOUNTANTS:
        raise SegauditError(f"unknown accountant {accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
    if not (isinstance(sample_rate, (int, float)) and 0.0 < sample_rate <= 1.0):
        raise SegauditError(f"sample rate must be in (0, 1] (batch size / dataset size), got {sample_rate}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise SegauditError(f"steps must be a positive integer, got {steps!r}")
    _check_delta(delta)


def _check_delta(delta: float) -> None:
    if not (isinstance(delta, (int, float)) and 0.0 < delta < 1.0):
        raise SegauditError(f"delta must be in (0, 1), e.g. 1e-5 (below 1/dataset size), got {delta}")


def _quiet_opacus():
    """Opacus warns about secure RNG and PRV/GDP precision on every call; the results carry the facts."""
    ctx = warnings.catch_warnings()
    ctx.__enter__()
    warnings.filterwarnings("ignore", module=r"opacus.*")
    warnings.filterwarnings("ignore", message=r".*(secure|Secure|Full backward hook|Optimal order).*")
    return ctx


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5,
            accountant: Literal["rdp", "prv"] = "rdp") -> float:
    """The epsilon Opacus's accountant gives ``steps`` DP-SGD steps with Poisson sampling.

    Args:
        noise_multiplier: sigma, the noise standard deviation over the clipping norm (> 0).
        sample_rate: q, the probability that a sample is in a step's batch (batch size / dataset size).
        steps: T, the number of noisy steps.
        delta: the delta of the (epsilon, delta) guarantee, in (0, 1).
        accountant: ``"rdp"`` (Rényi DP, Mironov 2017) or ``"prv"`` (privacy random variables,
            Gopi et al. 2021; tighter).

    Returns:
        epsilon (``inf`` when ``noise_multiplier`` is 0).

    Example:
        >>> round(epsilon(1.5, 0.04, 2250, 1e-5), 4)
        7.3291
    """
    _check_accounting(sample_rate, steps, delta, accountant)
    if not (isinstance(noise_multiplier, (int, float)) and noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise SegauditError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if noise_multiplier == 0:
        return math.inf
    from opacus.accountants import create_accountant

    acc = create_accountant(accountant)
    acc.history = [(float(noise_multiplier), float(sample_rate), int(steps))]
    ctx = _quiet_opacus()
    try:
        return float(acc.get_epsilon(delta))
    finally:
        ctx.__exit__(None, None, None)


def noise_for_epsilon(target_epsilon: float, sample_rate: float, steps: int, delta: float = 1e-5,
                      accountant: Literal["rdp", "prv"] = "rdp", tolerance: float = 0.01) -> float:
    """The smallest sigma (to ``tolerance`` in epsilon) whose ``steps`` steps spend at most ``target_epsilon``.

    Opacus's ``get_noise_multiplier`` binary search with the same accountant as :func:`epsilon`.

    Raises:
        SegauditError: ``target_epsilon`` <= 0 or not finite, or bad rate/steps/delta/accountant.
    """
    _check_epsilon(target_epsilon)
    _check_accounting(sample_rate, steps, delta, accountant)
    from opacus.accountants.utils import get_noise_multiplier

    ctx = _quiet_opacus()
    try:
        return float(get_noise_multiplier(target_epsilon=float(target_epsilon), target_delta=float(delta),
                                          sample_rate=float(sample_rate), steps=int(steps),
                                          accountant=accountant, epsilon_tolerance=tolerance))
    except ValueError as e:  # Opacus: "The privacy budget is too low."
        raise SegauditError(f"epsilon {target_epsilon} cannot be reached with q={sample_rate}, {steps} steps, "
                            f"delta={delta}: raise the epsilon or lower the steps or sample rate ({e})") from None
    finally:
        ctx.__exit__(None, None, None)


def _check_epsilon(target_epsilon: float) -> None:
    if not (isinstance(target_epsilon, (int, float)) and 0 < target_epsilon and math.isfinite(target_epsilon)):
        raise SegauditError(f"target epsilon must be a finite number > 0, got {target_epsilon}")


# -- the DP spec ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DPSpec:
    """How private training is made private. Give exactly one of ``noise_multiplier`` / ``target_epsilon``.

    Attributes:
        noise_multiplier: sigma; the Gaussian noise has std ``sigma * max_grad_norm``.
        target_epsilon: epsilon to spend over the whole run; sigma is then chosen by Opacus.
        delta: the delta of the guarantee, in (0, 1); it must be below 1 / (training images).
        max_grad_norm: C, each sample's gradient is clipped to this L2 norm (over all parameters).
        accountant: ``"rdp"`` or ``"prv"``.
        poisson: Poisson sampling (each image joins a step with probability q); the accounting assumes it.
        grad_sample_mode: Opacus per-sample gradient mode (``"hooks"`` is the fastest here).
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    accountant: Literal["rdp", "prv"] = "rdp"
    poisson: bool = True
    grad_sample_mode: Literal["hooks", "functorch", "ew"] = "hooks"

    def __post_init__(self) -> None:
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise SegauditError("give exactly one of noise_multiplier (sigma) or target_epsilon")
        if self.target_epsilon is not None:
            _check_epsilon(self.target_epsilon)
        if self.noise_multiplier is not None and not (self.noise_multiplier >= 0
                                                      and math.isfinite(self.noise_multiplier)):
            raise SegauditError(f"noise multiplier must be a finite number >= 0, got {self.noise_multiplier}")
        _check_delta(self.delta)
        if not (self.max_grad_norm > 0):
            raise SegauditError(f"max_grad_norm (C) must be > 0, got {self.max_grad_norm}")
        if self.accountant not in ACCOUNTANTS:
            raise SegauditError(f"unknown accountant {self.accountant!r}; use one of {', '.join(ACCOUNTANTS)}")
        if self.grad_sample_mode not in GRAD_SAMPLE_MODES:
            raise SegauditError(f"unknown grad sample mode {self.grad_sample_mode!r}; "
                                f"use one of {', '.join(GRAD_SAMPLE_MODES)}")
        if not self.poisson:
            raise SegauditError("the accounting assumes Poisson sampling; keep poisson=True")


# -- models ---------------------------------------------------------------------------------------------------


from . import _compat  # noqa: E402  (torchvision must be patched before it is imported on a CPU torch)

_compat.patch_torchvision()
from torchvision.models import resnet as _resnet  # noqa: E402


class OutOfPlaceBasicBlock(_resnet.BasicBlock):
    """torchvision's ``BasicBlock`` with ``out = out + identity`` instead of ``out += identity``.

    Why: Opacus's full backward hooks wrap each module's output; adding the skip in place into the
    output of the last norm layer is refused by autograd ("... is a view and is being modified inplace").
    Parameter names are unchanged, so state dicts stay compatible. Module-level so models still pickle
    (Opacus clones modules through ``torch.save``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class OutOfPlaceBottleneck(_resnet.Bottleneck):
    """torchvision's ``Bottleneck`` with an out-of-place skip addition (see :class:`OutOfPlaceBasicBlock`)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


_BLOCKS: dict[type, type] = {_resnet.BasicBlock: OutOfPlaceBasicBlock, _resnet.Bottleneck: OutOfPlaceBottleneck}


def make_private_model(model: nn.Module) -> tuple[nn.Module, list[str]]:
    """A copy of ``model`` that Opacus can train, and what was changed to get it.

    Changes: every BatchNorm becomes a GroupNorm (Opacus ``ModuleValidator.fix``: per-sample gradients
    are undefined when a sample's output depends on its batch peers), in-place activations become
    out-of-place and torchvision ResNet blocks add their skip out of place (Opacus's hooks refuse
    in-place edits of a hooked module's output). The DP model therefore differs from the baseline.

    Args:
        model: e.g. from :func:`segaudit.models.build_model`; left untouched.

    Returns:
        ``(fixed_model, changes)``: the model (same parameter names except BatchNorm buffers, same mode,
        ``segaudit_spec`` with ``"dp_compatible": True`` so :func:`segaudit.models.load_model` rebuilds it)
        and one line per kind of change.
    """
    from opacus.validators import ModuleValidator

    norms = [f"{name}: {type(m).__name__}" for name, m in model.named_modules()
             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    ctx = _quiet_opacus()
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
        if type(m) in _BLOCKS:
            m.__class__ = _BLOCKS[type(m)]
            blocks += 1
        if getattr(m, "inplace", False) is True:
            m.inplace = False
            inplace += 1
    if blocks:
        changes.append(f"{blocks} ResNet blocks add the skip connection out of place")
    if inplace:
        changes.append(f"{inplace} in-place activations made out-of-place")
    fixed.train(model.training)
    spec = getattr(model, "segaudit_spec", None)
    if spec is not None:
        fixed.segaudit_spec = {**copy.deepcopy(spec), "dp_compatible": True}
    return fixed, changes


def check_private_model(model: nn.Module) -> None:
    """Refuse a model Opacus cannot compute per-sample gradients for (e.g. one with BatchNorm)."""
    from opacus.validators import ModuleValidator

    # the mode is the caller's business (a client sets it; train_private refuses eval mode itself)
    errors = [e for e in ModuleValidator.validate(model, strict=False) if "training mode" not in str(e)]
    if errors:
        first = next((n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)), None)
        what = f"BatchNorm layer {first!r}" if first is not None else type(errors[0]).__name__
        raise SegauditError(f"the model has {what}, which DP-SGD cannot handle (a sample's gradient depends on "
                            f"its batch): {FIX_HINT}")


def check_sample_rate(sample_rate: float, batch_size: int, dataset_size: int) -> None:
    """Refuse a sampler whose rate is not ``batch_size / dataset_size`` (the accounting would be wrong)."""
    if not 0.0 < sample_rate <= 1.0:
        raise SegauditError(f"sample rate must be in (0, 1], got {sample_rate}")
    expected = batch_size / dataset_size
    if not math.isclose(sample_rate, expected, rel_tol=1e-6):
        divisors = [d for d in range(1, dataset_size + 1) if dataset_size % d == 0]
        raise SegauditError(
            f"the sampler's rate {sample_rate:.4g} disagrees with batch size {batch_size} / {dataset_size} samples "
            f"= {expected:.4g}; Opacus samples at 1/ceil(N/B), so use a batch size that divides {dataset_size} "
            f"({', '.join(map(str, divisors))})")


# -- DP-SGD client updates --------------------------------------------------------------------------------------


def private_client_update(
    model: nn.Module,
    batch: Batch,
    noise_multiplier: float,
    max_grad_norm: float,
    mode: Literal["fedsgd", "fedavg"] = "fedsgd",
    loss: str = "ce",
    reduction: Literal["mean", "sum"] = "mean",
    local_steps: int = 1,
    lr: float = 0.01,
    local_batch_size: int | None = None,
    train_mode: bool = True,
    share_buffers: bool = True,
    seed: int = 0,
    grad_sample_mode: str = "hooks",
    defense: dict | None = None,
) -> ClientUpdate:
    """The update a client makes with DP-SGD: per-sample clipping to C and Gaussian noise ``sigma * C``.

    FedSGD shares the noisy mean gradient ``(sum_i clip(g_i) + N(0, sigma^2 C^2)) / N``; FedAvg runs
    ``local_steps`` such steps of SGD (learning rate ``lr``, mini-batches as :func:`segaudit.fl.local_batches`)
    and shares the weight delta. Per-sample gradients come from Opacus's ``GradSampleModule``, clipping
    and noise from its ``DPOptimizer``. With ``noise_multiplier=0`` and a huge C this equals
    :func:`segaudit.fl.client_update` on the same model.

    Args:
        model: a DP-compatible model (see :func:`make_private_model`); left untouched.
        batch: images ``[N,C,H,W]``, masks ``[N,H,W]`` (or labels ``[N]``).
        noise_multiplier, max_grad_norm: sigma and C.
        loss: ``"ce"`` only (the batch Dice of ``dice_ce`` couples samples, so it has no per-sample gradient).
        reduction: ``"mean"`` (noisy mean over the N samples) or ``"sum"`` (noisy sum).
        seed: seeds the noise.
        defense: what ``meta.defense`` records (the caller's parameters).

    Returns:
        A ``ClientUpdate`` keyed by parameter name; ``buffers`` are empty for a GroupNorm model.

    Raises:
        SegauditError: a BatchNorm model, ``dice_ce``, sigma < 0, C <= 0, or bad protocol settings.
    """
    from opacus.grad_sample import get_gsm_class
    from opacus.optimizers import DPOptimizer

    check_private_model(model)
    meta = client_meta(batch, mode, loss, reduction, local_steps, lr, local_batch_size, train_mode, defense)
    if loss != "ce":
        raise SegauditError(f"loss {loss!r} couples the samples of a batch (batch Dice), so DP-SGD has no per-sample "
                            "gradient for it; use loss='ce'")
    if reduction not in ("mean", "sum"):
        raise SegauditError(f"unknown reduction {reduction!r}; use 'mean' or 'sum'")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise SegauditError(f"noise multiplier must be a finite number >= 0, got {noise_multiplier}")
    if not max_grad_norm > 0:
        raise SegauditError(f"max_grad_norm (C) must be > 0, got {max_grad_norm}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise SegauditError(f"unknown grad sample mode {grad_sample_mode!r}; use one of {', '.join(GRAD_SAMPLE_MODES)}")
    n = len(batch)

    client = copy.deepcopy(model).train(train_mode)
    params = trainable_params(client)
    before = {name: p.detach().clone() for name, p in params.items()}
    cls = get_gsm_class(grad_sample_mode)
    ctx = _quiet_opacus()
    try:
        kw = {"force_functorch": True} if grad_sample_mode == "functorch" else {}
        gsm = cls(client, batch_first=True, loss_reduction=reduction, **kw)
        # lr 1 for FedSGD: the "step" is only used to read the privatised gradient, never applied
        sgd = torch.optim.SGD(list(params.values()), lr=meta.lr if mode == "fedavg" else 1.0)
        opt = DPOptimizer(sgd, noise_multiplier=float(noise_multiplier), max_grad_norm=float(max_grad_norm),
                          expected_batch_size=meta.local_batch_size, loss_reduction=reduction,
                          generator=torch.Generator().manual_seed(seed))
        steps = local_batches(n, meta) if mode == "fedavg" else [list(range(n))]
        for idx in steps:
            opt.zero_grad(set_to_none=True)
            with batchnorm_guard(len(idx)):
                out = gsm(batch.images[idx])
            torch.nn.functional.cross_entropy(out, batch.masks[idx], reduction=reduction).backward()
            if mode == "fedsgd":
                opt.pre_step()  # clip, sum, add noise, scale: p.grad is the privatised gradient
                tensors = {name: p.grad.detach().clone() for name, p in params.items()}
            else:
                opt.step()
        if mode == "fedavg":
            tensors = {name: p.detach() - before[name] for name, p in params.items()}
        gsm.remove_hooks() if hasattr(gsm, "remove_hooks") else None
    finally:
        ctx.__exit__(None, None, None)
    buffers = {name: b.detach().clone() for name, b in client.named_buffers()} if share_buffers else {}
    return ClientUpdate(tensors, meta, buffers)


# -- private training ----------------------------------------------------------------------------------------


@dataclass
class PrivateTrainResult:
    """A DP-SGD-trained model, its privacy guarantee and its held-out quality.

    Attributes:
        train: the shared :class:`segaudit.train.TrainResult` (model, Dice, IoU, losses, settings).
        epsilon, delta: the guarantee the accountant gives the whole run.
        noise_multiplier, max_grad_norm: sigma and C.
        sample_rate: q = batch size / training images (Poisson sampling).
        steps, epochs: optimiser steps (each one accounted) and ``steps * q``.
        accountant: ``"rdp"`` or ``"prv"``.
        model_changes: how the DP model differs from the baseline (see :func:`make_private_model`).
    """

    train: object
    epsilon: float
    delta: float
    noise_multiplier: float
    max_grad_norm: float
    sample_rate: float
    steps: int
    epochs: float
    accountant: str
    target_epsilon: float | None
    grad_sample_mode: str
    model_changes: list[str]

    @property
    def model(self) -> nn.Module:
        return self.train.model

    @property
    def dice(self) -> float:
        return self.train.dice

    @property
    def iou(self) -> float:
        return self.train.iou

    def privacy(self) -> dict:
        """The DP parameters as plain values (what ``train.json`` records under ``"dp"``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "train"}

    def summary(self) -> dict:
        return {**self.train.summary(), "dp": self.privacy()}


class _Indices(torch.utils.data.Dataset):
    """The training images as a map-style dataset of their indices (Opacus samples from it)."""

    def __init__(self, indices: list[int]):
        self.indices = list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.tensor(self.indices[i]),)  # a tuple of tensors: Opacus builds empty batches from it


def _collate(items: list[tuple[torch.Tensor]]) -> list[torch.Tensor]:
    return [torch.stack([t for (t,) in items])]


def train_private(model: nn.Module, dataset, spec: DPSpec, size: int = 64, steps: int | None = None,
                  epochs: int | None = None, batch_size: int = 3, lr: float = 1e-3, loss: str = "ce",
                  holdout: float = 0.25, seed: int = 0, eval_size: int | None = None,
                  progress: bool = True) -> PrivateTrainResult:
    """DP-SGD (Opacus ``PrivacyEngine``) on random crops of the training images; Dice/IoU on held-out images.

    The privacy unit is one training image: each step, Opacus's Poisson sampler takes every training image
    with probability ``q = batch_size / N_train``; each taken image gives one augmented ``size`` px crop.
    Everything else (split, Adam, cosine schedule, crops, evaluation) is :func:`segaudit.train.train_model`'s
    loop, so a non-private baseline with the same ``steps``, ``batch_size``, ``lr`` and ``loss`` is comparable.

    Args:
        model: in train mode; BatchNorm models are converted (see :func:`make_private_model`), the
            argument itself is left untouched.
        dataset: from :func:`segaudit.data.load_dataset`.
        spec: sigma or target epsilon, delta, C, accountant.
        steps / epochs: the budget (give one); ``epochs`` = ``steps * q``. Target-epsilon mode with
            ``epochs`` calls Opacus's ``make_private_with_epsilon``.
        batch_size: the expected batch; it must divide N_train (Opacus samples at ``1/ceil(N/B)``).
        loss: ``"ce"`` (the batch Dice of ``dice_ce`` has no per-sample gradient).

    Returns:
        A :class:`PrivateTrainResult`; its model is trained (GroupNorm, eval mode).

    Raises:
        SegauditError: a model in eval mode, both or neither of steps/epochs, a batch size that does not
            divide N_train, delta >= 1/N_train, ``dice_ce``, or an epsilon that cannot be reached.
    """
    from opacus import PrivacyEngine

    from .data import split
    from .train import run_training

    if not isinstance(spec, DPSpec):
        raise SegauditError(f"spec must be a DPSpec, got {type(spec).__name__}")
    if not model.training:
        raise SegauditError("the model is in eval mode; call model.train() before private training "
                            "(Opacus computes per-sample gradients only in train mode)")
    if loss != "ce":
        raise SegauditError(f"loss {loss!r} couples the samples of a batch (batch Dice), so DP-SGD has no per-sample "
                            "gradient for it; use loss='ce'")
    if (steps is None) == (epochs is None):
        raise SegauditError("give exactly one of steps or epochs")
    train_idx, test_idx = split(dataset, holdout=holdout, seed=seed)
    n_train = len(train_idx)
    if not 1 <= batch_size <= n_train:
        raise SegauditError(f"batch size must be in 1..{n_train} (the training images), got {batch_size}")
    loader = torch.utils.data.DataLoader(_Indices(train_idx), batch_size=batch_size, collate_fn=_collate)
    check_sample_rate(1 / len(loader), batch_size, n_train)
    q = batch_size / n_train
    if spec.delta >= 1 / n_train:
        raise SegauditError(f"delta {spec.delta} is not below 1/N = {1 / n_train:.3g} for {n_train} training images: "
                            "such a delta allows leaking a whole image; use a smaller delta")
    per_epoch = len(loader)
    if epochs is not None:
        if epochs < 1:
            raise SegauditError(f"epochs must be at least 1, got {epochs}")
        steps = int(epochs) * per_epoch
    elif steps < 1:
        raise SegauditError(f"steps must be at least 1, got {steps}")

    fixed, changes = make_private_model(model)
    torch.manual_seed(seed)
    opt = torch.optim.Adam(fixed.parameters(), lr=lr)
    ctx = _quiet_opacus()
    engine = PrivacyEngine(accountant=spec.accountant)
    common = dict(module=fixed, optimizer=opt, data_loader=loader, max_grad_norm=spec.max_grad_norm,
                  poisson_sampling=True, grad_sample_mode=spec.grad_sample_mode,
                  noise_generator=torch.Generator().manual_seed(seed))
    try:
        if spec.target_epsilon is not None and epochs is not None:
            try:
                module, dp_opt, dp_loader = engine.make_private_with_epsilon(
                    target_epsilon=spec.target_epsilon, target_delta=spec.delta, epochs=int(epochs), **common)
            except ValueError as e:  # Opacus: "The privacy budget is too low."
                raise SegauditError(f"epsilon {spec.target_epsilon} cannot be reached in {epochs} epochs at q={q:.3g}, "
                                    f"delta={spec.delta}: raise the epsilon or train fewer epochs ({e})") from None
        else:
            sigma = spec.noise_multiplier if spec.target_epsilon is None else \
                noise_for_epsilon(spec.target_epsilon, q, steps, spec.delta, spec.accountant)
            module, dp_opt, dp_loader = engine.make_private(noise_multiplier=sigma, **common)
        dp_loader.batch_sampler.generator = torch.Generator().manual_seed(seed + 1)

        def batches():
            while True:
                for (idx,) in dp_loader:
                    yield idx.tolist()

        def empty_step(_):  # nobody sampled: the step is noise only, as the accounting assumes
            for p in dp_opt.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)

        result = run_training(module, dataset, train_idx, test_idx, dp_opt, batches(), steps=steps, size=size,
                              loss=loss, seed=seed, eval_size=eval_size, progress=progress, lr=lr,
                              batch_size=batch_size, on_empty=empty_step)
        eps = float(engine.get_epsilon(spec.delta))
    finally:
        ctx.__exit__(None, None, None)
    module.remove_hooks() if hasattr(module, "remove_hooks") else None
    result.model = module._module if hasattr(module, "_module") else module
    result.model.eval()
    return PrivateTrainResult(result, eps, spec.delta, float(dp_opt.noise_multiplier), spec.max_grad_norm, q,
                              steps, steps * q, spec.accountant, spec.target_epsilon, spec.grad_sample_mode, changes)
