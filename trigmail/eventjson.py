"""One event line's JSON, decoded as the standard library decodes it.

Most lines go to orjson, several times faster than the standard library's C scanner, but only
where its value is the same. orjson turns an integer beyond 64 bits into a float: a line with a
run of 19 digits goes the standard library's way, and so does a line with an escape (``\\u``
could make a lone surrogate or a NUL, refused with their own reasons). On any line orjson
refuses (not JSON, not UTF-8, NaN, a number out of range, a byte order mark, nesting past its
limit) the standard library decides, with its own message: a line set aside gets the same
reason and detail whichever way it went (``tests/test_events_decode.py``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from math import isinf
from typing import Any, Final

import orjson

#: Not decoded here: decode the line's text with :func:`decoded`.
SLOW: Final = object()

# An integer of at most 18 digits is inside 64 bits, where orjson keeps it exact: a run of 19
# digits anywhere (in a string too, harmlessly) sends the line the slow way. Found by turning
# every digit into a zero and seeking nineteen zeros: a regular expression took four times as
# long as orjson's whole decoding.
_DIGITS_AS_ZERO: Final = bytes.maketrans(b"123456789", b"000000000")
_LONG_NUMBER: Final = b"0" * 19
_BACKSLASH: Final = ord("\\")


def fast_decoded(line: bytes) -> Any:
    """The line's value by orjson, or :data:`SLOW` where it may differ from ``json.loads``."""
    # Any escape, found by memchr: seeking "\\u" itself costs four times as much.
    if line.find(_BACKSLASH) >= 0 or _LONG_NUMBER in line.translate(_DIGITS_AS_ZERO):
        return SLOW
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return SLOW  # the standard library says why, as it always has


def _refuse_constant(name: str) -> Any:
    # NaN and Infinity are not JSON (RFC 8259): no ledger or provider would store them.
    raise ValueError(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    # 1e999 decodes to infinity, which no ledger column or provider takes (PostgreSQL's jsonb
    # refuses it, failing the whole batch): a number out of a double's range is not JSON data.
    value = float(text)
    if isinf(value):
        raise ValueError(f"the number {text[:40]} is out of range")
    return value


# One decoder for every line: ``json.loads`` with an option builds a new one per call, which
# doubled the cost of decoding a typical event.
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
_UTF8_BOM = b"\xef\xbb\xbf"
# The decoder's C scanner, which JSONDecoder.decode calls through raw_decode.
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _DECODER.scan_once  # type: ignore[attr-defined]


def decoded(text: str) -> Any:
    """``_DECODER.decode(text)``: the same value or error, without its two Python frames and
    whitespace matches for a line that opens its object at once (nearly every line)."""
    if text[:1] != "{":
        return _DECODER.decode(text)
    try:
        obj, end = _SCAN(text, 0)
    except StopIteration as exc:  # as raw_decode says it (not for "{", which always scans)
        raise json.JSONDecodeError("Expecting value", text, exc.value) from None
    if end != len(text) and end != len(text.rstrip(" \t\n\r")):
        return _DECODER.decode(text)  # more than JSON's whitespace after it: decode's error
    return obj


def line_text(line: str | bytes) -> str:
    """A line's text, as ``json.loads`` decodes bytes."""
    if isinstance(line, str):
        return line
    # Surrogates pass, for the caller to refuse with a clear reason.
    if line.startswith(_UTF8_BOM):
        return line[len(_UTF8_BOM) :].decode("utf-8", "surrogatepass")
    return line.decode("utf-8", "surrogatepass")
