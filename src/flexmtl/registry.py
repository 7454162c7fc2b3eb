"""A small name -> object registry (in the spirit of timm / torchvision model registries).

A user-registered entry is treated exactly like a built-in one; duplicate names are
rejected and unknown names get close suggestions.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator
from typing import Generic, TypeVar

from flexmtl.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries of one kind (``"experiment"``, ``"method"``, ...)."""

    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None, *, overwrite: bool = False):
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def add(item: T) -> T:
            if name in self._entries and not overwrite:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = item
            return item

        return add if obj is None else add(obj)

    def unregister(self, name: str) -> T:
        """Remove ``name`` and return its entry (e.g. a method registered for one test)."""
        self.get(name)  # unknown names: the usual error with suggestions
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self._entries) from None

    def names(self, pattern: str = "*") -> list[str]:
        """Registered names, sorted, optionally filtered by a shell-style wildcard."""
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def items(self) -> list[tuple[str, T]]:
        """``(name, entry)`` pairs in the order they were registered."""
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)


