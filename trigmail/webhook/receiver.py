"""One webhook request in, one status out: verified, bounded, and durable before any 2xx.

Answers carry no body: a caller without the key learns nothing but the status. Bad input is a
4xx, never a 5xx (a 5xx makes SendGrid retry it for 24 h); only a ledger failure is a 5xx, so
that SendGrid retries events trigmail could not store.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

from trigmail.errors import LedgerError
from trigmail.ledger.base import Ledger
from trigmail.webhook.events import MalformedBodyError, parse_body
from trigmail.webhook.observe import ACCEPTED, LEDGER_ERROR, WebhookMetrics
from trigmail.webhook.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, Rejection, Verifier

logger = logging.getLogger(__name__)

_STATUS = {
    Rejection.UNSIGNED: HTTPStatus.UNAUTHORIZED,
    Rejection.BAD_SIGNATURE: HTTPStatus.FORBIDDEN,
    Rejection.STALE: HTTPStatus.FORBIDDEN,
    Rejection.TOO_LARGE: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    Rejection.MALFORMED: HTTPStatus.BAD_REQUEST,
    Rejection.NOT_FOUND: HTTPStatus.NOT_FOUND,
    Rejection.METHOD: HTTPStatus.METHOD_NOT_ALLOWED,
}
# A timestamp header longer than this is not Unix seconds.
_MAX_TIMESTAMP_CHARS = 20


@dataclass(frozen=True)
class Request:
    """A webhook request as the listener read it.

    Attributes:
        headers: names in lower case.
        body: the raw body, or ``None`` when it was over the size cap (left unread).
    """

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes | None


def utc_now() -> datetime:
    return datetime.now(UTC)


class Receiver:
    """Answers webhook requests by storing their events in ``ledger``.

    Args:
        ledger: where events are stored and in-doubt sends settled.
        verifier: checks signatures with SendGrid's key.
        metrics: the webhook's counters.
        path: the one path served.
        max_age_s: the replay window: a signed timestamp further than this from now is refused.
        clock: the current time.
    """

    def __init__(
        self,
        ledger: Ledger,
        verifier: Verifier,
        metrics: WebhookMetrics,
        *,
        path: str,
        max_age_s: float,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._ledger = ledger
        self._verifier = verifier
        self._metrics = metrics
        self._path = path
        self._max_age_s = max_age_s
        self._clock = clock

    @property
    def path(self) -> str:
        """The one path served."""
        return self._path

    def answer(self, request: Request) -> HTTPStatus:
        """Return the status to answer ``request`` with, after storing its events if valid."""
        now = self._clock()
        problem = self._check(request, now)
        if problem is not None:
            self._metrics.record_request(problem)
            return _STATUS[problem]
        assert request.body is not None  # _check refuses a request without one
        try:
            parsed = parse_body(request.body, now)
        except MalformedBodyError as exc:
            logger.info("webhook: refused a signed request: %s", exc)
            self._metrics.record_request(Rejection.MALFORMED)
            return HTTPStatus.BAD_REQUEST
        try:
            with self._ledger.transaction() as txn:
                stored = txn.add_delivery_events(parsed.events)
                settled = txn.settle_by_evidence(now, {e.key for e in stored})
        except LedgerError as exc:
            logger.warning("webhook: events not stored, SendGrid will retry: %s", exc)
            self._metrics.record_request(LEDGER_ERROR)
            return HTTPStatus.SERVICE_UNAVAILABLE
        self._metrics.record_request(ACCEPTED)
        self._metrics.record_events(stored, len(parsed.events) - len(stored))
        self._metrics.record_skipped(parsed.foreign, parsed.invalid)
        self._metrics.record_settled(settled)
        for send in settled:
            logger.info(
                "send %s: in doubt, settled as sent by evidence (%s)", send.key, send.reason
            )
        return HTTPStatus.OK

    def _check(self, request: Request, now: datetime) -> Rejection | None:
        if request.path != self._path:
            return Rejection.NOT_FOUND
        if request.method != "POST":
            return Rejection.METHOD
        if request.body is None:
            return Rejection.TOO_LARGE
        return self._check_signature(request, request.body, now)

    def _check_signature(self, request: Request, body: bytes, now: datetime) -> Rejection | None:
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            return Rejection.UNSIGNED
        if not _fresh(timestamp, now, self._max_age_s):
            return Rejection.STALE
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return Rejection.MALFORMED
        if not self._verifier.verify(text, signature, timestamp):
            return Rejection.BAD_SIGNATURE
        return None


def _fresh(timestamp: str, now: datetime, max_age_s: float) -> bool:
    """Whether the signed ``timestamp`` (Unix seconds) is within ``max_age_s`` of ``now``."""
    if len(timestamp) > _MAX_TIMESTAMP_CHARS or not timestamp.isascii():
        return False
    try:
        at_s = int(timestamp)
    except ValueError:
        return False
    return abs(now.timestamp() - at_s) <= max_age_s
