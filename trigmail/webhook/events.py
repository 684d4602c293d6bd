"""A webhook body into :class:`~trigmail.evidence.DeliveryEvent` values: pure, no I/O.

SendGrid posts a JSON array of event objects. Each of trigmail's events carries the send's
key at its top level (the request's ``custom_args``, ``trigmail_key``); events of other mail
sent from the same SendGrid account have none and are skipped. The body is signed, so an item
that is not an event is SendGrid's to explain, not an attack: it is skipped and counted, and the
rest of the batch is kept (refusing the batch would refuse the good events with it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from trigmail.evidence import DeliveryEvent, DeliveryEventType

# The names of trigmail's custom args, as trigmail.providers.bodies.custom_args writes them.
KEY_ARG: Final = "trigmail_key"
RULE_ARG: Final = "trigmail_rule"
# Bounds on what is stored from one event: a key or id longer than this is not trigmail's.
MAX_ID_CHARS: Final = 512
MAX_DETAIL_CHARS: Final = 300
_TYPES: Final = {t.value: t for t in DeliveryEventType if t is not DeliveryEventType.OTHER}
# What tells an outcome apart, in the order shown; only the types with such fields are read.
_DETAIL_FIELDS: Final = ("type", "reason", "bounce_classification", "status", "url", "response")
_PLAIN_TYPES: Final = frozenset(
    {DeliveryEventType.PROCESSED, DeliveryEventType.DELIVERED, DeliveryEventType.OPEN}
)


class MalformedBodyError(ValueError):
    """Raised for a body that is not a JSON array."""


@dataclass(frozen=True)
class Parsed:
    """A webhook body's events for trigmail, and how many items were skipped and why."""

    events: Sequence[DeliveryEvent]
    foreign: int  # events of mail trigmail did not send (no key)
    invalid: int  # items that are not events (no id, no type, bad timestamp)


def parse_body(body: bytes, received_at: datetime) -> Parsed:
    """Return the events of a webhook body.

    Raises:
        MalformedBodyError: the body is not UTF-8 JSON holding an array.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        raise MalformedBodyError("not JSON") from None
    if not isinstance(document, list):
        raise MalformedBodyError("not a JSON array")
    events: list[DeliveryEvent] = []
    foreign = invalid = 0
    for item in document:
        if not isinstance(item, dict) or not _text(item.get(KEY_ARG)):
            foreign += isinstance(item, dict)
            invalid += not isinstance(item, dict)
            continue
        event = parse_event(item, received_at)
        if event is None:
            invalid += 1
        else:
            events.append(event)
    return Parsed(events, foreign, invalid)


def parse_event(item: dict[str, Any], received_at: datetime) -> DeliveryEvent | None:
    """Return one event object as a :class:`DeliveryEvent`, or ``None`` when it is not one."""
    key = _text(item.get(KEY_ARG))
    sg_event_id = _text(item.get("sg_event_id"))
    kind = item.get("event")
    at = _time(item.get("timestamp"))
    if key is None or sg_event_id is None or not isinstance(kind, str) or at is None:
        return None
    event_type = _TYPES.get(kind, DeliveryEventType.OTHER)
    return DeliveryEvent(
        sg_event_id=sg_event_id,
        key=key,
        rule_id=_text(item.get(RULE_ARG)) or "",
        event=event_type,
        at=at,
        message_id=_text(item.get("sg_message_id")),
        detail="" if event_type in _PLAIN_TYPES else _detail(item),
        received_at=received_at,
    )


def _text(value: object) -> str | None:
    if isinstance(value, str) and 0 < len(value) <= MAX_ID_CHARS:
        return value
    return None


def _time(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        return datetime.fromtimestamp(value, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def _detail(item: dict[str, Any]) -> str:
    parts = [
        f"{name}={value}"
        for name in _DETAIL_FIELDS
        if isinstance(value := item.get(name), str | int) and not isinstance(value, bool)
    ]
    return "; ".join(parts)[:MAX_DETAIL_CHARS]
