"""What the engine decides, and why: plain values, no behaviour beyond serialisation."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from datetime import datetime
from enum import StrEnum
from functools import lru_cache
from typing import Any, Final

from trigmail.events import format_ts
from trigmail.records import record
from trigmail.rules.model import Address, OnDoubt


class Outcome(StrEnum):
    """The fixed ``outcome`` words of ``simulate --format json`` (docs/design.md §4)."""

    SCHEDULED = "scheduled"
    SENT = "sent"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"
    DROPPED = "dropped"
    DEAD_LETTER = "dead_letter"
    # a send's provider request failed for good, or may have gone out (serve only)
    FAILED = "failed"
    IN_DOUBT = "in_doubt"


class Reason(StrEnum):
    """Why: a stable snake_case word that scripts may match on."""

    # scheduled
    IMMEDIATE = "immediate"
    DELAY = "delay"
    SEND_WINDOW = "send_window"
    FIRST_COPY = "first_copy"  # a cancel undone: its event's first copy entered after it
    # skipped
    NO_RULE = "no_rule"
    CONDITION_FALSE = "condition_false"
    COOLDOWN = "cooldown"
    DUPLICATE_EVENT = "duplicate_event"
    DUPLICATE_KEY = "duplicate_key"
    RULE_DISABLED = "rule_disabled"
    HOLDOUT = "holdout"
    # skipped or dropped
    OUTSIDE_WINDOW = "outside_window"
    # cancelled or dropped
    CANCEL_ON = "cancel_on"
    RULE_DELETED = "rule_deleted"
    CAP_FULL = "cap_full"
    MAX_LATE = "max_late"
    PAUSED = "paused"
    # set aside (dead letter)
    TEMPLATE_ERROR = "template_error"
    MISSING_EMAIL = "missing_email"
    INVALID_JSON = "invalid_json"
    NOT_OBJECT = "not_object"
    MISSING_FIELD = "missing_field"
    BAD_FIELD = "bad_field"
    BAD_TS = "bad_ts"
    BAD_EMAIL = "bad_email"
    TOO_MANY_DELIVERIES = "too_many_deliveries"
    LINE_TOO_LONG = "line_too_long"
    INCOMPLETE_LINE = "incomplete_line"
    TOO_LARGE = "too_large"
    TOO_DEEP = "too_deep"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    INTERNAL_ERROR = "internal_error"
    # delivery
    DELIVERED = "delivered"
    FAILED = "failed"
    IN_DOUBT = "in_doubt"


@record
class Payload:
    """An email frozen when it was scheduled: it is sent as it was, whatever changes later."""

    template: str
    data: Mapping[str, Any]
    categories: tuple[str, ...] = ()
    asm_group: int | None = None
    from_: Address | None = None
    reply_to: Address | None = None
    #: The A/B variant chosen for this user, when the rule splits.
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {
            "template": self.template,
            "data": dict(self.data),
            "categories": list(self.categories),
            "asm_group": self.asm_group,
            "from": _address_json(self.from_),
            "reply_to": _address_json(self.reply_to),
        }
        # Kept in the payload, which the ledger stores as JSON: no column, no migration.
        if self.variant is not None:
            obj["variant"] = self.variant
        return obj

    def json_text(self) -> str:
        """:meth:`to_json` as compact JSON, encoded once per payload: ingest checks its size
        and the ledger stores it.

        Raises:
            ValueError: for NaN or infinity, which are not JSON; TypeError for a value JSON
                cannot hold.
        """
        text: str | None = self.__dict__.get("_json_text")
        if text is None:
            # The text of to_json(), from the rule's fixed fields encoded once per send spec
            # and the data encoded here: the encoder writes a nested object as it writes one
            # alone. (Equal to encoding to_json(): tests/test_decisions_json.py.)
            head, tail = _payload_frame(
                (
                    self.template,
                    self.categories,
                    self.asm_group,
                    self.from_,
                    self.reply_to,
                    self.variant,
                )
            )
            data = self.data if type(self.data) is dict else dict(self.data)
            text = self.__dict__["_json_text"] = head + "".join(_encode_data(data, 0)) + tail
        return text

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Payload:
        return cls(
            template=obj["template"],
            data=obj.get("data") or {},
            categories=tuple(obj.get("categories") or ()),
            asm_group=obj.get("asm_group"),
            from_=_address_from(obj.get("from")),
            reply_to=_address_from(obj.get("reply_to")),
            variant=obj.get("variant"),
        )


# Strict: NaN and Infinity are not JSON, and no provider or PostgreSQL would take them.
_STRICT_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def _data_encoder() -> Callable[[Any, int], Sequence[str]]:
    """:data:`_STRICT_JSON`'s C encoder, made once: ``JSONEncoder.encode`` makes one (and a
    closure) per call, which cost as much as encoding a small payload's data.

    Without the check for circular values, whose memo a shared encoder would keep stale
    after a failed call: a payload's data is decoded JSON or a copy made from it (never
    circular), and a value nested too deep still raises RecursionError.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # a Python without the C accelerator: the encoder's own path
        return lambda value, _level: [_STRICT_JSON.encode(value)]
    encoder: Callable[[Any, int], Sequence[str]] = make(
        None,
        _STRICT_JSON.default,
        json.encoder.encode_basestring,
        None,
        ":",
        ",",
        False,
        False,
        False,
    )
    return encoder


_encode_data: Final = _data_encoder()


# A payload's fields but its data: template, categories, asm_group, from, reply_to, variant.
_Fixed = tuple[str, tuple[str, ...], int | None, Address | None, Address | None, str | None]


@lru_cache(maxsize=1024)
def _payload_frame(fixed: _Fixed) -> tuple[str, str]:
    """The JSON text of a payload around its data: ``{"template":…,"data":`` and the rest.

    A rule set has a few of these (one per send spec and variant); every send shares them.
    """
    template, categories, asm_group, from_, reply_to, variant = fixed
    head = _STRICT_JSON.encode({"template": template})[:-1] + ',"data":'
    rest: dict[str, Any] = {
        "categories": list(categories),
        "asm_group": asm_group,
        "from": _address_json(from_),
        "reply_to": _address_json(reply_to),
    }
    if variant is not None:
        rest["variant"] = variant
    return head, "," + _STRICT_JSON.encode(rest)[1:]


def _address_json(address: Address | None) -> dict[str, Any] | None:
    return None if address is None else {"email": address.email, "name": address.name}


def _address_from(obj: Mapping[str, Any] | None) -> Address | None:
    return None if obj is None else Address(email=obj["email"], name=obj.get("name"))


@record
class Schedule:
    """Schedule one email under a new idempotency key."""

    rule_id: str
    step: int
    key: str
    user_id: str
    email: str
    event_id: str
    due_at: datetime
    payload: Payload
    on_doubt: OnDoubt
    reason: Reason
    cancel_match: Mapping[str, Any] = field(default_factory=dict)
    #: A note for the decision log, such as a send window's fallback time zone.
    detail: str = ""


@record
class Cancel:
    """Cancel pending sends of a rule because ``event_id`` (a ``cancel_on`` event) came."""

    rule_id: str
    keys: tuple[str, ...]
    event_id: str
    reason: Reason = Reason.CANCEL_ON
    #: The A/B variant of each cancelled key that has one, for the log and the metrics.
    variants: Mapping[str, str] = field(default_factory=dict)
    #: The step of each cancelled key (a sequence step's own ``cancel_on`` cancels one step).
    steps: Mapping[str, int] = field(default_factory=dict)
    #: The ``cancel_on`` event's name, for the log (which keeps its id).
    event: str = ""


@record
class Skip:
    """Nothing scheduled for this rule (or for no rule at all), and why."""

    rule_id: str | None
    reason: Reason
    detail: str = ""
    step: int | None = None
    key: str | None = None
    until: datetime | None = None


@record
class SetAside:
    """The event cannot make this email (a template field is missing): it goes to dead letters."""

    rule_id: str | None
    reason: Reason
    detail: str
    step: int | None = None


Decision = Schedule | Cancel | Skip | SetAside


@record
class Fire:
    """A due send goes to the provider now."""

    key: str


@record
class Drop:
    """A due send is dropped: its state becomes ``cancelled`` with ``reason``."""

    key: str
    reason: Reason
    detail: str = ""


@record
class Defer:
    """A due send waits: its send window is shut now."""

    key: str
    due_at: datetime
    reason: Reason = Reason.SEND_WINDOW


DueDecision = Fire | Drop | Defer


@record
class LogEntry:
    """One line of the decision log: the shape of ``simulate --format json`` (docs/design.md §4)."""

    at: datetime
    event_id: str | None
    user_id: str | None
    rule: str | None
    step: int | None
    key: str | None
    outcome: Outcome
    reason: Reason
    due_at: datetime | None = None
    detail: str = ""
    #: The A/B variant of the send this line is about (not kept in the ledger's decision log:
    #: the send's payload holds it).
    variant: str | None = None

    def to_json(self) -> dict[str, Any]:
        obj = {
            "at": format_ts(self.at),
            "event_id": self.event_id,
            "user_id": self.user_id,
            "rule": self.rule,
            "step": self.step,
            "key": self.key,
            "outcome": self.outcome.value,
            "reason": self.reason.value,
            "due_at": None if self.due_at is None else format_ts(self.due_at),
            "detail": self.detail,
        }
        if self.variant is not None:
            obj["variant"] = self.variant
        return obj
