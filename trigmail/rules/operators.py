"""The operators of ``when`` conditions, and the leaf that applies one (docs/design.md §2).

Each operator checks its operand when the rule is loaded (a :class:`~trigmail.errors.SpecError`
with the operand's path) and returns a predicate on a present value, plus whether a missing
value holds; :mod:`trigmail.rules.conditions` says what each means. A leaf depends only on its
path, operator and operand, so equal ones are compiled once and shared by every rule that
writes them (the same ``user.country in [PT, ES]`` across a campaign's files).
"""

from __future__ import annotations

import difflib
import operator
import re
import reprlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Final

import re2

from trigmail.errors import SpecError
from trigmail.events import MISSING
from trigmail.rules.quoting import quote

if TYPE_CHECKING:
    from trigmail.events import Event

Path = tuple[str | int, ...]
Predicate = Callable[[Any], bool]

_REPR: Final = reprlib.Repr()
# Descriptions end up in logs and `simulate` output: a huge property must not flood them.
_REPR.maxstring = 60
_REPR.maxother = 60
_REPR.maxlist = 8
_REPR.maxdict = 4


@dataclass(frozen=True, slots=True)
class Leaf:
    """One operator applied to the value at one path."""

    path: str
    text: str
    test: Predicate
    holds_if_missing: bool
    #: Whether the operand is a number, so that a string that is not one says why it failed.
    numeric: bool = False

    def check(self, event: Event) -> str | None:
        value = event.lookup(self.path)
        if value is MISSING:
            return None if self.holds_if_missing else f"{self.text} (missing)"
        if self.test(value):
            return None
        if self.numeric and isinstance(value, str) and as_number(value) is None:
            return f"{self.text} (was {_REPR.repr(value)}, not a number)"
        return f"{self.text} (was {_REPR.repr(value)})"


# Enough for the distinct leaves of a large rule set; past it the cache starts over.
_MAX_LEAVES: Final = 8192
_LEAVES: dict[tuple[object, ...], Leaf] = {}


def compile_leaf(key: str, op: object, expected: object, path: Path) -> Leaf:
    """Compile ``key: {op: expected}``; an equal leaf compiled before is returned as it is.

    Raises:
        SpecError: for an unknown operator or an operand it does not take, at ``path``.
    """
    cache_key = _leaf_key(key, op, expected)
    leaf = _LEAVES.get(cache_key) if cache_key is not None else None
    if leaf is None:
        leaf = _compile_leaf(key, op, expected, path)
        if cache_key is not None:
            if len(_LEAVES) >= _MAX_LEAVES:
                _LEAVES.clear()
            _LEAVES[cache_key] = leaf
    return leaf


def _leaf_key(key: str, op: object, expected: object) -> tuple[object, ...] | None:
    """A key equal only for operands that compile and read alike, or ``None`` (not cached).

    Types are part of it (``1``, ``1.0`` and ``true`` are equal in Python, not here), and a
    float by its ``repr`` (``-0.0`` is written so in the condition's text).
    """
    if not isinstance(op, str):
        return None
    if isinstance(expected, list):
        items = [_operand_key(item) for item in expected]
        if None in items:
            return None
        return (key, op, list, *items)
    single = _operand_key(expected)
    return None if single is None else (key, op, single)


def _operand_key(value: object) -> tuple[type, object] | None:
    if isinstance(value, float):
        return (float, repr(value))
    if value is None or isinstance(value, str | int):
        return (type(value), value)
    return None


def _compile_leaf(key: str, op: object, expected: object, path: Path) -> Leaf:
    build = OPERATORS.get(op) if isinstance(op, str) else None
    if build is None:
        raise SpecError(path, _unknown_operator(op))
    test, holds_if_missing = build(expected, path)
    numeric = op in _NUMERIC_OPS and _is_number_operand(expected)
    return Leaf(key, f"{key} {op} {_REPR.repr(expected)}", test, holds_if_missing, numeric)


_NUMERIC_OPS: Final = frozenset({"eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in"})


def _is_number_operand(expected: object) -> bool:
    """A number, or a non-empty list of numbers only (for ``in``/``not_in``)."""
    if isinstance(expected, list):
        return bool(expected) and all(map(_is_number, expected))
    return _is_number(expected)


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
    if _is_number(expected):
        return (lambda value: not equals(value) and not _is_non_number_text(value)), True
    return (lambda value: not equals(value)), True


def _build_in(expected: object, path: Path) -> Built:
    return _member_test(_checked_list(expected, path, "in")), False


def _build_not_in(expected: object, path: Path) -> Built:
    is_member = _member_test(_checked_list(expected, path, "not_in"))
    if _is_number_operand(expected):
        return (lambda value: not is_member(value) and not _is_non_number_text(value)), True
    return (lambda value: not is_member(value)), True


def _build_exists(expected: object, path: Path) -> Built:
    if not isinstance(expected, bool):
        raise SpecError(path, f"'exists' takes true or false, not {kind_of(expected)}")
    return (lambda _value: expected), not expected


def _build_contains(expected: object, path: Path) -> Built:
    if not _is_scalar(expected):
        raise SpecError(path, f"'contains' takes one string or number, not {kind_of(expected)}")
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
        raise SpecError(
            path, f"'matches' takes a regular expression string, not {kind_of(expected)}"
        )
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
            return (lambda value: _holds_as_number(value, expected, compare)), False
        if isinstance(expected, str):
            return (lambda value: isinstance(value, str) and compare(value, expected)), False
        raise SpecError(
            path, f"{quote(op)} compares with a number or a string, not {kind_of(expected)}"
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
        return lambda value: _holds_as_number(value, expected, operator.eq)
    if isinstance(expected, str):
        return lambda value: isinstance(value, str) and value == expected
    return lambda value: _json_equal(value, expected)


def _holds_as_number(value: Any, expected: object, compare: Callable[[Any, Any], bool]) -> bool:
    if _is_number(value):
        return compare(value, expected)
    if isinstance(value, str):
        number = as_number(value)
        return number is not None and compare(number, expected)
    return False


# A decimal number as text: what a JSON number allows, plus a leading "+", leading zeros and a
# bare fraction (".5"); never "nan", "inf" or "1_000", which float() would take.
_NUMBER_TEXT: Final = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
# Longer text is no measurement anyone compares; int() also refuses over 4,300 digits.
_MAX_NUMBER_TEXT: Final = 64


def as_number(text: str) -> int | float | None:
    """Return the number a string spells (surrounding blanks allowed), or ``None``."""
    text = text.strip()
    if len(text) > _MAX_NUMBER_TEXT or _NUMBER_TEXT.fullmatch(text) is None:
        return None
    if text.lstrip("+-").isdigit():
        return int(text)
    return float(text)


def _is_non_number_text(value: object) -> bool:
    return isinstance(value, str) and as_number(value) is None


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
    has_numbers = any(map(_is_number, items))

    def is_member(value: Any) -> bool:
        key = _scalar_key(value)
        if key is not None:
            if key in keys:
                return True
            # A string that spells a number is also that number, against the list's numbers.
            number = as_number(value) if has_numbers and isinstance(value, str) else None
            return number is not None and ("number", number) in keys
        return any(_json_equal(value, item) for item in composites)

    return is_member


def _checked_list(expected: object, path: Path, op: str) -> list[Any]:
    if not isinstance(expected, list):
        raise SpecError(path, f"{op!r} takes a list, not {kind_of(expected)} (use [ ] around it)")
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
            _check_json(item, (*path, path_part(key)))
        return
    hint = f" (quote it: '{value}')" if isinstance(value, date) else ""
    raise SpecError(path, f"{kind_of(value)} never matches an event value{hint}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float)


def path_part(key: object) -> str | int:
    return key if isinstance(key, str | int) else str(key)


def kind_of(value: object) -> str:
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
