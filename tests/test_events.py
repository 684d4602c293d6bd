"""Event parsing (docs/design.md §1): every bad event is a typed error with a stable reason."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trigmail.errors import BadEventError
from trigmail.events import MISSING, event_hash_id, format_ts, parse_event

READ_AT = datetime(2026, 11, 27, 21, 0, tzinfo=UTC)
GOOD = {
    "id": "evt_1",
    "event": "cart_abandoned",
    "user_id": "u_123",
    "email": "ana@example.com",
    "ts": "2026-11-27T20:00:00Z",
    "user": {"first_name": "Ana", "timezone": "Europe/Lisbon"},
    "properties": {"cart_value": 82.5},
}


def line(**changes: object) -> bytes:
    event = {**GOOD, **changes}
    return json.dumps({k: v for k, v in event.items() if v is not MISSING}).encode()


def test_a_good_event() -> None:
    event = parse_event(line(), READ_AT)
    assert (event.id, event.name, event.user_id, event.email) == (
        "evt_1",
        "cart_abandoned",
        "u_123",
        "ana@example.com",
    )
    assert event.ts == datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
    assert event.lookup("properties.cart_value") == 82.5
    assert event.lookup("user.timezone") == "Europe/Lisbon"
    assert event.lookup("properties.missing") is MISSING


def test_without_id_the_id_is_a_hash_of_the_canonical_json() -> None:
    reordered = b'{"user_id": "u_1", "event": "signup"}'
    first = parse_event(b'{"event": "signup", "user_id": "u_1"}', READ_AT)
    again = parse_event(reordered, READ_AT)
    assert first.id == again.id == event_hash_id({"event": "signup", "user_id": "u_1"})
    assert first.id != parse_event(b'{"event": "signup", "user_id": "u_2"}', READ_AT).id


def test_without_ts_the_time_is_when_it_was_read() -> None:
    assert parse_event(line(ts=MISSING), READ_AT).ts == READ_AT


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-27T20:00:00Z", datetime(2026, 11, 27, 20, 0, tzinfo=UTC)),  # Zulu
        ("2026-11-27T21:00:00+01:00", datetime(2026, 11, 27, 20, 0, tzinfo=UTC)),  # an offset
        ("2026-11-27T20:00:00.250Z", datetime(2026, 11, 27, 20, 0, 0, 250_000, tzinfo=UTC)),  # ms
    ],
)
def test_ts_is_normalised_to_utc(ts: str, expected: datetime) -> None:
    assert parse_event(line(ts=ts), READ_AT).ts == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "invalid_json"),  # not JSON at all
        (b'{"event": "a", "user_id": "u"', "invalid_json"),  # a half-written line
        (b'{"event": "a", "user_id": "u", "n": NaN}', "invalid_json"),  # NaN is not JSON
        (b'{"event": "a", "user_id": "\\ud800"}', "invalid_json"),  # a lone surrogate
        (b"[1, 2]", "not_object"),  # an array
        (b'"text"', "not_object"),  # a string
        (line(event=MISSING), "missing_field"),  # no event name
        (line(user_id=MISSING), "missing_field"),  # no user
        (line(user_id=""), "bad_field"),  # an empty user
        (line(user_id=7), "bad_field"),  # a number for a user
        (line(id=""), "bad_field"),  # an empty id
        (line(properties=[1]), "bad_field"),  # properties not an object
        (line(user="Ana"), "bad_field"),  # user not an object
        (line(user_id="u\x00"), "bad_field"),  # a NUL character (PostgreSQL refuses it)
        (line(ts="yesterday"), "bad_ts"),  # not RFC 3339
        (line(ts="2026-11-27T20:00:00"), "bad_ts"),  # no offset
        (line(ts=1764273600), "bad_ts"),  # epoch seconds are not RFC 3339
        (line(email="ana@"), "bad_email"),  # no domain
        (line(email="ana.example.com"), "bad_email"),  # no @
        (line(email=42), "bad_email"),  # not a string
    ],
)
def test_bad_events_raise_with_a_stable_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEventError) as caught:
        parse_event(raw, READ_AT)
    assert caught.value.reason == reason
    assert caught.value.detail


@pytest.mark.parametrize(
    "email",
    [
        "ana@example.com",  # plain
        "ana.maria+promo@mail.example.co.uk",  # dots, plus, subdomains
        "josé@exemplo.pt",  # internationalised local part (email-validator decides)
    ],
)
def test_valid_addresses(email: str) -> None:
    assert parse_event(line(email=email), READ_AT).email == email


def test_an_escaped_backslash_before_u0000_is_plain_text() -> None:
    event = parse_event(b'{"event": "a", "user_id": "u\\\\u0000"}', READ_AT)
    assert event.user_id == "u\\u0000"


def test_a_line_of_bytes_may_start_with_a_utf8_bom() -> None:
    # Editors on some systems write one at the start of a file: its first event still counts.
    assert parse_event(b"\xef\xbb\xbf" + line(), READ_AT).id == "evt_1"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event": "a", "user_id": "\xff"}',  # not UTF-8
        b'{"event": "a", "user_id": "u"} trailing',  # text after the object
        '\ufeff{"event": "a", "user_id": "u"}',  # a BOM inside text already decoded
    ],
)
def test_undecodable_lines_are_invalid_json(raw: str | bytes) -> None:
    with pytest.raises(BadEventError) as caught:
        parse_event(raw, READ_AT)
    assert caught.value.reason == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b'{"event": "a", "user_id": "\xed\xa0\x80"}', "invalid_json"),  # a surrogate as UTF-8
        (b'{"event": "a", "user_id": "\\uDFFF"}', "invalid_json"),  # upper-case escape
        (b'{"event": "a", "user_id": "u", "p": {"k": ["\\u0000"]}}', "bad_field"),  # deep NUL
    ],
)
def test_unstorable_text_anywhere_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(BadEventError) as caught:
        parse_event(raw, READ_AT)
    assert caught.value.reason == reason


def test_a_valid_surrogate_pair_is_text() -> None:
    event = parse_event(b'{"event": "a", "user_id": "\\ud83d\\ude00"}', READ_AT)
    assert event.user_id == "\U0001f600"


@given(
    moment=st.datetimes(
        min_value=datetime(1900, 1, 2), max_value=datetime(8999, 12, 30), timezones=st.just(UTC)
    ),
    style=st.sampled_from(["Z", "z", "+00:00", "+01:00", "-05:30", " ", "t", "ms", "zero-us"]),
)
def test_data_ts_is_always_the_canonical_utc_text(moment: datetime, style: str) -> None:
    text = _styled(moment, style)
    event = parse_event(line(ts=text), READ_AT)
    assert event.data["ts"] == format_ts(event.ts)
    assert event.ts == moment.replace(microsecond=_kept_us(moment, style))


def _kept_us(moment: datetime, style: str) -> int:
    if style == "ms":
        return moment.microsecond // 1000 * 1000
    return 0 if style == "zero-us" else moment.microsecond


def _styled(moment: datetime, style: str) -> str:
    base = moment.replace(tzinfo=None)
    if style == "ms":
        return base.isoformat(timespec="milliseconds") + "Z"
    if style == "zero-us":
        return base.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%S") + ".000000Z"
    if style in {"Z", "z"}:
        return base.isoformat() + style
    if style in {" ", "t"}:
        return base.isoformat(sep=style) + "Z"
    hours, minutes = int(style[1:3]), int(style[4:6])
    offset = timedelta(hours=hours, minutes=minutes) * (1 if style[0] == "+" else -1)
    return (base + offset).isoformat() + style


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("properties.cart.id", "c1"),  # nested objects
        ("properties.cart", {"id": "c1"}),  # an object itself
        ("properties.none", None),  # JSON null is a value
        ("properties.cart.missing", MISSING),  # a missing key
        ("event.length", MISSING),  # into text
        ("properties.items.0", MISSING),  # into a list: paths name keys, not indexes
        ("properties.count.x", MISSING),  # into a number
        ("properties.flag.x", MISSING),  # into a boolean
        ("properties.none.x", MISSING),  # into null
    ],
)
def test_lookup_follows_object_keys_only(path: str, expected: object) -> None:
    properties = {"cart": {"id": "c1"}, "none": None, "items": [1], "count": 3, "flag": True}
    event = parse_event(line(properties=properties), READ_AT)
    assert event.lookup(path) == expected
