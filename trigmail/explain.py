"""``explain``: one user's timeline from the ledger, each decision's reason in words.

Pure: :func:`explain` turns what :mod:`trigmail.explain_ledger` read (the user's decision log and
sends) into lines. The words are for people; the JSON of a line is the shape of
``simulate --format json`` plus the send's ledger ``state``, ``attempts``, ``message_id`` and
``delivery`` (docs/design.md §6).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import field
from datetime import datetime, timedelta
from typing import Any

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.events import format_ts, parse_ts
from trigmail.records import record
from trigmail.rules.model import Cap
from trigmail.sends import DELIVERED_STATES, SendRecord

# The details the engine writes that explain reads back (trigmail.engine, trigmail.ingest):
# a cooldown ends with "until <time>", a full cap is "cap <id>: <max> already sent", a cancel
# is "by <event name>".
_UNTIL = re.compile(r"until (\S+)$")
_CAP = re.compile(r"^cap (\S+): (\d+) already sent")
_BY = re.compile(r"^by (\S+)$")


@record
class Delivery:
    """The last delivery event of a send (SendGrid's Event Webhook): ``delivered``,
    ``bounce``, ``dropped``… with its time (:func:`trigmail.explain_ledger.read_deliveries`)."""

    event: str
    at: datetime
    detail: str = ""


@record
class History:
    """What the ledger holds about one user.

    Attributes:
        entries: the decision log's lines, oldest first.
        sends: every send of the user, by key (also those whose log lines are outside the
            window or pruned).
        deliveries: the last delivery event of a send, by key.
        truncated: older lines than ``entries`` exist in the window.
        caps: the caps of the rules in force, by id, when they could be loaded: a full cap
            then names exactly the sends it counted.
    """

    user_id: str
    entries: tuple[LogEntry, ...]
    sends: Mapping[str, SendRecord]
    deliveries: Mapping[str, Delivery]
    truncated: bool = False
    caps: Mapping[str, Cap] = field(default_factory=dict)


@record
class Line:
    """One decision, what it means in words, and the send it is about (if any).

    ``text`` is the reason without the rule's name (a table has a column for it);
    :attr:`sentence` has both: ``cart-recovery: cancelled 10:35 by order_completed e3``.
    """

    entry: LogEntry
    text: str
    send: SendRecord | None = None
    delivery: Delivery | None = None

    @property
    def sentence(self) -> str:
        if self.entry.rule is None:
            return self.text
        return f"{what(self.entry.rule, self.entry.step)}: {self.text}"

    def to_json(self) -> dict[str, Any]:
        obj = self.entry.to_json()
        obj["state"] = None if self.send is None else self.send.state.value
        obj["attempts"] = None if self.send is None else self.send.attempts
        obj["message_id"] = None if self.send is None else self.send.message_id
        obj["delivery"] = None if self.delivery is None else delivery_json(self.delivery)
        obj["text"] = self.sentence
        return obj


def delivery_json(delivery: Delivery) -> dict[str, Any]:
    return {"event": delivery.event, "at": format_ts(delivery.at), "detail": delivery.detail}


def explain(history: History) -> list[Line]:
    """Return the user's decisions, oldest first, each with its reason in words."""
    lines = []
    for entry in history.entries:
        send = None if entry.key is None else history.sends.get(entry.key)
        delivery = None if entry.key is None else history.deliveries.get(entry.key)
        lines.append(Line(entry, describe(entry, history), send, delivery))
    return lines


def short_time(moment: datetime, beside: datetime) -> str:
    """``10:35`` on the day of ``beside``, else ``2026-03-02 10:35`` (UTC both)."""
    if moment.date() == beside.date():
        return moment.strftime("%H:%M")
    return moment.strftime("%Y-%m-%d %H:%M")


def what(rule: str | None, step: int | None) -> str:
    """``onboarding step 2``; a one-step rule is just its name."""
    if rule is None:
        return "(no rule)"
    return f"{rule} step {step}" if step else rule


def describe(entry: LogEntry, history: History) -> str:
    """One decision in words, e.g. ``cancelled 10:35 by order_completed e1``."""
    if entry.rule is None:
        return _without_rule(entry)
    send = None if entry.key is None else history.sends.get(entry.key)
    words = _WORDS.get(entry.outcome)
    return words(entry, history, send) if words else _generic(entry)


def _without_rule(entry: LogEntry) -> str:
    if entry.reason is Reason.NO_RULE:
        return f"event {entry.event_id}: no rule starts on it"
    if entry.reason is Reason.DUPLICATE_EVENT:
        return f"event {entry.event_id}: a repeat of an event already decided, ignored"
    return f"event {entry.event_id}: {_generic(entry)}"


def _generic(entry: LogEntry) -> str:
    detail = f" ({entry.detail})" if entry.detail else ""
    return f"{entry.outcome.value}, {entry.reason.value.replace('_', ' ')}{detail}"


def _scheduled(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    by = f"by {entry.event_id}"
    if entry.due_at is None or entry.reason is Reason.IMMEDIATE:
        return f"scheduled {by}, to go at once"
    due = short_time(entry.due_at, entry.at)
    if entry.reason is Reason.SEND_WINDOW:
        return f"scheduled {by}, due {due} (when its send window opens)"
    if entry.reason is Reason.FIRST_COPY:
        return f"scheduled again, due {due}: {entry.event_id} came after it (its first copy)"
    return f"scheduled {by}, due {due}"


def _sent(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    if send is None:
        return "sent"
    tries = "" if send.attempts <= 1 else f" on attempt {send.attempts}"
    message = f", message id {send.message_id}" if send.message_id else ""
    return f"sent{tries}{message}"


def _cancelled(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    when = short_time(entry.at, entry.at)
    if entry.reason is Reason.CANCEL_ON:
        match = _BY.match(entry.detail)
        name = f"{match.group(1)} " if match else "event "
        return f"cancelled {when} by {name}{entry.event_id}"
    return f"cancelled {when}, {_generic(entry)}"


def _skipped(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    reason = entry.reason
    if reason is Reason.COOLDOWN:
        return f"skipped, {_cooldown(entry)}"
    if reason is Reason.CONDITION_FALSE:
        return f"skipped, its condition did not hold ({entry.detail})"
    if reason is Reason.DUPLICATE_KEY:
        return f"skipped, already scheduled or sent once under key {entry.key}"
    if reason is Reason.RULE_DISABLED:
        return "skipped, the rule is disabled"
    if reason is Reason.MAX_LATE:
        return f"skipped, too late ({entry.detail})"
    return _generic(entry)


def _dropped(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    reason = entry.reason
    if reason is Reason.CAP_FULL:
        return _cap_full(entry, history, send)
    if reason is Reason.COOLDOWN:
        return f"dropped when due, {_cooldown(entry)}"
    if reason is Reason.MAX_LATE:
        return f"dropped, too late ({entry.detail})"
    return f"dropped, {_generic(entry)}"


def _dead_letter(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    reason = entry.reason.value.replace("_", " ")
    return f"set aside as a dead letter, {reason}: {entry.detail}"


def _failed(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    attempts = "" if send is None else f" after {send.attempts} attempt(s)"
    error = entry.detail or (send.last_error if send else "") or ""
    return f"failed for good{attempts}" + (f": {error}" if error else "")


def _in_doubt(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    detail = f" ({entry.detail})" if entry.detail else ""
    return f"in doubt: SendGrid may or may not have it{detail}"


def _cooldown(entry: LogEntry) -> str:
    match = _UNTIL.search(entry.detail)
    if match is None:
        return f"cooldown ({entry.detail})" if entry.detail else "cooldown"
    try:
        until = parse_ts(match.group(1))
    except ValueError:
        return f"cooldown ({entry.detail})"
    return f"cooldown until {short_time(until, entry.at)}"


def _cap_full(entry: LogEntry, history: History, send: SendRecord | None) -> str:
    """``cap marketing-weekly full: sent welcome 09:00, onboarding step 1 …``.

    The sends counted are the user's last ``max`` delivered in the cap's period before the
    drop, in the cap's categories. Without the rules (they may not load, or the cap is gone),
    the categories are the dropped send's own: the cap may have counted more.
    """
    match = _CAP.match(entry.detail)
    if match is None:
        return f"dropped, cap full ({entry.detail})"
    name, most = match.group(1), int(match.group(2))
    if send is None:
        return f"cap {name} full: {most} already sent"
    cap = history.caps.get(name)
    counted = _counted(send, history.sends.values(), entry.at, cap)[-most:]
    if not counted:
        return f"cap {name} full: {most} already sent"
    listed = ", ".join(
        f"{what(s.rule_id, s.step)} {short_time(s.claimed_at, entry.at)}"
        for s in counted
        if s.claimed_at is not None
    )
    return f"cap {name} full: sent {listed}"


def _counted(
    dropped: SendRecord, sends: Iterable[SendRecord], at: datetime, cap: Cap | None
) -> list[SendRecord]:
    categories = set(dropped.payload.categories if cap is None else cap.categories)
    start = None if cap is None else at - timedelta(seconds=cap.per_s)
    found = [
        s
        for s in sends
        if s.key != dropped.key
        and s.state in DELIVERED_STATES
        and s.claimed_at is not None
        and s.claimed_at <= at
        and (start is None or s.claimed_at >= start)
        and categories.intersection(s.payload.categories)
    ]
    found.sort(key=lambda s: (s.claimed_at, s.key))
    return found


_WORDS = {
    Outcome.SCHEDULED: _scheduled,
    Outcome.SENT: _sent,
    Outcome.CANCELLED: _cancelled,
    Outcome.SKIPPED: _skipped,
    Outcome.DROPPED: _dropped,
    Outcome.DEAD_LETTER: _dead_letter,
    Outcome.FAILED: _failed,
    Outcome.IN_DOUBT: _in_doubt,
}
