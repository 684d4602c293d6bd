"""The common-event fast path of ``parse_event`` agrees with the general path, errors too."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.errors import BadEventError
from trigmail.events import _event_from_shallow, _plain_event, parse_event

READ_AT = datetime(2026, 11, 28, 9, 30, tzinfo=UTC)

# An event the fast path takes, and for each field the values it must leave to the general
# path or judge exactly as that path does.
COMMON: dict[str, Any] = {
    "id": "evt_1",
    "event": "cart_abandoned",
    "user_id": "u_1",
    "email": "ana@example.com",
    "ts": "2026-11-27T20:00:00.250000Z",
    "user": {"plan": "pro"},
    "properties": {"cart_value": 20.5},
}
_OTHERS: list[Any] = [None, 0, 1.5, True, [], ["x"], {}, {"a": 1}]
_TEXTS = ["x", "", " ", "\t", "\n", "ü", "a b", " x "]
ODD: dict[str, list[Any]] = {
    "event": [*_TEXTS, *_OTHERS],
    "user_id": [*_TEXTS, *_OTHERS],
    "id": [*_TEXTS, *_OTHERS],
    "email": [
        "a.b+c@mail.example.co",
        "ana@localhost",
        "ana@example.test",  # a special-use domain: plain in form, refused by the validator
        "not an address",
        "ana@@example.com",
        "Ana <ana@example.com>",
        "ü@example.com",
        "ana@exämple.com",
        "",
        *_OTHERS,
    ],
    "ts": [
        "2026-11-27T20:00:00Z",
        "2026-11-27T20:00:00.123456Z",
        "2026-11-27T20:00:00.000000Z",  # written without its fraction
        "2026-11-27T20:00:00.123Z",
        "2026-11-27T20:00:00z",
        "2026-11-27t20:00:00Z",
        "2026-11-27 20:00:00Z",
        "2026-11-27T20:00:00+00:00",
        "2026-11-27T21:00:00+01:00",
        "2026-11-27T20:00:00",
        " 2026-11-27T20:00:00Z",
        "2026-11-27T20:00:00Z ",
        "1899-12-31T23:59:59Z",  # before the accepted years
        "1900-01-01T00:00:00Z",
        "8999-12-31T23:59:59.999999Z",
        "9000-01-01T00:00:00Z",  # after them
        "0001-01-01T00:00:00Z",
        "2026-13-27T20:00:00Z",
        "2026-11-27T24:00:00Z",
        "2026-11-27T20:00:60Z",
        "2026-11-27T20:00:00.12345 Z",
        "2026-11-27T20:00:00.1234567Z",
        "2026-11-27T20:00:00.+12345Z",
        "20261127T200000Z",
        "",
        *_OTHERS,
    ],
    "user": [[], "x", None, 3, {}],
    "properties": [[1], "x", None, 0, {}],
}


def _outcome(parse: Any, obj: object) -> object:
    try:
        return parse(obj)
    except BadEventError as exc:
        return ("error", exc.reason, exc.detail)


def _agree(obj: dict[str, Any]) -> None:
    # Each path gets its own decoded copy: the fast one keeps the object as the event's data.
    expected = _outcome(lambda o: _event_from_shallow(o, READ_AT), json.loads(json.dumps(obj)))
    fast = _plain_event(json.loads(json.dumps(obj)), READ_AT)
    if fast is not None:
        assert fast == expected
        assert isinstance(expected, type(fast))
        # The same data, keys in the same order: the ledger and the hash id see the text.
        assert list(fast.data.items()) == list(expected.data.items())
    line = json.dumps(obj).encode()
    assert _outcome(lambda raw: parse_event(raw, READ_AT), line) == expected


@pytest.mark.parametrize(
    ("name", "value"), [(name, value) for name, values in ODD.items() for value in values]
)
def test_each_odd_value_is_judged_as_the_general_path_judges_it(name: str, value: Any) -> None:
    _agree({**COMMON, name: value})


@pytest.mark.parametrize("name", list(COMMON))
def test_each_field_left_out_is_judged_as_the_general_path_judges_it(name: str) -> None:
    _agree({key: value for key, value in COMMON.items() if key != name})


@st.composite
def _objects(draw: st.DrawFn) -> dict[str, Any]:
    # Fields in any order, two or three of them odd (or left out) together.
    names = draw(st.permutations(list(COMMON)))
    odd = set(draw(st.lists(st.sampled_from(names), min_size=1, max_size=3)))
    obj: dict[str, Any] = {}
    for name in names:
        if name not in odd:
            obj[name] = COMMON[name]
        elif draw(st.integers(0, 5)):
            obj[name] = draw(st.sampled_from(ODD[name]))
    return obj


@settings(max_examples=300)
@given(_objects())
def test_odd_values_together_are_judged_as_the_general_path_judges_them(
    obj: dict[str, Any],
) -> None:
    _agree(obj)


def test_the_fast_path_takes_the_common_event() -> None:
    event = _plain_event(json.loads(json.dumps(COMMON)), READ_AT)
    assert event is not None
    assert event.ts == datetime(2026, 11, 27, 20, 0, 0, 250000, tzinfo=UTC)
    assert _plain_event({**COMMON, "ts": "2026-11-27T20:00:00Z"}, READ_AT) is not None
    assert _plain_event({**COMMON, "email": None}, READ_AT) is not None
