"""Delivery evidence: what SendGrid's Event Webhook reported about a send (docs/webhook.md).

A record of one webhook event, and the moves evidence makes, as pure functions every ledger
applies: an ``in_doubt`` send with any event for its key becomes ``sent`` (the provider had
it); ``on_doubt: verify`` sends with none after ``delivery.verify_after`` are sent again, once.
Evidence never moves a send anywhere but toward ``sent``, and only the send its key names.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Final

from trigmail.records import record
from trigmail.sends import SendRecord, SendState, evolve


class DeliveryEventType(StrEnum):
    """The Event Webhook's event types (``event``); any other is stored as :attr:`OTHER`."""

    PROCESSED = "processed"
    DEFERRED = "deferred"
    DELIVERED = "delivered"
    BOUNCE = "bounce"
    DROPPED = "dropped"
    SPAMREPORT = "spamreport"
    UNSUBSCRIBE = "unsubscribe"
    GROUP_UNSUBSCRIBE = "group_unsubscribe"
    GROUP_RESUBSCRIBE = "group_resubscribe"
    OPEN = "open"
    CLICK = "click"
    OTHER = "other"


class EvidenceState(StrEnum):
    """What is known of an ``in_doubt`` send's fate (docs/webhook.md, "What each state means")."""

    AWAITING_EVIDENCE = "awaiting_evidence"  # not verify: evidence settles it, nothing resends it
    AWAITING_VERIFY = "awaiting_verify"  # verify: evidence settles it, or it is sent again once
    RESENT_NO_EVIDENCE = "resent_no_evidence"  # verify, sent again once, in doubt again
    EVIDENCE_RECEIVED = "evidence_received"  # an event came: the next sweep settles it


# Engagement, counted per rule; every other type is a delivery outcome of the send.
ENGAGEMENT: Final = frozenset({DeliveryEventType.OPEN, DeliveryEventType.CLICK})

# What an evidence-settled send says it was settled by, then the event type.
EVIDENCE_REASON: Final = "evidence"
# What a send ``on_doubt: verify`` sent again says, as its ``last_error`` note.
VERIFY_RESENT: Final = "no delivery evidence within delivery.verify_after: sent again once"


@record
class DeliveryEvent:
    """One webhook event for one of trigmail's sends.

    Attributes:
        sg_event_id: SendGrid's unique id of the event (events come at least once).
        key: the send's idempotency key, from the event's ``custom_args``.
        rule_id: the rule ``custom_args`` names ('' when absent).
        event: the event type.
        at: when SendGrid says it happened.
        message_id: SendGrid's ``sg_message_id``, when the event has one.
        detail: what else tells the outcome (a bounce's type and reason, a click's URL), short.
        received_at: when trigmail received it.
    """

    sg_event_id: str
    key: str
    rule_id: str
    event: DeliveryEventType
    at: datetime
    message_id: str | None
    detail: str
    received_at: datetime


def settled_by_evidence(send: SendRecord, event: DeliveryEvent, at: datetime) -> SendRecord:
    """Return an ``in_doubt`` send made ``sent`` by ``event``: its message id, and the evidence
    as its reason."""
    return evolve(
        send,
        state=SendState.SENT,
        message_id=send.message_id or event.message_id,
        reason=f"{EVIDENCE_REASON}:{event.event.value}",
        updated_at=at,
    )


def first_evidence(events: list[DeliveryEvent]) -> DeliveryEvent:
    """Return the event that settles a send: the earliest, by SendGrid's time then id."""
    return min(events, key=lambda e: (e.at, e.sg_event_id))


def resent_for_verify(send: SendRecord, at: datetime) -> SendRecord:
    """Return an ``in_doubt`` send under ``on_doubt: verify`` scheduled again at ``at``."""
    note = VERIFY_RESENT if send.last_error is None else f"{VERIFY_RESENT} (was: {send.last_error})"
    return evolve(
        send,
        state=SendState.SCHEDULED,
        due_at=at,
        claimed_at=None,
        last_error=note,
        updated_at=at,
    )
