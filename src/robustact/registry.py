"""One small registry class behind every "by name" lookup: architectures, activations, defenses, suites, analyses.

A `Registry` maps names to objects (factories, placement functions, builders). Lookups of an unknown name raise
one `ConfigError` line that lists the known names; built-in entries that live in modules of their own are
imported on first use (`builtin={"name": "module"}`), so importing a package stays cheap and free of cycles.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from robustact.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind (`kind` names it in errors, e.g. "arch", "defense")."""

    def __init__(self, kind: str, *, builtin: dict[str, str] | None = None, lower: bool = False) -> None:
        self.kind = kind
        self.lower = lower
        self._items: dict[str, T] = {}
        self._builtin = dict(builtin or {})  # name -> module that registers it when imported

    def _key(self, name: str) -> str:
        return name.lower() if self.lower and isinstance(name, str) else name

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@registry.register("name")`; a name registered twice is a programming error."""
        key = self._key(name)

        def decorator(obj: T) -> T:
            if key in self._items:
                raise ValueError(f"{self.kind} {key!r} is already registered")
            self._items[key] = obj
            return obj

        return decorator

    def unregister(self, name: str) -> None:
        """Forget `name` (tests that register a throw-away entry clean up with it)."""
        self._items.pop(self._key(name), None)

    def _load(self, key: str | None = None) -> None:
        modules = [self._builtin[key]] if key in self._builtin else [] if key is not None else self._builtin.values()
        for module in modules:
            importlib.import_module(module)

    def get(self, name: str) -> T:
        key = self._key(name)
        if key not in self._items:
            self._load(key)
        if not isinstance(key, str) or key not in self._items:
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._items[key]

    def __contains__(self, name: object) -> bool:
        key = self._key(name)  # type: ignore[arg-type]
        if key not in self._items and key in self._builtin:
            self._load(key)
        return key in self._items

    def names(self) -> list[str]:
        """Every registered name (built-ins included), sorted."""
        self._load()
        return sorted(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
