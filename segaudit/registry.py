"""A small name -> factory registry used for attacks, defenses, metrics and layer scorers."""
from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from .errors import SegauditError

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to factories.

    Example:
        >>> ATTACKS: Registry[Attack] = Registry("attack")
        >>> @ATTACKS.register("ig")
        ... class InvertingGradients(Attack): ...
        >>> ATTACKS.create("ig", steps=100)
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        key = name.lower()

        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if key in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[key] = factory
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name.lower()]
        except KeyError:
            raise SegauditError(f"unknown {self.kind} {name!r}; available: {', '.join(self.available())}") from None

    def create(self, name: str, **kwargs) -> T:
        return self.get(name)(**kwargs)

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._entries
