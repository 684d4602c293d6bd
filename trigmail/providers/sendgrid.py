"""SendGrid v3 ``/v3/mail/send`` over a pooled, keep-alive ``httpx.Client``.

The request bodies and SendGrid's limits are in :mod:`trigmail.providers.bodies`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import httpx

from trigmail.config import DEFAULT_HOST
from trigmail.errors import (
    DeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.providers.base import Accepted, Email
from trigmail.providers.bodies import (
    MAX_CATEGORIES,
    MAX_CUSTOM_ARGS_BYTES,
    body_json,
    custom_args_bytes,
    fits_one_request,
)
from trigmail.providers.classify import classify
from trigmail.rules.model import Address
from trigmail.secrets import REDACTED, Secret, redact_url

logger = logging.getLogger(__name__)

SEND_PATH = "/v3/mail/send"


def _check_batch(emails: Sequence[Email]) -> None:
    """Refuse a batch :func:`split_batch` would split; reject what no split can fix."""
    if not emails:
        raise ValueError("an empty batch: nothing to send")
    if not fits_one_request(emails):
        raise ValueError(
            f"a batch of {len(emails)} emails breaks SendGrid's request limits or mixes "
            "message attributes: split it with split_batch() first"
        )
    categories = emails[0].payload.categories
    if len(categories) > MAX_CATEGORIES:
        raise PermanentDeliveryError(
            f"{len(categories)} categories; SendGrid allows at most {MAX_CATEGORIES}"
        )
    size_bytes = custom_args_bytes(emails[0])
    if size_bytes >= MAX_CUSTOM_ARGS_BYTES:
        raise PermanentDeliveryError(
            f"custom args of {size_bytes} bytes; SendGrid needs under {MAX_CUSTOM_ARGS_BYTES}"
        )


class _SendTrace:
    """An httpcore ``trace`` hook that notes whether request bytes may have left the host."""

    def __init__(self) -> None:
        self.bytes_sent = False

    def __call__(self, event_name: str, info: Mapping[str, Any]) -> None:
        # Once writing the headers has begun, any failure may follow a request SendGrid read.
        if event_name.endswith(".send_request_headers.started"):
            self.bytes_sent = True


class SendGridProvider:
    """Sends batches to SendGrid; every failure becomes one of the three delivery errors.

    Args:
        api_key: the SendGrid API key; it only ever leaves as the ``Authorization`` header.
        host: the API base URL (EU: ``https://api.eu.sendgrid.com``; tests: a local fake).
        timeout_s: the read, write and pool timeout.
        connect_timeout_s: the TCP/TLS connect timeout.
        default_from: the sender when a payload names none (config ``from:``).
        max_connections: the size of the keep-alive pool.
        clock: epoch seconds now, to turn rate-limit reset times into delays.
        sandbox: ask SendGrid to validate each request without delivering it
            (``mail_settings.sandbox_mode``); ``send-test --sandbox`` uses it.
    """

    name = "sendgrid"

    def __init__(
        self,
        api_key: Secret,
        *,
        default_from: Address,
        host: str = DEFAULT_HOST,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 5.0,
        max_connections: int = 16,
        clock: Callable[[], float] = time.time,
        sandbox: bool = False,
    ) -> None:
        self._api_key = api_key
        self._sandbox = sandbox
        self._default_from = default_from
        self._host = host.rstrip("/")
        self._clock = clock
        self._client = httpx.Client(
            base_url=self._host,
            headers={
                "Authorization": f"Bearer {api_key.reveal()}",
                "Content-Type": "application/json",
            },
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
        )

    def __repr__(self) -> str:
        return f"SendGridProvider(host={redact_url(self._host)!r})"

    def send(self, emails: Sequence[Email]) -> Accepted:
        """Send one batch as one request; see :class:`trigmail.providers.base.Provider`."""
        _check_batch(emails)
        settings = {"mail_settings": {"sandbox_mode": {"enable": True}}} if self._sandbox else None
        content = body_json(emails, self._default_from, settings)
        logger.debug(
            "sendgrid %s: sending %d emails (%d bytes)", emails[0].key, len(emails), len(content)
        )
        trace = _SendTrace()
        try:
            response = self._client.post(SEND_PATH, content=content, extensions={"trace": trace})
        except httpx.TransportError as exc:
            error = self._scrub(classify(exc, now_s=self._clock(), bytes_sent=trace.bytes_sent))
            logger.debug("sendgrid %s: %s", emails[0].key, error)
            raise error from exc
        outcome = classify(response, now_s=self._clock())
        if isinstance(outcome, DeliveryError):
            error = self._scrub(outcome)
            logger.debug("sendgrid %s: %s", emails[0].key, error)
            raise error
        logger.debug("sendgrid %s: accepted as %s", emails[0].key, outcome.message_id)
        return outcome

    def close(self) -> None:
        self._client.close()

    def _scrub(self, error: DeliveryError) -> DeliveryError:
        # SendGrid never echoes the key, but a proxy in between might: never let it through.
        key = self._api_key.reveal()
        if not key or key not in error.detail:
            return error
        detail = error.detail.replace(key, REDACTED)
        if isinstance(error, RetryableDeliveryError):
            return RetryableDeliveryError(detail, retry_after_s=error.retry_after_s)
        if isinstance(error, PermanentDeliveryError):
            return PermanentDeliveryError(detail, error.status_code)
        return type(error)(detail)
