"""Name -> implementation tables for pluggable components (vision towers, projectors, templates).

Lookups are by exact name; an unknown name is an error that lists the choices, so a typo in a
recipe never silently picks a different component.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownComponentError(KeyError):
    """Raised for a name that is not registered; the message lists what is."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0])


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    target: T
    config_class: type | None


class Registry(Generic[T]):
    """A table of components of one kind, filled by the ``register`` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, config_class: type | None = None) -> Callable[[T], T]:
        """Decorator: make ``target`` available as ``name``, validated by ``config_class``."""

        def decorate(target: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, target, config_class)
            return target

        return decorate

    def get(self, name: str) -> Entry[T]:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownComponentError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
