"""`explain`'s words for the outcomes a virtual-time replay never makes: retries, failures,
sends in doubt, a full cap without the rules, a delivery event."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

from tests.ledger_helpers import make_send
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.explain import Delivery, History, explain
from trigmail.rules.model import Cap
from trigmail.sends import SendRecord, SendState, send_entry

entry = send_entry


def history(*entries: LogEntry, sends: tuple[SendRecord, ...], **extra: object) -> History:
    return History(
        user_id="u1",
        entries=entries,
        sends={s.key: s for s in sends},
        deliveries=extra.pop("deliveries", {}),  # type: ignore[arg-type]
        **extra,  # type: ignore[arg-type]
    )


def texts(found: History) -> list[str]:
    return [line.sentence for line in explain(found)]


def test_retries_failures_and_doubt(t0: datetime) -> None:
    retried = replace(
        make_send("k1", t0), state=SendState.SENT, attempts=2, message_id="m-1", claimed_at=t0
    )
    failed = replace(
        make_send("k2", t0), state=SendState.FAILED, attempts=3, last_error="400 bad request"
    )
    doubt = replace(make_send("k3", t0), state=SendState.IN_DOUBT, attempts=1)
    found = history(
        entry(retried, Outcome.SENT, Reason.DELIVERED, t0),
        entry(failed, Outcome.FAILED, Reason.FAILED, t0),
        entry(doubt, Outcome.IN_DOUBT, Reason.IN_DOUBT, t0, "read timeout"),
        sends=(retried, failed, doubt),
    )
    assert texts(found) == [
        "cart: sent on attempt 2, message id m-1",
        "cart: failed for good after 3 attempt(s): 400 bad request",
        "cart: in doubt: SendGrid may or may not have it (read timeout)",
    ]
    assert [line.to_json()["state"] for line in explain(found)] == ["sent", "failed", "in_doubt"]


def test_a_full_cap_names_what_it_counted(t0: datetime) -> None:
    def sent(key: str, rule: str, days: int, categories: tuple[str, ...]) -> SendRecord:
        at = t0 + timedelta(days=days)
        send = make_send(key, at, rule=rule, categories=categories)
        return replace(send, state=SendState.SENT, attempts=1, claimed_at=at)

    old = sent("k0", "welcome", -30, ("onboarding",))
    first = sent("k1", "welcome", 0, ("onboarding",))
    second = sent("k2", "cart", 1, ("cart",))
    dropped = make_send("k3", t0 + timedelta(days=2), rule="tips", categories=("onboarding",))
    line = entry(
        dropped, Outcome.DROPPED, Reason.CAP_FULL, dropped.due_at, "cap weekly: 2 already sent"
    )
    # with the rules: the cap's categories and period
    cap = Cap(id="weekly", max=2, per_s=7 * 86_400, categories=("onboarding", "cart"))
    found = history(line, sends=(old, first, second, dropped), caps={"weekly": cap})
    assert texts(found) == [
        "tips: cap weekly full: sent welcome 2026-11-27 20:00, cart 2026-11-28 20:00"
    ]
    # without them: the dropped send's own categories, the last two sent before it
    found = history(line, sends=(old, first, second, dropped))
    assert texts(found) == [
        "tips: cap weekly full: sent welcome 2026-10-28 20:00, welcome 2026-11-27 20:00"
    ]


def test_a_delivery_event_is_shown_once_known(t0: datetime) -> None:
    send = replace(make_send("k1", t0), state=SendState.SENT, attempts=1, claimed_at=t0)
    delivery = Delivery("bounce", t0 + timedelta(minutes=1), "550 no such user")
    found = history(
        entry(send, Outcome.SENT, Reason.DELIVERED, t0), sends=(send,), deliveries={"k1": delivery}
    )
    [line] = explain(found)
    assert line.to_json()["delivery"] == {
        "event": "bounce",
        "at": "2026-11-27T20:01:00Z",
        "detail": "550 no such user",
    }


def test_a_cancel_undone_by_its_events_first_copy(t0: datetime) -> None:
    send = make_send("k1", t0 + timedelta(hours=1))
    cancel = replace(entry(send, Outcome.CANCELLED, Reason.CANCEL_ON, t0), event_id="o1")
    again = replace(entry(send, Outcome.SCHEDULED, Reason.FIRST_COPY, t0), event_id="o1")
    found = history(replace(cancel, detail="by order_completed"), again, sends=(send,))
    assert texts(found) == [
        "cart: cancelled 20:00 by order_completed o1",
        "cart: scheduled again, due 21:00: o1 came after it (its first copy)",
    ]
