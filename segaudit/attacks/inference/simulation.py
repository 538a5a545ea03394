"""The clients' side of the experiment: crop pools and a stream of simulated client updates, each with its
:class:`~.cases.Truth`, drawn so that the asked truth (property, membership) alternates."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from ...data import make_batch
from ...defenses import Defense, NoDefense
from ...errors import SegauditError
from ...progress import progress
from ...types import Batch, ClientProtocol, Prior
from .cases import Case, PropertySpec, Truth


def crop_pool(dataset, indices: list[int], size: int, crops_per_image: int, seed: int, **norm) -> Batch:
    """``len(indices) * crops_per_image`` random, augmented ``size`` px crops of ``indices`` (the pool clients draw
    from), normalised with ``norm`` (``mean``/``std`` of :func:`segaudit.data.make_batch`; see
    :func:`segaudit.preprocessing.normalisation`)."""
    picks = [i for i in indices for _ in range(crops_per_image)]
    return make_batch(dataset, picks, size=size, fit="crop", augment=True, seed=seed, foreground=0.5, **norm)


def stream(model: nn.Module, pool: Batch, count: int, batch_size: int, *, question: str = "none",
           prop: PropertySpec | None = None, defense: Defense | None = None, seed: int = 0,
           show_progress: bool = False, desc: str = "client updates", protocol: ClientProtocol | None = None,
           **changes) -> Iterator[tuple[Case, Truth]]:
    """``count`` client updates on batches drawn from ``pool``, each with its truth, made one at a time.

    The arguments are checked at once; each update is computed only when the iterator is advanced, and the
    iterator keeps no reference to it afterwards: a consumer that drops each :class:`Case` once it has read
    it holds one update at a time.

    Args:
        question: ``"none"`` (random batches), ``"property"`` (half the batches have ``prop``) or
            ``"membership"`` (half the batches contain the case's candidate image).
        protocol, **changes: the clients' protocol, as for :func:`segaudit.fl.client_update`.

    Returns:
        An iterator of ``(Case, Truth)``; the labels alternate True/False so both kinds are equally many.
    """
    if count < 1:
        raise SegauditError(f"the number of updates must be at least 1, got {count}")
    n = len(pool)
    if batch_size < 1 or batch_size > n:
        raise SegauditError(f"batch size {batch_size} is outside 1..{n}, the crops the data gives "
                            "(images x crops per image); use a smaller batch or more crops per image")
    defense = defense or NoDefense()
    protocol = ClientProtocol.of(protocol, **changes)
    rng = np.random.default_rng(seed)
    chooser = _batch_chooser(pool, batch_size, question, prop, rng)
    return _stream(model, pool, count, batch_size, question, chooser, defense, seed, show_progress, desc, protocol)


def _stream(model, pool, count, batch_size, question, chooser, defense, seed, show_progress, desc, protocol):
    for i in progress(range(count), desc=desc, enabled=show_progress):
        label = bool(i % 2 == 0) if question != "none" else None
        picks, candidate = chooser(label)
        batch = pool.subset(picks)
        update = defense.client_update(model, batch, protocol, seed=seed + i)
        truth = torch.bincount(batch.masks.flatten(), minlength=pool.num_classes).double() / batch.masks.numel()
        cand = pool.subset([candidate]) if candidate is not None else None
        case = Case(update, Prior.from_batch_shape(batch), cand)
        del update, batch  # the case is the only reference this generator holds while suspended
        yield case, Truth(truth.float(), label)
        del case


def simulate(model: nn.Module, pool: Batch, count: int, batch_size: int, **kwargs) -> list[tuple[Case, Truth]]:
    """:func:`stream` as a list: every update is kept (memory grows with ``count``; for tests and small runs)."""
    return list(stream(model, pool, count, batch_size, **kwargs))


def _batch_chooser(pool: Batch, b: int, question: str, prop: PropertySpec | None, rng: np.random.Generator):
    """A function ``label -> (positions, candidate position)`` drawing batches with the asked truth."""
    n = len(pool)
    if question == "membership":
        if n < b + 1:
            raise SegauditError(f"membership needs more crops than the batch size ({n} <= {b}); use a smaller batch")

        def choose(member):
            candidate = int(rng.integers(n))
            others = rng.permutation(np.setdiff1d(np.arange(n), [candidate]))
            picks = [candidate, *others[: b - 1]] if member else list(others[:b])
            return [int(i) for i in rng.permutation(picks)], candidate
        return choose
    if question == "property" and prop.scope == "any":
        has = np.flatnonzero(prop.image_holds(pool.masks).numpy())
        lacks = np.setdiff1d(np.arange(n), has)
        if len(has) == 0 or len(lacks) < b:
            raise SegauditError(f"property {prop.text!r}: {len(has)} of {n} crops have it and {len(lacks)} lack it; "
                                f"a batch of {b} needs both kinds: choose another threshold or a smaller batch")

        def choose(positive):
            k = int(rng.integers(1, min(b, len(has)) + 1)) if positive else 0
            picks = [*rng.choice(has, k, replace=False), *rng.choice(lacks, b - k, replace=False)]
            return [int(i) for i in rng.permutation(picks)], None
        return choose
    if question == "property":  # rejection sampling of random batches until the asked label comes up
        def choose(positive):
            for _ in range(2000):
                picks = rng.choice(n, b, replace=False)
                if prop.holds(pool.masks[torch.as_tensor(picks)]) == positive:
                    return [int(i) for i in picks], None
            shares = (pool.masks == prop.cls).flatten(1).double().mean(1)
            raise SegauditError(f"property {prop.text!r} is {'never' if positive else 'always'} "
                                f"{'true' if positive else 'false'} for batches of {b}; choose a threshold near "
                                f"the median share {float(shares.median()):.3f}")
        return choose
    return lambda _label: ([int(i) for i in rng.choice(n, b, replace=False)], None)
