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
* ``gt gte lt lte`` compare numbers with numbers and strings with strings; any other pair (a
  string against a number, a list, ``null``) fails instead of raising.
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

import difflib
import re
import reprlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Final, Protocol

import re2

from trigmail.errors import SpecError
from trigmail.events import MISSING
from trigmail.rules.quoting import quote

if TYPE_CHECKING:
    from trigmail.events import Event
    from trigmail.rules.model import Condition

Path = tuple[str | int, ...]
Predicate = Callable[[Any], bool]

_REPR: Final = reprlib.Repr()
# Descriptions end up in logs and `simulate` output: a huge property must not flood them.
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = 8
_REPR.maxdict = 4


class _Node(Protocol):
    @property
    def text(self) -> str: ...

    def check(self, event: Event) -> str | None: ...


@dataclass(frozen=True, slots=True)
class Leaf:
    """One operator applied to the value at one path."""

    path: str
    text: str
    test: Predicate
    holds_if_missing: bool

    def check(self, event: Event) -> str | None:
        value = event.lookup(self.path)
        if value is MISSING:
            return None if self.holds_if_missing else f"{self.text} (missing)"
        if self.test(value):
            return None
        return f"{self.text} (was {_REPR.repr(value)})"


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
        raise SpecError(path, f"a condition must be a mapping of paths to tests, not {_kind(spec)}")
    if not spec:
        raise SpecError(path, "an empty condition: give at least one path, or all/any/not")
    return _all_of([_compile_entry(key, value, (*path, _part(key))) for key, value in spec.items()])


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
        raise SpecError(path, f"{name!r} takes a list of conditions, not {_kind(value)}")
    if not value:
        raise SpecError(path, f"an empty {name!r} list: give at least one condition")
    return [_compile_mapping(item, (*path, index)) for index, item in enumerate(value)]


def _all_of(parts: list[_Node]) -> _Node:
    if len(parts) == 1:
        return parts[0]
    return AllOf(tuple(parts), " and ".join(part.text for part in parts))


def _checked_path(key: object, path: Path) -> str:
    if not isinstance(key, str) or not key:
        raise SpecError(path, f"a condition key must be a dotted path, not {_kind(key)}")
    if not all(key.split(".")):
        raise SpecError(path, f"{quote(key)} is not a dotted path such as 'properties.cart_value'")
    return key


def _compile_path(key: str, value: object, path: Path) -> _Node:
    if not isinstance(value, Mapping):
        return _compile_leaf(key, "eq", value, path)
    if not value:
        raise SpecError(path, f"no operator for {quote(key)}: use one of {', '.join(OPERATORS)}")
    return _all_of([_compile_leaf(key, op, arg, (*path, _part(op))) for op, arg in value.items()])


def _compile_leaf(key: str, op: object, expected: object, path: Path) -> Leaf:
    build = OPERATORS.get(op) if isinstance(op, str) else None
    if build is None:
        raise SpecError(path, _unknown_operator(op))
    test, holds_if_missing = build(expected, path)
    return Leaf(key, f"{key} {op} {_REPR.repr(expected)}", test, holds_if_missing)


def _unknown_operator(op: object) -> str:
    message = f"unknown operator {quote(op)}"
    close = difflib.get_close_matches(str(op), OPERATORS, n=1)
    if close:
        return f"{message}, did you mean {close[0]!r}?"
    return f"{message} (use one of {', '.join(OPERATORS)})"


# Operator builders: check the expected value at compile time (raising SpecError with its
# path) and return the predicate on a present value, and whether a missing value holds.
Built = tuple[Predicate, bool]


def _build_eq(expected: object, path: Path) -> Built:
    _check_json(expected, path)
    return _equals(expected), False


def _build_ne(expected: object, path: Path) -> Built:
    _check_json(expected, path)
    equals = _equals(expected)
    return (lambda value: not equals(value)), True


def _build_in(expected: object, path: Path) -> Built:
    return _member_test(_checked_list(expected, path, "in")), False


def _build_not_in(expected: object, path: Path) -> Built:
    is_member = _member_test(_checked_list(expected, path, "not_in"))
    return (lambda value: not is_member(value)), True


def _build_exists(expected: object, path: Path) -> Built:
    if not isinstance(expected, bool):
        raise SpecError(path, f"'exists' takes true or false, not {_kind(expected)}")
    return (lambda _value: expected), not expected


def _build_contains(expected: object, path: Path) -> Built:
    if not _is_scalar(expected):
        raise SpecError(path, f"'contains' takes one string or number, not {_kind(expected)}")
    equals = _equals(expected)

    def contains(value: Any) -> bool:
        if isinstance(value, str):
            return isinstance(expected, str) and expected in value
        return isinstance(value, list) and any(equals(item) for item in value)

    return contains, False


def _re2_options() -> Any:
    options = re2.Options()
    # RE2 writes its own complaint to stderr; the SpecError says it better, at its position.
    options.log_errors = False
    return options


_RE2_OPTIONS: Final = _re2_options()
_SURROGATES: Final = dict.fromkeys(range(0xD800, 0xE000), 0xFFFD)


def _re2_message(pattern: str, exc: Exception) -> str:
    reason = exc.args[0] if exc.args else str(exc)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8", "replace")
    message = f"invalid regular expression {quote(pattern)}: {reason}"
    try:
        # Only to tell which kind of error it is: Python's own warnings are not the point.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            re.compile(pattern)
    except (re.error, RecursionError, OverflowError):
        return message
    # Valid for Python, refused by RE2: say why, and that it is on purpose.
    return (
        f"{message}: matches uses RE2, which has no backreferences or lookaround (they can "
        "take exponential time on one event); rewrite the pattern without them"
    )


def _build_matches(expected: object, path: Path) -> Built:
    if not isinstance(expected, str):
        raise SpecError(path, f"'matches' takes a regular expression string, not {_kind(expected)}")
    try:
        search = re2.compile(expected, _RE2_OPTIONS).search
    except re2.error as exc:
        raise SpecError(path, _re2_message(expected, exc)) from None
    except (TypeError, UnicodeError) as exc:
        raise SpecError(path, f"invalid regular expression {quote(expected)}: {exc}") from None

    def matches(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        try:
            return search(value) is not None
        except UnicodeEncodeError:
            # A lone surrogate (JSON allows "\ud800") has no UTF-8 form: RE2 sees it as U+FFFD,
            # one character.
            return search(value.translate(_SURROGATES)) is not None

    return matches, False


def _order(compare: Callable[[Any, Any], bool], op: str) -> Callable[[object, Path], Built]:
    def build(expected: object, path: Path) -> Built:
        if _is_number(expected):
            return (lambda value: _is_number(value) and compare(value, expected)), False
        if isinstance(expected, str):
            return (lambda value: isinstance(value, str) and compare(value, expected)), False
        raise SpecError(
            path, f"{quote(op)} compares with a number or a string, not {_kind(expected)}"
        )

    return build


OPERATORS: Final[Mapping[str, Callable[[object, Path], Built]]] = {
    "eq": _build_eq,
    "ne": _build_ne,
    "gt": _order(lambda a, b: a > b, "gt"),
    "gte": _order(lambda a, b: a >= b, "gte"),
    "lt": _order(lambda a, b: a < b, "lt"),
    "lte": _order(lambda a, b: a <= b, "lte"),
    "in": _build_in,
    "not_in": _build_not_in,
    "exists": _build_exists,
    "contains": _build_contains,
    "matches": _build_matches,
}


def _equals(expected: object) -> Predicate:
    """Return a JSON equality test against ``expected``, specialised for the common kinds."""
    if expected is None or isinstance(expected, bool):
        return lambda value: value is expected
    if _is_number(expected):
        return lambda value: _is_number(value) and value == expected
    if isinstance(expected, str):
        return lambda value: isinstance(value, str) and value == expected
    return lambda value: _json_equal(value, expected)


def _json_equal(left: object, right: object) -> bool:
    """JSON equality: like ``==`` except that booleans are not numbers, at any depth."""
    left_key, right_key = _scalar_key(left), _scalar_key(right)
    if left_key is not None or right_key is not None:
        return left_key == right_key
    if isinstance(left, list) and isinstance(right, list):
        return len(left) == len(right) and all(map(_json_equal, left, right))
    if isinstance(left, Mapping) and isinstance(right, Mapping):
        return left.keys() == right.keys() and all(_json_equal(left[k], right[k]) for k in left)
    return False


def _scalar_key(value: object) -> tuple[str, object] | None:
    """Return a hashable key equal for equal JSON scalars (so ``True`` is not ``1``)."""
    if isinstance(value, str):
        return ("str", value)
    if _is_number(value):
        return ("number", value)
    if value is None or isinstance(value, bool):
        return ("constant", value)
    return None


def _member_test(items: list[Any]) -> Predicate:
    keys = frozenset(key for key in map(_scalar_key, items) if key is not None)
    composites = tuple(item for item in items if _scalar_key(item) is None)

    def is_member(value: Any) -> bool:
        key = _scalar_key(value)
        if key is not None:
            return key in keys
        return any(_json_equal(value, item) for item in composites)

    return is_member


def _checked_list(expected: object, path: Path, op: str) -> list[Any]:
    if not isinstance(expected, list):
        raise SpecError(path, f"{op!r} takes a list, not {_kind(expected)} (use [ ] around it)")
    for index, item in enumerate(expected):
        _check_json(item, (*path, index))
    return expected


def _check_json(value: object, path: Path) -> None:
    """Reject what YAML can load but JSON events never hold, such as an unquoted date."""
    if _is_scalar(value):
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            _check_json(item, (*path, index))
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_json(item, (*path, _part(key)))
        return
    hint = f" (quote it: '{value}')" if isinstance(value, date) else ""
    raise SpecError(path, f"{_kind(value)} never matches an event value{hint}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def _part(key: object) -> str | int:
    return key if isinstance(key, str | int) else str(key)


def _kind(value: object) -> str:
    if value is None:
        return "null"
    kinds: list[tuple[type | tuple[type, ...], str]] = [
        (bool, "a boolean"),
        ((int, float), "a number"),
        (str, f"the string {_REPR.repr(value)}"),
        (list, "a list"),
        (Mapping, "a mapping"),
        (date, "a date"),
    ]
    for kind, name in kinds:
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"
