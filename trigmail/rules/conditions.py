"""Compiled ``when`` conditions (docs/design.md §2).

A spec is the mapping under ``when:``. Its keys are dotted paths into the event
(``properties.cart_value``, ``user.country``, ``event``) or the combinators ``all`` and ``any``
(a non-empty list of conditions) and ``not`` (one condition); top-level keys are ANDed. A
path's value is a mapping of operators, all of which must hold, or a bare value meaning ``eq``.

Operators: ``eq ne gt gte lt lte in not_in exists contains matches``. Their semantics are
chosen so that checking a condition never raises, whatever the event holds:

* A missing path fails every operator except ``exists: false``, ``ne`` and ``not_in``, which
  hold: a value that is not there is not equal to, nor in, anything. JSON ``null`` is a value,
  not a missing one: ``exists: true`` holds for it.
* Booleans are not numbers: ``true`` is neither ``eq: 1`` nor ``gte: 1``; ``1`` equals ``1.0``.
* Numbers are numbers whatever the source: a comparison with a number operand (``eq ne gt gte
  lt lte``, or ``in``/``not_in`` a list of numbers only) reads a string that spells a decimal
  number (``"50"``, ``"-3.5"``, ``"1e3"``) as that number, because events from Redis flat fields
  carry every value as a string. A string that is not a number never satisfies such a
  comparison, not even ``ne`` or ``not_in``, and the failure says ``not a number``.
* ``gt gte lt lte`` compare numbers with numbers and strings with strings; any other pair (a
  list, ``null``, a boolean against a number) fails instead of raising.
* ``contains`` holds for a substring of a string value or an element of a list value.
* ``matches`` searches string values with RE2 (``google-re2``), the pattern compiled once,
  here. RE2 takes time linear in the value whatever the pattern, so a pattern such as
  ``^([a-z0-9]+)*@`` cannot stall the daemon (Python's ``re`` took 4 s on 26 characters);
  what RE2 cannot run in linear time (backreferences, lookaround) is refused at load. Its
  ``\\d \\w \\s \\b`` are ASCII-only.

A failing check returns a short description of the first failing test, such as
``properties.cart_value gte 20 (was 12.5)`` or ``user.country in ['PT', 'ES'] (missing)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from trigmail.errors import SpecError
from trigmail.rules.operators import OPERATORS, Leaf, Path, compile_leaf, kind_of, path_part
from trigmail.rules.quoting import quote

if TYPE_CHECKING:
    from trigmail.events import Event
    from trigmail.rules.model import Condition

__all__ = ["AllOf", "AnyOf", "Leaf", "Not", "compile_condition"]


class _Node(Protocol):
    @property
    def text(self) -> str: ...

    def check(self, event: Event) -> str | None: ...


@dataclass(frozen=True, slots=True)
class AllOf:
    """Holds when every part holds; reports the first part that does not."""

    parts: tuple[_Node, ...]
    text: str

    def check(self, event: Event) -> str | None:
        for part in self.parts:
            failed = part.check(event)
            if failed is not None:
                return failed
        return None


@dataclass(frozen=True, slots=True)
class AnyOf:
    """Holds when one part holds; reports why each part failed."""

    parts: tuple[_Node, ...]
    text: str

    def check(self, event: Event) -> str | None:
        failures = []
        for part in self.parts:
            failed = part.check(event)
            if failed is None:
                return None
            failures.append(failed)
        return "none held: " + "; ".join(failures)


@dataclass(frozen=True, slots=True)
class Not:
    """Holds when its condition does not."""

    inner: _Node
    text: str

    def check(self, event: Event) -> str | None:
        return self.text if self.inner.check(event) is None else None


def compile_condition(spec: Mapping[str, Any]) -> Condition:
    """Compile a ``when`` mapping into a fast, reusable condition.

    Args:
        spec: the mapping under ``when:``, as loaded from YAML.

    Raises:
        SpecError: for anything invalid, with the path to it inside ``spec``.
    """
    return _compile_mapping(spec, ())


def _compile_mapping(spec: object, path: Path) -> _Node:
    if not isinstance(spec, Mapping):
        raise SpecError(
            path, f"a condition must be a mapping of paths to tests, not {kind_of(spec)}"
        )
    if not spec:
        raise SpecError(path, "an empty condition: give at least one path, or all/any/not")
    return _all_of(
        [_compile_entry(key, value, (*path, path_part(key))) for key, value in spec.items()]
    )


def _compile_entry(key: object, value: object, path: Path) -> _Node:
    if key == "all":
        return _all_of(_compile_list(value, path, "all"))
    if key == "any":
        parts = tuple(_compile_list(value, path, "any"))
        if len(parts) == 1:
            return parts[0]
        return AnyOf(parts, "(" + " or ".join(part.text for part in parts) + ")")
    if key == "not":
        inner = _compile_mapping(value, path)
        return Not(inner, f"not ({inner.text})")
    return _compile_path(_checked_path(key, path), value, path)


def _compile_list(value: object, path: Path, name: str) -> list[_Node]:
    if not isinstance(value, list):
        raise SpecError(path, f"{name!r} takes a list of conditions, not {kind_of(value)}")
    if not value:
        raise SpecError(path, f"an empty {name!r} list: give at least one condition")
    return [_compile_mapping(item, (*path, index)) for index, item in enumerate(value)]


def _all_of(parts: list[_Node]) -> _Node:
    if len(parts) == 1:
        return parts[0]
    return AllOf(tuple(parts), " and ".join(part.text for part in parts))


def _checked_path(key: object, path: Path) -> str:
    if not isinstance(key, str) or not key:
        raise SpecError(path, f"a condition key must be a dotted path, not {kind_of(key)}")
    if not all(key.split(".")):
        raise SpecError(path, f"{quote(key)} is not a dotted path such as 'properties.cart_value'")
    return key


def _compile_path(key: str, value: object, path: Path) -> _Node:
    if not isinstance(value, Mapping):
        return compile_leaf(key, "eq", value, path)
    if not value:
        raise SpecError(path, f"no operator for {quote(key)}: use one of {', '.join(OPERATORS)}")
    return _all_of(
        [compile_leaf(key, op, arg, (*path, path_part(op))) for op, arg in value.items()]
    )
