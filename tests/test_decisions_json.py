"""A payload's JSON text (stored in the ledger, sent to the provider) is its to_json() encoded."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigmail.decisions import Payload
from trigmail.rules.model import Address

_STRICT = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))

_JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=12,
)
_ADDRESS = st.none() | st.builds(Address, st.text(max_size=8), st.none() | st.text(max_size=8))


def _text(encode: Any) -> object:
    try:
        return encode()
    except (TypeError, ValueError) as exc:
        return (type(exc), str(exc))


@given(
    template=st.text(max_size=12),
    data=st.dictionaries(st.text(max_size=6), _JSON, max_size=4),
    categories=st.lists(st.text(max_size=6), max_size=3).map(tuple),
    asm_group=st.none() | st.integers(),
    from_=_ADDRESS,
    reply_to=_ADDRESS,
    variant=st.none() | st.text(max_size=6),
)
def test_the_json_text_is_to_json_encoded(
    template: str,
    data: dict[str, Any],
    categories: tuple[str, ...],
    asm_group: int | None,
    from_: Address | None,
    reply_to: Address | None,
    variant: str | None,
) -> None:
    payload = Payload(template, data, categories, asm_group, from_, reply_to, variant)
    expected = _text(lambda: _STRICT.encode(payload.to_json()))
    fresh = Payload(template, data, categories, asm_group, from_, reply_to, variant)
    assert _text(fresh.json_text) == expected


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"x": float("nan")}, ValueError),
        ({"x": float("inf")}, ValueError),
        ({"x": {1, 2}}, TypeError),
        ({"x": object()}, TypeError),
    ],
)
def test_data_json_cannot_hold_fails_as_before(data: dict[str, Any], error: type) -> None:
    payload = Payload("d-1", data)
    with pytest.raises(error) as expected:
        _STRICT.encode(payload.to_json())
    with pytest.raises(error) as got:
        payload.json_text()
    assert str(got.value) == str(expected.value)


def test_a_template_with_quotes_and_backslashes() -> None:
    payload = Payload('d-"x"\\', {"a": 1}, ("c",), 7, Address("a@b.co", 'N "q"'), None, "v")
    assert payload.json_text() == _STRICT.encode(payload.to_json())
    assert json.loads(payload.json_text()) == payload.to_json()


def test_the_shared_encoder_is_unharmed_by_a_failed_encode() -> None:
    # One C encoder serves every payload: a call that fails half-way must leave nothing behind.
    inner = {"b": [1, 2]}
    with pytest.raises(ValueError):
        Payload("d-1", {"a": inner, "z": float("nan")}).json_text()
    assert Payload("d-1", {"a": inner, "c": inner}).json_text() == _STRICT.encode(
        Payload("d-1", {"a": inner, "c": inner}).to_json()
    )


def test_circular_data_is_refused() -> None:
    # Never made by a render (it copies decoded JSON); refused rather than encoded forever.
    data: dict[str, Any] = {}
    data["self"] = data
    with pytest.raises((RecursionError, ValueError)):
        Payload("d-1", data).json_text()
