"""An event line's JSON is decoded by the C scanner directly when it opens an object at once
(``events._decoded``): the same value, or the same error, as ``JSONDecoder.decode``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.events import _DECODER, _decoded


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
    assert _outcome(_decoded, text) == _outcome(_DECODER.decode, text)


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
    assert _outcome(_decoded, text) == _outcome(_DECODER.decode, text)
