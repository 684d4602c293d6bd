"""``@record``: an immutable value class that is cheap to build.

A frozen dataclass sets every field through ``object.__setattr__`` when it is built, about
100 ns a field. The event path builds several values per event (a decision, a 19-field send,
log entries), and frozen construction alone was a tenth of ``simulate``'s time. A record is
a plain dataclass at run time and a frozen one to the type checker: ``mypy --strict`` (run in
CI) refuses any assignment to a field, and instances compare and hash by value as frozen
dataclasses do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a dataclass that the type checker holds immutable."""
    return dataclass(unsafe_hash=True)(cls)
