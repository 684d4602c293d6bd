"""classify(): every row of the docs/design.md §3 table, one case each."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from trigmail.errors import (
    DeliveryError,
    InDoubtDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.providers.base import Accepted
from trigmail.providers.classify import classify

NOW_S = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def response(status: int, headers: dict[str, str] | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.Response(status, headers=headers, **kwargs)


@pytest.mark.parametrize(
    ("error", "bytes_sent", "expected"),
    [
        # connection refused, or a name that does not resolve: httpx says ConnectError
        (httpx.ConnectError("[Errno 111] Connection refused"), False, RetryableDeliveryError),
        # a ConnectError is retryable even when the caller could not tell what was sent
        (httpx.ConnectError("Name or service not known"), True, RetryableDeliveryError),
        # the TCP or TLS handshake timed out
        (httpx.ConnectTimeout("timed out"), True, RetryableDeliveryError),
        # no pooled connection came free in time
        (httpx.PoolTimeout("timed out"), True, RetryableDeliveryError),
        # a write timeout before any byte went out
        (httpx.WriteTimeout("timed out"), False, RetryableDeliveryError),
        # a write timeout once bytes went out
        (httpx.WriteTimeout("timed out"), True, InDoubtDeliveryError),
        # the request went out and no answer came in time
        (httpx.ReadTimeout("timed out"), True, InDoubtDeliveryError),
        # the connection closed after the request was written
        (httpx.RemoteProtocolError("Server disconnected"), True, InDoubtDeliveryError),
        # a reset (RST) after the request was written
        (httpx.ReadError("[Errno 104] Connection reset by peer"), True, InDoubtDeliveryError),
    ],
)
def test_transport_errors(
    error: httpx.TransportError, bytes_sent: bool, expected: type[DeliveryError]
) -> None:
    outcome = classify(error, now_s=NOW_S, bytes_sent=bytes_sent)
    assert type(outcome) is expected
    assert type(error).__name__ in outcome.detail


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, Accepted),  # OK
        (202, Accepted),  # SendGrid's usual "accepted"
        (429, RetryableDeliveryError),  # rate limited
        (503, RetryableDeliveryError),  # unavailable: refused before processing
        (500, InDoubtDeliveryError),  # may have been processed
        (502, InDoubtDeliveryError),  # a gateway in between may have forwarded it
        (504, InDoubtDeliveryError),  # a gateway gave up waiting: may have been processed
        (400, PermanentDeliveryError),  # bad payload
        (401, PermanentDeliveryError),  # wrong API key
        (403, PermanentDeliveryError),  # the key lacks the mail.send scope
        (413, PermanentDeliveryError),  # payload too large
        (302, PermanentDeliveryError),  # a redirect is never followed: the host is wrong
    ],
)
def test_statuses(status: int, expected: type[Accepted | DeliveryError]) -> None:
    assert type(classify(response(status), now_s=NOW_S)) is expected


def test_accepted_carries_the_message_id() -> None:
    outcome = classify(response(202, {"X-Message-Id": "abc.123"}), now_s=NOW_S)
    assert outcome == Accepted(message_id="abc.123")


@pytest.mark.parametrize(
    ("status", "headers", "retry_after_s"),
    [
        # the reset time, in epoch seconds, counted from now
        (429, {"X-RateLimit-Reset": str(int(NOW_S) + 42)}, 42.0),
        # a reset time already past means "now"
        (429, {"X-RateLimit-Reset": str(int(NOW_S) - 5)}, 0.0),
        # the reset time wins over Retry-After
        (429, {"X-RateLimit-Reset": str(int(NOW_S) + 3), "Retry-After": "60"}, 3.0),
        # Retry-After in seconds
        (429, {"Retry-After": "12"}, 12.0),
        # Retry-After as an HTTP date
        (503, {"Retry-After": "Fri, 15 Jan 2027 08:00:30 GMT"}, 30.0),
        # no hint at all
        (503, {}, None),
        # a hint that is not a number or a date is ignored
        (429, {"Retry-After": "soon"}, None),
    ],
)
def test_retry_after_from_the_headers(
    status: int, headers: dict[str, str], retry_after_s: float | None
) -> None:
    outcome = classify(response(status, headers), now_s=NOW_S)
    assert isinstance(outcome, RetryableDeliveryError)
    assert outcome.retry_after_s == retry_after_s


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # each message kept, with its field
        (
            {
                "errors": [
                    {"message": "Does not contain a valid address.", "field": "to.0.email"},
                    {"message": "The from email is not verified.", "field": None},
                ]
            },
            "HTTP 400: Does not contain a valid address. (field: to.0.email); "
            "The from email is not verified.",
        ),
        # a body that is not SendGrid's shape: the reason phrase
        ({"detail": "nope"}, "HTTP 400: Bad Request"),
    ],
)
def test_permanent_keeps_sendgrid_messages(body: dict[str, Any], expected: str) -> None:
    outcome = classify(response(400, json=body), now_s=NOW_S)
    assert isinstance(outcome, PermanentDeliveryError)
    assert outcome.detail == expected


def test_permanent_with_a_body_that_is_not_json() -> None:
    outcome = classify(response(401, text="<html>denied</html>"), now_s=NOW_S)
    assert isinstance(outcome, PermanentDeliveryError)
    assert outcome.detail == "HTTP 401: Unauthorized"
