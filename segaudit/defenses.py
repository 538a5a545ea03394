"""Defenses: what a client changes in the update it computes or shares, recorded for an adaptive attacker.

Every defense is a :class:`Defense` in :data:`DEFENSES`. ``defense.client_update(model, batch, protocol)``
returns the ``ClientUpdate`` the client shares; its ``meta.defense`` holds the defense's name and parameters,
so an attacker who knows the defense can adapt to it.

Specs on the command line: ``name`` or ``name:value`` (the defense's first parameter) or
``name:key=value/key=value`` (e.g. ``noise:0.01``, ``prune:0.9``, ``dp:eps=8/clip=1``).
"""
from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SegauditError
from .fl import client_update as plain_client_update
from .privacy import ACCOUNTANTS, check_sample_rate, epsilon, noise_for_epsilon, private_client_update
from .registry import Registry
from .types import Batch, ClientProtocol, ClientUpdate

DEFENSES: Registry[Defense] = Registry("defense")


@dataclass(frozen=True)
class Defense:
    """No change; subclasses override :meth:`transform` (post-processing) or :meth:`client_update` (computation)."""

    name = "none"

    def params(self) -> dict:
        """The defense's parameters as plain values (what ``meta.defense`` records next to ``name``)."""
        return dataclasses.asdict(self)

    def client_update(self, model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None, *,
                      seed: int = 0, **settings) -> ClientUpdate:
        """The shared update: :func:`segaudit.fl.client_update` with ``protocol`` (changed by ``settings``, as
        there), then :meth:`apply`."""
        return self.apply(plain_client_update(model, batch, protocol, **settings), seed=seed)

    def apply(self, update: ClientUpdate, seed: int = 0) -> ClientUpdate:
        """``update`` after :meth:`transform`, with ``meta.defense`` filled in."""
        generator = torch.Generator().manual_seed(seed)
        tensors = self.transform(update.tensors, generator)
        meta = dataclasses.replace(update.meta, defense={"name": self.name, **self.params()})
        return dataclasses.replace(update, tensors=tensors, meta=meta)

    def transform(self, tensors: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The shared tensors (by parameter name) made from the computed ones; the identity here."""
        return tensors


@DEFENSES.register("none")
@dataclass(frozen=True)
class NoDefense(Defense):
    """The client shares exactly what it computed."""

    name = "none"


def _global_norm(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """L2 norm of all tensors seen as one vector (float64 scalar)."""
    if not tensors:
        return torch.zeros((), dtype=torch.float64)
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors.values()))


def _checked(defense: str, key: str, value, kind: type, lo: float, hi: float, *, lo_open: bool = False,
             hi_open: bool = False, hint: str = "") -> float | int:
    """``value`` as ``kind`` if it lies in the interval ``lo..hi``; otherwise a one-line SegauditError."""
    ok_type = (isinstance(value, (int, float)) and not isinstance(value, bool)
               and (kind is float or float(value).is_integer()))
    v = kind(value) if ok_type else None
    if v is None or not ((lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)):
        interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
        what = "an integer" if kind is int else "a number"
        raise SegauditError(f"defense {defense!r}: {key} must be {what} in {interval}, got {value!r}{hint}")
    return v


@DEFENSES.register("noise")
@dataclass(frozen=True)
class GaussianNoise(Defense):
    """Add Gaussian noise to every shared entry: ``t + N(0, (sigma * ||g||)^2)``, i.i.d. per entry.

    ``||g||`` is the **global** L2 norm of the whole computed update (all tensors as one vector), so ``sigma``
    is a noise multiplier relative to the update, as in DP-SGD's ``noise std = sigma * C`` with
    ``C = ||g||``. The added noise's norm is about ``sigma * ||g|| * sqrt(D)`` for D shared entries (for a
    14 M-parameter U-Net, ``noise:0.001`` already adds noise ~3.7x the update's norm). The noise seed is
    not recorded in ``meta.defense`` (the server cannot subtract the noise); ``sigma`` is.

    Args:
        sigma: relative noise standard deviation, ``>= 0`` (spec ``noise:0.01``).
    """

    sigma: float = 0.01
    name = "noise"

    def __post_init__(self):
        object.__setattr__(self, "sigma", _checked(self.name, "sigma", self.sigma, float, 0, math.inf, hi_open=True))

    def transform(self, tensors, generator):
        std = float(_global_norm(tensors)) * self.sigma
        return {k: t + std * torch.randn(t.shape, generator=generator, dtype=t.dtype) for k, t in tensors.items()}


@DEFENSES.register("clip")
@dataclass(frozen=True)
class Clip(Defense):
    """Scale the whole update down to global L2 norm ``C`` when it is larger: ``t * min(1, C / ||g||)``.

    One factor for all tensors (the global norm), so directions are kept; an update with norm ``<= C`` is
    shared unchanged.

    Args:
        c: the norm bound, ``> 0`` (spec ``clip:1``).
    """

    c: float = 1.0
    name = "clip"

    def __post_init__(self):
        object.__setattr__(self, "c", _checked(self.name, "c", self.c, float, 0, math.inf, lo_open=True, hi_open=True))

    def transform(self, tensors, generator):
        norm = float(_global_norm(tensors))
        if norm <= self.c:
            return dict(tensors)
        return {k: t * (self.c / norm) for k, t in tensors.items()}


@DEFENSES.register("prune")
@dataclass(frozen=True)
class TopKPrune(Defense):
    """Zero the smallest-magnitude entries of **each tensor**: ``p`` is the fraction **pruned** (DLG's
    convention: ``prune:0.9`` zeroes 90 %).

    A tensor of ``n`` entries keeps exactly ``k = ceil((1 - p) * n)`` entries (at least one), those of the
    largest absolute value (ties broken by position); the others become 0. Per tensor, so small tensors
    (biases, norms) keep their share instead of being wiped out by the large convolution kernels.

    Args:
        p: fraction of entries zeroed per tensor, in ``[0, 1)`` (spec ``prune:0.9``).
    """

    p: float = 0.9
    name = "prune"

    def __post_init__(self):
        object.__setattr__(self, "p", _checked(self.name, "p", self.p, float, 0, 1, hi_open=True,
                                               hint=" (the fraction of entries zeroed, e.g. prune:0.9)"))

    def kept(self, numel: int) -> int:
        """k, the number of entries a tensor of ``numel`` entries keeps."""
        return max(1, math.ceil((1 - self.p) * numel - 1e-9))

    def transform(self, tensors, generator):
        out = {}
        for name, t in tensors.items():
            flat = t.flatten()
            keep = torch.topk(flat.abs(), self.kept(flat.numel()), sorted=False).indices
            pruned = torch.zeros_like(flat)
            pruned[keep] = flat[keep]
            out[name] = pruned.view_as(t)
        return out


@DEFENSES.register("quant")
@dataclass(frozen=True)
class Quantize(Defense):
    """Round every tensor to ``2^bits`` evenly spaced levels on ``[-m, m]``, ``m`` = its largest magnitude.

    Uniform and **per tensor** (each has its own ``m``), deterministic round-to-nearest; the levels are
    ``-m + j * 2m / (2^bits - 1)``, so ``quant:1`` shares ``m * sign(t)`` (signSGD with a scale). Zero is not a
    level (the count is even); an all-zero tensor stays zero. At most ``2^bits`` distinct values per tensor.

    Args:
        bits: bits per entry, integer in ``[1, 16]`` (spec ``quant:4``).
    """

    bits: int = 8
    name = "quant"

    def __post_init__(self):
        object.__setattr__(self, "bits", _checked(self.name, "bits", self.bits, int, 1, 16))

    def transform(self, tensors, generator):
        levels = 2 ** self.bits - 1  # number of steps between -m and m
        out = {}
        for name, t in tensors.items():
            m = t.abs().max()
            if m == 0:
                out[name] = t.clone()
                continue
            step = 2 * m / levels
            out[name] = (-m + step * torch.round((t + m) / step).clamp(0, levels)).to(t.dtype)
        return out


@DEFENSES.register("dropout")
@dataclass(frozen=True)
class Dropout(Defense):
    """The client computes its update with dropout active in the decoder/head (the shared tensors are not
    post-processed).

    Each forward of the client's computation (one per FedAvg local step) multiplies the features at every
    dropout site by a fresh mask ``bernoulli(1 - p) / (1 - p)`` of the features' shape ``[n, C, h, w]``
    (element-wise, ``nn.Dropout`` semantics), drawn from ``torch.Generator().manual_seed(seed)`` in the
    order forward call, then site. Sites (``where``):

    * ``"head"``: the decoder's output features where they enter ``segmentation_head`` (any smp model);
    * ``"decoder"``: the output of every block of ``model.decoder.blocks`` (U-Net family).

    ``meta.defense`` records ``p``, ``where``, the site names and the ``seed``, so an adaptive attacker can
    model the masks: :class:`~segaudit.attacks.dropout.DropoutInversion` optimises them jointly with the
    data (Scheliga et al. 2023), or regenerates them exactly from the seed (``known_masks=True``).

    Args:
        p: drop probability in ``[0, 1)`` (spec ``dropout:0.5`` or ``dropout:p=0.3/where=decoder``).
        where: ``"head"`` or ``"decoder"``.
    """

    p: float = 0.5
    where: str = "head"
    name = "dropout"

    def __post_init__(self):
        object.__setattr__(self, "p", _checked(self.name, "p", self.p, float, 0, 1, hi_open=True))
        if self.where not in ("head", "decoder"):
            raise SegauditError(f"defense 'dropout': where must be 'head' or 'decoder', got {self.where!r}")

    def client_update(self, model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None, *,
                      seed: int = 0, **settings) -> ClientUpdate:
        sites = dropout_sites(model, self.where)
        generator = torch.Generator().manual_seed(seed)
        keep = 1.0 - self.p

        def draw(shape: torch.Size) -> torch.Tensor:
            return (torch.rand(shape, generator=generator) < keep).float() / keep

        with mask_sites(model, sites, lambda site, call, shape: draw(shape)):
            update = plain_client_update(model, batch, protocol, **settings)
        meta = dataclasses.replace(update.meta, defense={"name": self.name, **self.params(), "sites": sites,
                                                         "seed": seed})
        return dataclasses.replace(update, meta=meta)


def dropout_sites(model: nn.Module, where: str) -> list[str]:
    """Module names whose **output** the dropout defense masks (``"head"`` -> the decoder's output).

    Raises:
        SegauditError: a model without an smp decoder / ``decoder.blocks``.
    """
    modules = dict(model.named_modules())
    if "decoder" not in modules or "segmentation_head" not in modules:
        raise SegauditError("the dropout defense needs an smp segmentation model (a decoder and a segmentation "
                            "head); use another defense for classification models")
    if where == "head":
        return ["decoder"]
    blocks = getattr(modules["decoder"], "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise SegauditError(f"{type(model).__name__} has no decoder.blocks list; use dropout:where=head")
    return [f"decoder.blocks.{i}" for i in range(len(blocks))]


@contextmanager
def mask_sites(model: nn.Module, sites: list[str], mask_for):
    """Multiply the output of each module in ``sites`` by ``mask_for(site, call, shape)`` while active.

    ``call`` counts the forwards of that site since the context opened (0, 1, ...); the hooks also act
    inside ``torch.func.functional_call`` and on deep copies made meanwhile (e.g. by ``client_update``).
    """
    modules = dict(model.named_modules())
    calls = dict.fromkeys(sites, 0)

    def hook_for(site: str):
        def hook(module, inputs, output):
            mask = mask_for(site, calls[site], output.shape)
            calls[site] += 1
            return output * mask

        return hook

    handles = [modules[s].register_forward_hook(hook_for(s)) for s in sites]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


@DEFENSES.register("localsteps")
@dataclass(frozen=True)
class LocalSteps(Defense):
    """A protocol defense: the client runs FedAvg with ``k`` local SGD steps and shares the weight delta.

    Overrides the protocol's ``mode``/``local_steps``/``lr``/``local_batch_size``: ``k`` plain SGD steps at
    learning rate ``lr`` over mini-batches of ``minibatch`` samples (0 = the whole batch each step), in the
    order :func:`segaudit.fl.local_batches` gives. The attacker must unroll all ``k`` steps. (A larger batch
    is the other protocol defense: it needs more client data, so it is the sweep's ``--batch-size``.)

    Args:
        k: local steps, integer ``>= 1`` (spec ``localsteps:8`` or ``localsteps:k=8/lr=0.05/minibatch=2``).
        lr: the client's learning rate, ``> 0``.
        minibatch: samples per local step, ``0`` (whole batch) or ``1..N``.
    """

    k: int = 4
    lr: float = 0.01
    minibatch: int = 0
    name = "localsteps"

    def __post_init__(self):
        object.__setattr__(self, "k", _checked(self.name, "k", self.k, int, 1, 10_000))
        object.__setattr__(self, "lr", _checked(self.name, "lr", self.lr, float, 0, math.inf,
                                                lo_open=True, hi_open=True))
        object.__setattr__(self, "minibatch", _checked(self.name, "minibatch", self.minibatch, int, 0, 1_000_000))

    def client_update(self, model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None, *,
                      seed: int = 0, **settings) -> ClientUpdate:
        protocol = dataclasses.replace(ClientProtocol.of(protocol, **settings), mode="fedavg", local_steps=self.k,
                                       lr=self.lr, local_batch_size=self.minibatch or None)
        return self.apply(plain_client_update(model, batch, protocol), seed=seed)


def parse_defense(spec: str) -> Defense:
    """A defense from a spec such as ``"none"``, ``"noise:0.01"`` or ``"dp:eps=8/clip=1"``.

    Raises:
        SegauditError: unknown name, unknown parameter or a value that is not a number.
    """
    name, _, rest = spec.strip().partition(":")
    factory = DEFENSES.get(name)
    fields = [f.name for f in dataclasses.fields(factory)] if dataclasses.is_dataclass(factory) else []
    kwargs: dict[str, float | int | str] = {}
    for i, part in enumerate(p for p in rest.split("/") if p):
        key, eq, value = part.partition("=")
        if not eq:  # a bare value is the first parameter
            if i > 0 or not fields:
                raise SegauditError(f"defense spec {spec!r}: write parameters as key=value "
                                    f"({', '.join(fields) or 'none'})")
            key, value = fields[0], part
        if key not in fields:
            raise SegauditError(f"defense {name!r} has no parameter {key!r}; "
                                f"it takes: {', '.join(fields) or 'nothing'}")
        kwargs[key] = _number(value, spec)
    return factory(**kwargs)


def _number(text: str, spec: str) -> float | int | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            if text.isidentifier():
                return text
            raise SegauditError(f"defense spec {spec!r}: {text!r} is not a number") from None


@DEFENSES.register("dp")
@dataclass(frozen=True)
class DPSGD(Defense):
    """DP-SGD on the client (Abadi et al. 2016): each sample's gradient clipped to ``clip``, Gaussian noise
    of std ``sigma * clip`` added to their sum (Opacus ``GradSampleModule`` + ``DPOptimizer``).

    FedSGD shares the noisy mean gradient; FedAvg runs its local steps as DP-SGD steps and shares the delta.
    The model must be DP-compatible (BatchNorm refused: use ``segaudit.privacy.make_private_model``), and
    the loss ``"ce"``. Give ``eps`` or ``sigma`` (neither: ``eps=8``). With ``eps``, sigma is Opacus's
    noise for that epsilon after ``rounds`` updates of ``local_steps`` DP steps each, every sample taken
    with probability ``q`` per step (defaults: 100 rounds, q = 0.01, i.e. a client with 100x its batch
    of data; ``eps=8`` then gives sigma ~0.50). ``meta.defense`` records sigma, clip, eps (the epsilon
    those steps spend), delta, q, rounds and the accountant, for an adaptive attacker.

    Args:
        eps: target epsilon ``> 0`` (spec ``dp:8`` or ``dp:eps=8``).
        sigma: noise multiplier ``>= 0`` (spec ``dp:sigma=1.0/clip=1``); ``0`` is clipping only (eps inf).
        clip: C, per-sample L2 bound ``> 0``.
        delta: in (0, 1).
        q: sample rate per step, in (0, 1]; with ``dataset`` given it must equal batch size / ``dataset``.
        rounds: updates the epsilon covers, ``>= 1``.
        dataset: the client's number of samples (0: not given); checks ``q``.
        accountant: ``rdp`` or ``prv``.
    """

    eps: float | None = None
    sigma: float | None = None
    clip: float = 1.0
    delta: float = 1e-5
    q: float = 0.01
    rounds: int = 100
    dataset: int = 0
    accountant: str = "rdp"
    name = "dp"

    def __post_init__(self):
        if self.eps is not None and self.sigma is not None:
            raise SegauditError("defense 'dp': give eps or sigma, not both")
        if self.sigma is None:
            object.__setattr__(self, "eps", _checked(self.name, "eps", 8.0 if self.eps is None else self.eps,
                                                     float, 0, math.inf, lo_open=True, hi_open=True))
        else:
            object.__setattr__(self, "sigma", _checked(self.name, "sigma", self.sigma, float, 0, math.inf,
                                                       hi_open=True))
        object.__setattr__(self, "clip", _checked(self.name, "clip", self.clip, float, 0, math.inf, lo_open=True))
        object.__setattr__(self, "delta", _checked(self.name, "delta", self.delta, float, 0, 1,
                                                   lo_open=True, hi_open=True))
        object.__setattr__(self, "q", _checked(self.name, "q", self.q, float, 0, 1, lo_open=True))
        object.__setattr__(self, "rounds", _checked(self.name, "rounds", self.rounds, int, 1, 10**9))
        object.__setattr__(self, "dataset", _checked(self.name, "dataset", self.dataset, int, 0, 10**12))
        if self.accountant not in ACCOUNTANTS:
            raise SegauditError(f"defense 'dp': accountant must be {' or '.join(map(repr, ACCOUNTANTS))}, "
                                f"got {self.accountant!r}")

    def privacy(self, local_steps: int = 1) -> dict:
        """sigma, clip, eps, delta, q, steps and accountant of ``rounds`` updates of ``local_steps`` steps."""
        steps = self.rounds * local_steps
        if self.sigma is None:
            sigma = noise_for_epsilon(self.eps, self.q, steps, self.delta, self.accountant)
        else:
            sigma = self.sigma
        eps = epsilon(sigma, self.q, steps, self.delta, self.accountant)
        return {"sigma": sigma, "clip": self.clip, "eps": eps, "target_eps": self.eps, "delta": self.delta,
                "q": self.q, "rounds": self.rounds, "steps": steps, "dataset": self.dataset,
                "accountant": self.accountant}

    def client_update(self, model: nn.Module, batch: Batch, protocol: ClientProtocol | None = None, *,
                      seed: int = 0, **settings) -> ClientUpdate:
        protocol = ClientProtocol.of(protocol, **settings)
        fedavg = protocol.mode == "fedavg"
        step_batch = protocol.local_batch_size or len(batch) if fedavg else len(batch)
        if self.dataset:
            check_sample_rate(self.q, step_batch, self.dataset)
        info = self.privacy(protocol.local_steps if fedavg else 1)
        return private_client_update(model, batch, info["sigma"], self.clip, protocol, seed=seed,
                                     defense={"name": self.name, **info})

    def transform(self, tensors, generator):
        raise SegauditError("defense 'dp' changes how the client computes its update (per-sample clipping); "
                            "call its client_update(model, batch), not apply(update)")
