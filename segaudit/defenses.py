"""Defenses: what a client changes in the update it computes or shares, recorded for an adaptive attacker.

Every defense is a :class:`Defense` in :data:`DEFENSES`. ``defense.client_update(model, batch, **protocol)``
returns the ``ClientUpdate`` the client shares; its ``meta.defense`` holds the defense's name and parameters,
so an attacker who knows the defense can adapt to it.

Specs on the command line: ``name`` or ``name:value`` (the defense's first parameter) or
``name:key=value/key=value`` (e.g. ``noise:0.01``, ``prune:0.9``, ``dp:eps=8/clip=1``).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from .errors import SegauditError
from .fl import client_update as plain_client_update
from .registry import Registry
from .types import Batch, ClientUpdate

DEFENSES: Registry["Defense"] = Registry("defense")


@dataclass(frozen=True)
class Defense:
    """No change; subclasses override :meth:`transform` (post-processing) or :meth:`client_update` (computation)."""

    name = "none"

    def params(self) -> dict:
        """The defense's parameters as plain values (what ``meta.defense`` records next to ``name``)."""
        return dataclasses.asdict(self)

    def client_update(self, model: nn.Module, batch: Batch, *, seed: int = 0, **protocol) -> ClientUpdate:
        """The shared update: :func:`segaudit.fl.client_update` with ``protocol``, then :meth:`apply`."""
        return self.apply(plain_client_update(model, batch, **protocol), seed=seed)

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
                raise SegauditError(f"defense spec {spec!r}: write parameters as key=value ({', '.join(fields) or 'none'})")
            key, value = fields[0], part
        if key not in fields:
            raise SegauditError(f"defense {name!r} has no parameter {key!r}; it takes: {', '.join(fields) or 'nothing'}")
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
