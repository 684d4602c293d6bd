"""``send_window.outside`` (wait or skip) and ``fallback_timezone`` for a zone that is not one."""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trigmail.decisions import Defer, Drop, Fire, Reason, Schedule, Skip
from trigmail.engine import decide, decide_due
from trigmail.events import Event, event_from_object, format_ts
from trigmail.ingest import record_for
from trigmail.ledger.base import LedgerTxn
from trigmail.ledger.memory import MemoryLedger
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import RuleSet

# 22:30 UTC, 22:30 in Lisbon, 17:30 in New York.
T0 = datetime(2026, 11, 27, 22, 30, tzinfo=UTC)
NEXT_9AM_UTC = datetime(2026, 11, 28, 9, 0, tzinfo=UTC)
RULES = """
rules:
  - id: price-drop
    on: price_dropped
    send_window: {from: "09:00", to: "20:00", timezone: user.timezone, outside: skip}
    send: {template: d-price}
  - id: digest
    on: digest_ready
    delay: 1h
    send_window: {from: "09:00", to: "20:00", timezone: user.timezone, outside: skip}
    send: {template: d-digest}
  - id: report
    on: report_ready
    send_window:
      from: "09:00"
      to: "20:00"
      timezone: user.timezone
      fallback_timezone: America/New_York
    send: {template: d-report}
  - id: plain
    on: plain_ready
    send_window: {from: "09:00", to: "20:00", timezone: user.timezone}
    send: {template: d-plain}
"""


def make_event(name: str, timezone: Any = None, ts: datetime = T0) -> Event:
    user = {} if timezone is None else {"timezone": timezone}
    obj = {
        "id": f"{name}-1",
        "event": name,
        "user_id": "u1",
        "email": "ana@example.com",
        "ts": format_ts(ts),
        "user": user,
    }
    return event_from_object(obj, ts)


@pytest.fixture
def rules() -> RuleSet:
    return parse_rules(textwrap.dedent(RULES)).rule_set()


@pytest.fixture
def txn() -> Iterator[LedgerTxn]:
    with MemoryLedger(clock=lambda: T0).transaction() as opened:
        yield opened


def test_outside_skip_drops_a_send_that_falls_outside_the_window(
    rules: RuleSet, txn: LedgerTxn
) -> None:
    (decision,) = decide(make_event("price_dropped", "Europe/Lisbon"), rules, txn, T0)
    assert isinstance(decision, Skip)
    assert decision.reason is Reason.OUTSIDE_WINDOW
    assert "22:30" in decision.detail and "09:00-20:00" in decision.detail


def test_outside_skip_sends_inside_the_window(rules: RuleSet, txn: LedgerTxn) -> None:
    # 22:30 UTC is 17:30 in New York: inside
    (decision,) = decide(make_event("price_dropped", "America/New_York"), rules, txn, T0)
    assert isinstance(decision, Schedule)
    assert decision.due_at == T0


def test_outside_wait_is_the_default(rules: RuleSet, txn: LedgerTxn) -> None:
    (decision,) = decide(make_event("plain_ready", "Europe/Lisbon"), rules, txn, T0)
    assert isinstance(decision, Schedule)
    assert (decision.reason, decision.due_at) == (Reason.SEND_WINDOW, NEXT_9AM_UTC)


def test_outside_skip_drops_a_send_due_when_the_window_has_shut(
    rules: RuleSet, txn: LedgerTxn
) -> None:
    # scheduled at 18:30 New York time, due at 19:30 inside the window...
    event = make_event("digest_ready", "America/New_York", ts=T0 + timedelta(hours=1))
    (decision,) = decide(event, rules, txn, event.ts)
    assert isinstance(decision, Schedule)
    send = record_for(decision, "test", event.ts)
    assert decide_due(send, rules, txn, send.due_at) == Fire(send.key)
    # ...but the daemon was down until 20:30 there: dropped, not held to the next morning
    late = decide_due(send, rules, txn, send.due_at + timedelta(hours=1))
    assert isinstance(late, Drop)
    assert late.reason is Reason.OUTSIDE_WINDOW


# (the event's timezone value, the zone the window used, whether the detail names the fallback)
ZONES = [
    # a misspelt zone: the fallback, and the log says so
    ("Europe/Lisboa", "America/New_York", True),
    # not a string at all
    (5, "America/New_York", True),
    # a valid zone: no note
    ("Europe/Lisbon", "Europe/Lisbon", False),
    # no zone in the event: the fallback, silently
    (None, "America/New_York", False),
]


@pytest.mark.parametrize(("value", "used", "noted"), ZONES)
def test_an_invalid_zone_uses_the_fallback_and_says_so(
    rules: RuleSet, txn: LedgerTxn, value: Any, used: str, noted: bool
) -> None:
    (decision,) = decide(make_event("report_ready", value), rules, txn, T0)
    assert isinstance(decision, Schedule)
    # 22:30 UTC: inside the window in New York (17:30), outside in Lisbon
    expected_due = T0 if used == "America/New_York" else NEXT_9AM_UTC
    assert decision.due_at == expected_due
    assert ("fallback_timezone America/New_York" in decision.detail) is noted
    if noted:
        assert repr(value) in decision.detail


def test_the_fallback_defaults_to_utc_and_is_noted(rules: RuleSet, txn: LedgerTxn) -> None:
    (decision,) = decide(make_event("plain_ready", "Mars/Base"), rules, txn, T0)
    assert isinstance(decision, Schedule)
    assert decision.due_at == NEXT_9AM_UTC  # 22:30 UTC is shut
    assert "'Mars/Base' is not an IANA time zone" in decision.detail
    assert "fallback_timezone UTC" in decision.detail


def test_a_deferred_send_keeps_using_the_fallback(rules: RuleSet, txn: LedgerTxn) -> None:
    (decision,) = decide(make_event("plain_ready", "Mars/Base"), rules, txn, T0)
    assert isinstance(decision, Schedule)
    send = record_for(decision, "test", T0)
    assert decide_due(send, rules, txn, T0) == Defer(send.key, NEXT_9AM_UTC)


@pytest.mark.parametrize(
    ("window", "message"),
    [
        # a fallback must be a zone, and a path is none
        ('{from: "09:00", to: "20:00", fallback_timezone: user.tz}', "unknown timezone 'user.tz'"),
        # outside takes wait or skip
        ('{from: "09:00", to: "20:00", outside: drop}', "'drop' is not one of: wait, skip"),
    ],
)
def test_validate_refuses_a_bad_fallback_or_outside(window: str, message: str) -> None:
    text = f"rules:\n  - id: r\n    on: e\n    send_window: {window}\n    send: {{template: d}}\n"
    problems = [str(p) for p in parse_rules(text).problems]
    assert any(message in p for p in problems), problems
