"""What happened to a request to SendGrid, as one of the delivery outcomes (docs/design.md §3).

One pure function, :func:`classify`, decides; the provider only raises what it returns. The line
it draws is whether the request can have been processed: only a failure that proves it was not
(nothing went out, or SendGrid refused it) may be retried without risking a second email.
"""

from __future__ import annotations

import json
from email.utils import parsedate_to_datetime
from typing import Any, overload

import httpx

from trigmail.errors import (
    DeliveryError,
    InDoubtDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.providers.base import Accepted

# Raised only while a connection is being obtained, so no byte of the request can have left.
_BEFORE_SENDING = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

# Refusals: SendGrid did not process the request and says to come back later.
_REFUSED = frozenset({429, 503})


@overload
def classify(
    outcome: httpx.Response, *, now_s: float, bytes_sent: bool = True
) -> Accepted | DeliveryError: ...


@overload
def classify(
    outcome: httpx.TransportError, *, now_s: float, bytes_sent: bool = True
) -> DeliveryError: ...


def classify(
    outcome: httpx.Response | httpx.TransportError,
    *,
    now_s: float,
    bytes_sent: bool = True,
) -> Accepted | DeliveryError:
    """Map a response or a transport failure to ``Accepted`` or the error to raise.

    Args:
        outcome: the response read back, or the transport error raised instead of one.
        now_s: the current time in epoch seconds, to turn ``X-RateLimit-Reset`` into a delay.
        bytes_sent: whether any byte of the request may have left this host. Leave it ``True``
            when unknown: a failure then counts as in doubt, never as safe to retry.

    Returns:
        ``Accepted`` for a 2xx, else a ``RetryableDeliveryError``, ``InDoubtDeliveryError`` or
        ``PermanentDeliveryError`` (returned, not raised, so the function stays pure).
    """
    if isinstance(outcome, httpx.Response):
        return _classify_response(outcome, now_s)
    return _classify_transport_error(outcome, bytes_sent)


def _classify_transport_error(exc: httpx.TransportError, bytes_sent: bool) -> DeliveryError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, _BEFORE_SENDING) or not bytes_sent:
        return RetryableDeliveryError(f"request never sent ({detail})")
    # Read timeout, write timeout or reset once bytes went out: SendGrid may have the request.
    return InDoubtDeliveryError(f"no answer after the request went out ({detail})")


def _classify_response(response: httpx.Response, now_s: float) -> Accepted | DeliveryError:
    status = response.status_code
    if 200 <= status < 300:
        return Accepted(message_id=response.headers.get("X-Message-Id"))
    if status in _REFUSED:
        return RetryableDeliveryError(
            f"HTTP {status}: refused, try later", retry_after_s=retry_after_s(response, now_s)
        )
    if status >= 500:
        return InDoubtDeliveryError(f"HTTP {status}: server error after the request arrived")
    # Any other 4xx (and the 1xx/3xx SendGrid never sends): resending the same request is futile.
    return PermanentDeliveryError(f"HTTP {status}: {_error_messages(response)}", status)


def retry_after_s(response: httpx.Response, now_s: float) -> float | None:
    """Return how long SendGrid asks to wait, from ``X-RateLimit-Reset`` or ``Retry-After``."""
    reset = _number(response.headers.get("X-RateLimit-Reset"))
    if reset is not None:
        return max(0.0, reset - now_s)
    retry_after = response.headers.get("Retry-After")
    if retry_after is None:
        return None
    delay_s = _number(retry_after)
    if delay_s is not None:
        return max(0.0, delay_s)
    try:
        return max(0.0, parsedate_to_datetime(retry_after).timestamp() - now_s)
    except (TypeError, ValueError):
        return None


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _error_messages(response: httpx.Response) -> str:
    """Return SendGrid's ``errors[].message`` texts, each with its ``field`` when given."""
    try:
        body: Any = json.loads(response.content)
    except ValueError:
        return response.reason_phrase or "rejected"
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list) or not errors:
        return response.reason_phrase or "rejected"
    texts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        text = str(error.get("message") or "no message")
        if error.get("field"):
            text += f" (field: {error['field']})"
        texts.append(text)
    return "; ".join(texts) or response.reason_phrase or "rejected"
