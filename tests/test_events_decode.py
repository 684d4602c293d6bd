"""An event line's JSON (trigmail.eventjson): orjson's value, where it takes the line, is the
standard library's, and the standard library's own path is the C scanner called directly when
the line opens an object at once (``decoded``): the same value, or the same error, as
``JSONDecoder.decode``."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.errors import BadEventError
from trigmail.eventjson import _DECODER, SLOW, decoded, fast_decoded, line_text
from trigmail.events import parse_event


def _outcome(decode: Any, text: str) -> object:
    try:
        return ("value", decode(text))
    except (ValueError, RecursionError) as exc:
        return (type(exc), str(exc))


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)
READ_AT = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
_BLANKS = st.text(alphabet=" \t\n\r\x0b\x0c\u00a0", max_size=3)


@settings(max_examples=300, deadline=None)
@given(
    obj=st.dictionaries(st.text(max_size=4), _JSON, max_size=4),
    before=_BLANKS,
    after=_BLANKS,
    extra=st.sampled_from(["", "x", "{}", " 1", "\n{", "]"]),
)
def test_decoded_as_decode_does(obj: dict[str, Any], before: str, after: str, extra: str) -> None:
    text = before + json.dumps(obj) + after + extra
    assert _outcome(decoded, text) == _outcome(_DECODER.decode, text)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{",
        "{}",
        "{} ",
        "{}\n",
        "{}\u00a0",  # not JSON whitespace: extra data
        "{}\x0b",
        '{"a": 1} x',
        '{"a": 1}{"b": 2}',
        '{"a": NaN}',
        '{"a": 1e999}',
        '{"a": Infinity}',
        '{"a": "\\ud800"}',
        '{"a" 1}',
        "[1, 2]",
        " {}",
        "{" * 100_000,
        '{"a": [' + "[" * 100_000,
    ],
)
def test_decoded_at_the_edges(text: str) -> None:
    assert _outcome(decoded, text) == _outcome(_DECODER.decode, text)


def _same_value(fast: Any, slow: Any) -> bool:
    """Equal, and of the same types all the way down (``1 == 1.0`` and ``0.0 == -0.0`` are not
    the same value here), keys in the same order."""
    return repr(fast) == repr(slow) and fast == slow


def _as_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


_WIDE_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=6)
    | st.sampled_from(["\ud800", "\u0000", "x\u00e9", "\n", "é", "\t"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=10,
)


@settings(max_examples=500, deadline=None)
@given(
    obj=st.dictionaries(st.text(max_size=4), _WIDE_JSON, max_size=5),
    ascii_only=st.booleans(),
    before=_BLANKS,
    after=_BLANKS,
    extra=st.sampled_from(["", "x", "{}", " 1", "\n{", "]", "\ufeff"]),
)
def test_orjson_takes_a_line_only_where_its_value_is_the_standard_librarys(
    obj: dict[str, Any], ascii_only: bool, before: str, after: str, extra: str
) -> None:
    line = _as_bytes(before + json.dumps(obj, ensure_ascii=ascii_only) + after + extra)
    fast = fast_decoded(line)
    if fast is not SLOW:
        assert _same_value(fast, decoded(line_text(line)))  # which does not raise


@pytest.mark.parametrize(
    "line",
    [
        b'{"a": 1234567890123456789012}',  # beyond 64 bits: orjson would make it a float
        b'{"a": -9223372036854775809}',
        b'{"a": 18446744073709551616}',
        b'{"a": "\\ud800"}',  # a lone surrogate: refused later with its own reason
        b'{"a": "\\u0000"}',
        b'{"a": "\xed\xa0\x80"}',  # a surrogate encoded raw: not UTF-8
        b'\xef\xbb\xbf{"a": 1}',  # a byte order mark, which json.loads strips
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b'{"a": "\x00"}',
        b'{"a": 1}\x0c',
        b"{" * 2_000,
    ],
)
def test_orjson_leaves_the_lines_it_would_read_otherwise(line: bytes) -> None:
    assert fast_decoded(line) is SLOW


@pytest.mark.parametrize(
    "line",
    [
        b'{"id": "e1", "n": 922337203685477580, "f": 0.1, "z": -0.0, "e": 1e-400}',
        b'{"b": 1, "a": 2, "b": 3}',  # the last value, in the first key's place
        b' {"a": [1, 2.5, "\xc3\xa9", null, true]} \n',
    ],
)
def test_orjson_reads_common_lines_as_the_standard_library_does(line: bytes) -> None:
    fast = fast_decoded(line)
    assert fast is not SLOW
    assert _same_value(fast, decoded(line_text(line)))


def _event_outcome(line: str | bytes) -> object:
    try:
        event = parse_event(line, READ_AT)
    except BadEventError as exc:
        return ("set aside", exc.reason, exc.detail)
    return ("event", event.id, event.name, event.user_id, event.email, event.ts, repr(event.data))


_FIELDS = st.fixed_dictionaries(
    {"event": st.sampled_from(["signup", "", 7]), "user_id": st.sampled_from(["u1", "\x00"])},
    optional={
        "id": st.sampled_from(["e1", "e\ud800", 12345678901234567890123]),
        "email": st.sampled_from(["a@example.com", "not an address"]),
        "ts": st.sampled_from(["2026-11-27T20:00:00Z", "2026-11-27T20:00:00.000000Z", "x"]),
        "properties": st.dictionaries(st.text(max_size=4), _WIDE_JSON, max_size=3),
    },
)


@settings(max_examples=300, deadline=None)
@given(obj=_FIELDS, ascii_only=st.booleans(), extra=st.sampled_from(["", " ", "x", "\ufeff"]))
def test_an_event_line_read_as_bytes_is_judged_as_its_text_is(
    obj: dict[str, Any], ascii_only: bool, extra: str
) -> None:
    # Sources hand lines over as bytes (orjson may take them); text goes the standard way.
    line = _as_bytes(json.dumps(obj, ensure_ascii=ascii_only) + extra)
    assert _event_outcome(line) == _event_outcome(line_text(line))
