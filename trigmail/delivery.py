"""The functional core of delivery, beside :mod:`trigmail.engine`'s event decisions.

What a failed provider request does to each of its sends (retry later, or settle as ``failed``
or ``in_doubt``, docs/design.md §3), and how due sends group into provider requests: pure
functions of their inputs, with the jitter passed in as a number. The pipeline applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from trigmail.decisions import Reason
from trigmail.errors import (
    DeliveryError,
    InDoubtDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.ledger.base import SendRecord, SendState
from trigmail.providers.base import Email
from trigmail.providers.bodies import split_batch
from trigmail.records import record
from trigmail.rules.model import OnDoubt

HTTP_BAD_REQUEST = 400


@dataclass(frozen=True)
class RetryPolicy:
    """Capped exponential backoff with jitter for sends that never reached the provider."""

    base_s: float = 1.0
    cap_s: float = 300.0
    max_attempts: int = 20

    def backoff_s(self, attempts: int, hint_s: float | None, jitter: float) -> float:
        """The wait before attempt ``attempts + 1``.

        Args:
            attempts: the attempts made so far.
            hint_s: the provider's own hint (rate-limit reset), which wins when longer.
            jitter: a number in [0, 1) drawn by the caller; it spreads retries of a batch
                that failed together over half the backoff.
        """
        backoff_s = min(self.cap_s, self.base_s * 2.0 ** max(attempts - 1, 0))
        return max(backoff_s * (0.5 + jitter / 2), hint_s or 0.0)


@record
class Retry:
    """The send goes back to ``scheduled``, due again at ``due_at``."""

    key: str
    due_at: datetime
    detail: str


@record
class Settle:
    """The send ends in ``state`` (``failed`` or ``in_doubt``) with ``reason``."""

    key: str
    state: SendState
    reason: Reason
    detail: str


FailureDecision = Retry | Settle


def decide_failure(
    send: SendRecord, error: DeliveryError, policy: RetryPolicy, now: datetime, jitter: float
) -> FailureDecision:
    """Decide what a failed request does to one of its sends.

    Only a failure that proves the request never reached the provider, or was refused by it,
    is retried; one after which the provider may have processed it is resent only when the
    rule opted into ``on_doubt: resend``; anything else is final.
    """
    error_text = f"{type(error).__name__}: {error.detail}"
    resend = isinstance(error, InDoubtDeliveryError) and send.on_doubt is OnDoubt.RESEND
    if isinstance(error, RetryableDeliveryError) or resend:
        if send.attempts < policy.max_attempts:
            hint_s = error.retry_after_s if isinstance(error, RetryableDeliveryError) else None
            delay_s = policy.backoff_s(send.attempts, hint_s, jitter)
            return Retry(send.key, now + timedelta(seconds=delay_s), error_text)
        error_text = f"gave up after {send.attempts} attempts: {error_text}"
    if isinstance(error, InDoubtDeliveryError) and not resend:
        return Settle(send.key, SendState.IN_DOUBT, Reason.IN_DOUBT, error_text)
    return Settle(send.key, SendState.FAILED, Reason.FAILED, error_text)


@record
class Request:
    """Sends that travel in one provider request, with their emails (built once)."""

    sends: list[SendRecord]
    emails: list[Email]


def halves(request: Request, error: DeliveryError) -> list[Request]:
    """The two halves to try apart when a request was refused whole (HTTP 400): nothing went
    out, so halving until the bad email is alone sends the others; ``[]`` otherwise."""
    refused_whole = isinstance(error, PermanentDeliveryError) and (
        error.status_code == HTTP_BAD_REQUEST
    )
    if not refused_whole or len(request.sends) < 2:
        return []
    middle = len(request.sends) // 2
    return [
        Request(request.sends[:middle], request.emails[:middle]),
        Request(request.sends[middle:], request.emails[middle:]),
    ]


def email_of(send: SendRecord) -> Email:
    """The email a send stands for."""
    return Email(key=send.key, rule_id=send.rule_id, to=send.email, payload=send.payload)


def requests(sends: Sequence[SendRecord]) -> list[Request]:
    """Group sends into provider requests: same message attributes, within SendGrid's limits."""
    emails = [email_of(send) for send in sends]
    if len(sends) == 1:
        return [Request(list(sends), emails)]
    by_key = {send.key: send for send in sends}
    return [
        Request([by_key[email.key] for email in grouped], grouped)
        for grouped in split_batch(emails)
    ]
