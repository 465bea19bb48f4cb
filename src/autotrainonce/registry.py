"""A tiny named registry used for models, datasets and algorithms (and the CLI's choices)."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to builder functions.

    >>> models = Registry("model")
    >>> @models.register("tiny")
    ... def tiny(**kw): ...
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator registering ``fn`` under ``name`` (default: the function's name)."""

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            key = (name or fn.__name__).lower()
            if key in self._builders:
                raise ValueError(f"{self.kind} {key!r} is registered twice")
            self._builders[key] = fn
            return fn

        return deco

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered under ``name``; a clear error listing the choices otherwise."""
        key = name.lower()
        if key not in self._builders:
            choices = ", ".join(sorted(self._builders))
            raise UnknownNameError(f"unknown {self.kind} {name!r}; choose one of: {choices}")
        return self._builders[key]

    def create(self, name: str, /, **kwargs: Any) -> T:
        """Build ``name`` with ``kwargs``; arguments set to None are dropped so builders keep their defaults."""
        return self.get(name)(**{k: v for k, v in kwargs.items() if v is not None})

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names matching a shell-style wildcard, sorted."""
        return sorted(n for n in self._builders if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
