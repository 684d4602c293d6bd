"""Data of constants and plain paths (``{{ properties.cart_url }}``, ``{{ user.first_name |
default('there') }}``), most rules' data, rendered without a budget or a call per string.

A render under a budget (``rules.templating``) would read exactly the same items and count
only sizes: steps below a read of the CPU clock. Where a path is not all there in exact dicts
and lists, or a value is over a bound, :func:`render_plain` gives up and that render judges
it, value or error (tests/test_templating_plain.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from trigmail.errors import TemplateRenderError
from trigmail.rules import limits
from trigmail.rules.jinjastrings import Field

# One top-level item of a plain data: its key, its path (``None``: a constant), the constant
# or the default's, for a default whether each step of the path that a dict lacks gives the
# default (else ``None``), and where it is for errors.
PlainItem = tuple[str, Field | None, object, tuple[bool, ...] | None, str]

# What check_value measures by its length.
_SIZED: Final = (str, bytes, list, tuple, dict, set, frozenset)


def render_plain(items: tuple[PlainItem, ...], data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The root's render when every path is all there (or a default stands in for it) and
    every value is within the budget's bounds, without a budget or a call per string; else
    ``None``, for the render under a budget to give its value or its error.

    The same values as that render: a path walked through exact dicts and lists as _Lookup
    walks it, a default's value checked as _LookupOr checks it (its size, the made total of
    its two checks; fewer steps than a clock read), JSON values copied by json_value.
    """
    rendered: dict[str, Any] = {}
    made = 0
    for key, path, constant, gives, where in items:
        if path is None:
            rendered[key] = constant
            continue
        value: Any = data
        for part in path:
            if type(value) is dict and part in value:
                value = value[part]
            else:  # a list, a default, or no plain path at all: walked again, every case
                value = _walked(data, path, constant, gives)
                if value is _NOT_PLAIN:
                    return None
                break
        if gives is not None:
            made += _made(value)
            if made > limits.MAX_MADE_CHARS:  # also where a value is over a bound (_made)
                return None
        if type(value) in _SCALARS:
            rendered[key] = value
        else:
            try:
                rendered[key] = json_value(value, where)
            except TemplateRenderError:
                return None
    return rendered


# What _walked returns where a render under a budget must judge the path.
_NOT_PLAIN: Final = object()


def _walked(data: Any, path: Field, constant: object, gives: tuple[bool, ...] | None) -> Any:
    value = data
    for index, part in enumerate(path):
        kind = type(value)
        if (kind is dict and part in value) or (
            kind is list and type(part) is int and -len(value) <= part < len(value)
        ):
            value = value[part]
        elif kind is dict and gives is not None and gives[index]:
            return constant
        else:
            return _NOT_PLAIN
    return value


def _made(value: Any) -> int:
    """What a default's value adds to the made total (its two checks, check_value's count);
    over the total when the value is over a bound of its own."""
    if isinstance(value, _SIZED):
        size = len(value)
        return 2 * size if size <= limits.MAX_CHARS else limits.MAX_MADE_CHARS + 1
    if isinstance(value, int) and value.bit_length() > limits.MAX_INT_BITS:
        return limits.MAX_MADE_CHARS + 1
    return 0


# The exact types JSON decodes to: a set lookup is faster than isinstance with a union.
_SCALARS: Final = frozenset({str, int, float, bool, type(None)})


def json_value(value: Any, where: str) -> Any:
    """Copy a native result as JSON data; anything else is a template error."""
    if type(value) in _SCALARS or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, list | tuple):
        return [json_value(item, where) for item in value]
    if isinstance(value, Mapping) and all(isinstance(key, str) for key in value):
        return {key: json_value(item, where) for key, item in value.items()}
    raise TemplateRenderError(f"{where}: the value is a {type(value).__name__}, not JSON data")
