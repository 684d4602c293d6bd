"""The functional core: every decision and reason of ``decide`` and ``decide_due``.

Rules come from the real loader (``parse_rules``); the ledger view is a real MemoryLedger
transaction. Time is passed in as fixed datetimes.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from trigmail.decisions import (
    Cancel,
    Decision,
    Defer,
    Drop,
    Fire,
    Reason,
    Schedule,
    SetAside,
    Skip,
)
from trigmail.engine import decide, decide_due
from trigmail.events import Event, event_from_object, format_ts
from trigmail.ingest import record_for
from trigmail.ledger.base import LedgerTxn, SendRecord
from trigmail.ledger.memory import MemoryLedger
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import OnDoubt, RuleSet

# A Friday, 20:00 UTC: 20:00 in Lisbon (WET) too.
T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)

RULES = """
rules:
  - id: cart
    on: cart_abandoned
    when: {properties.cart_value: {gte: 20}}
    delay: 1h
    cancel_on: [order_completed, {event: cart_emptied, match: properties.cart_id}]
    cooldown: 24h
    max_late: 6h
    send:
      template: d-cart
      data: {url: "{{ properties.cart_url }}"}
      category: marketing
  - id: welcome
    on: user_signup
    dedupe: "{rule}:{user_id}"
    on_doubt: resend
    send: {template: d-welcome, category: onboarding}
  - id: onboarding
    on: trial_started
    cancel_on: [account_deleted]
    steps:
      - {delay: 1d, send: {template: d-tips}}
      - {delay: 3d, when: {user.plan: {eq: free}}, send: {template: d-upgrade}}
  - id: report
    on: report_ready
    send_window: {from: "09:00", to: "20:00", timezone: user.timezone}
    send: {template: d-report}
  - id: paused
    on: newsletter
    enabled: false
    send: {template: d-news}
  - id: coupon
    on: coupon_issued
    dedupe: "{rule}:{properties.coupon}"
    send: {template: d-coupon, category: marketing}
caps:
  - {id: weekly, max: 1, per: 7d, categories: [marketing]}
"""


def rules_from(text: str) -> RuleSet:
    return parse_rules(textwrap.dedent(text)).rule_set()


def make_event(
    name: str,
    event_id: str = "e1",
    *,
    user: str = "u1",
    ts: datetime = T0,
    email: str | None = "ana@example.com",
    properties: dict[str, Any] | None = None,
    profile: dict[str, Any] | None = None,
) -> Event:
    obj: dict[str, Any] = {"id": event_id, "event": name, "user_id": user, "ts": format_ts(ts)}
    if email is not None:
        obj["email"] = email
    obj["properties"] = properties if properties is not None else {}
    obj["user"] = profile if profile is not None else {}
    return event_from_object(obj, ts)


def cart_event(event_id: str = "e1", **kw: Any) -> Event:
    props = {"cart_value": 50, "cart_url": "https://shop.example/c/1", "cart_id": "c1"}
    props.update(kw.pop("properties", {}))
    return make_event("cart_abandoned", event_id, properties=props, **kw)


def record_of(decision: Schedule) -> SendRecord:
    return record_for(decision, "test", decision.due_at)


def commit(txn: LedgerTxn, event: Event, decisions: list[Decision]) -> list[SendRecord]:
    """Apply ``decisions`` as the pipeline would: insert schedules, mark the event seen."""
    inserted = []
    for decision in decisions:
        if isinstance(decision, Schedule):
            record = record_of(decision)
            assert txn.insert_send(record)
            inserted.append(record)
        elif isinstance(decision, Cancel):
            txn.cancel_sends(decision.keys, decision.reason.value, event.ts)
    txn.mark_seen(event.id, event.ts)
    return inserted


def decide_and_commit(txn: LedgerTxn, rules: RuleSet, event: Event) -> list[SendRecord]:
    return commit(txn, event, decide(event, rules, txn, event.ts))


@pytest.fixture
def rules() -> RuleSet:
    return rules_from(RULES)


@pytest.fixture
def txn() -> Iterator[LedgerTxn]:
    with MemoryLedger(clock=lambda: T0).transaction() as opened:
        yield opened


def only(decisions: list[Decision]) -> Decision:
    assert len(decisions) == 1, decisions
    return decisions[0]


# -- decide: scheduled ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "reason", "due_at"),
    [
        # no delay, no window: due at the event's time
        (make_event("user_signup"), Reason.IMMEDIATE, T0),
        # delay 1h counts from the event's ts
        (cart_event(), Reason.DELAY, T0 + HOUR),
        # 20:00 in Lisbon is past the window (to is exclusive): next day 09:00 local
        (
            make_event("report_ready", profile={"timezone": "Europe/Lisbon"}),
            Reason.SEND_WINDOW,
            datetime(2026, 11, 28, 9, 0, tzinfo=UTC),
        ),
        # 20:00 UTC is 15:00 in New York: inside the window, so not moved
        (
            make_event("report_ready", profile={"timezone": "America/New_York"}),
            Reason.IMMEDIATE,
            T0,
        ),
    ],
)
def test_decide_schedules(
    rules: RuleSet, txn: LedgerTxn, event: Event, reason: Reason, due_at: datetime
) -> None:
    decision = only(decide(event, rules, txn, T0))
    assert isinstance(decision, Schedule)
    assert (decision.reason, decision.due_at, decision.user_id) == (reason, due_at, "u1")
    assert decision.email == "ana@example.com"


def test_schedule_freezes_payload_and_trigger_values(rules: RuleSet, txn: LedgerTxn) -> None:
    decision = only(decide(cart_event(), rules, txn, T0))
    assert isinstance(decision, Schedule)
    assert decision.key == "cart:e1"
    assert decision.payload.template == "d-cart"
    assert dict(decision.payload.data) == {"url": "https://shop.example/c/1"}
    assert decision.payload.categories == ("marketing",)
    assert decision.on_doubt is OnDoubt.SKIP
    assert dict(decision.cancel_match) == {"properties.cart_id": "c1"}


def test_default_data_merges_user_and_properties(rules: RuleSet, txn: LedgerTxn) -> None:
    event = make_event("user_signup", profile={"name": "Ana", "x": 1}, properties={"x": 2})
    decision = only(decide(event, rules, txn, T0))
    assert isinstance(decision, Schedule)
    # a name in both takes the property's value
    assert dict(decision.payload.data) == {"name": "Ana", "x": 2}
    assert decision.on_doubt is OnDoubt.RESEND


# -- decide: skipped and set aside ------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "kind", "reason", "detail"),
    [
        # no rule is triggered by this event name, and none cancels on it
        (make_event("page_viewed"), Skip, Reason.NO_RULE, "page_viewed"),
        # the rule-level `when` fails
        (
            cart_event(properties={"cart_value": 5}),
            Skip,
            Reason.CONDITION_FALSE,
            "properties.cart_value",
        ),
        # the rule is disabled
        (make_event("newsletter"), Skip, Reason.RULE_DISABLED, "disabled"),
        # a sending rule needs an email to send to
        (cart_event(email=None), SetAside, Reason.MISSING_EMAIL, "email"),
        # template data reads a field the event does not have
        (
            make_event("cart_abandoned", properties={"cart_value": 50}),
            SetAside,
            Reason.TEMPLATE_ERROR,
            "cart_url",
        ),
        # the dedupe key reads a property the event does not have
        (make_event("coupon_issued"), SetAside, Reason.TEMPLATE_ERROR, "dedupe"),
    ],
)
def test_decide_skips_and_sets_aside(
    rules: RuleSet,
    txn: LedgerTxn,
    event: Event,
    kind: type[Skip | SetAside],
    reason: Reason,
    detail: str,
) -> None:
    decision = only(decide(event, rules, txn, T0))
    assert isinstance(decision, kind)
    assert decision.reason is reason
    assert detail in decision.detail


def test_duplicate_event_is_decided_once(rules: RuleSet, txn: LedgerTxn) -> None:
    first = decide_and_commit(txn, rules, cart_event("e1"))
    assert [send.key for send in first] == ["cart:e1"]
    again = only(decide(cart_event("e1"), rules, txn, T0))
    assert isinstance(again, Skip)
    assert again.reason is Reason.DUPLICATE_EVENT
    assert again.rule_id is None


def test_same_dedupe_key_from_two_events_is_one_email(rules: RuleSet, txn: LedgerTxn) -> None:
    decide_and_commit(txn, rules, make_event("user_signup", "e1"))
    second = only(decide(make_event("user_signup", "e2", ts=T0 + HOUR), rules, txn, T0 + HOUR))
    assert isinstance(second, Skip)
    assert (second.reason, second.key, second.rule_id) == (
        Reason.DUPLICATE_KEY,
        "welcome:u1",
        "welcome",
    )
    # another user has a key of their own
    other = only(decide(make_event("user_signup", "e3", user="u2"), rules, txn, T0))
    assert isinstance(other, Schedule)
    assert other.key == "welcome:u2"


@pytest.mark.parametrize(
    ("late", "reason"),
    [
        # decided exactly max_late after the due time: still scheduled
        (timedelta(hours=6), Reason.DELAY),
        # one second more: skipped as too late
        (timedelta(hours=6, seconds=1), Reason.MAX_LATE),
    ],
)
def test_max_late_at_schedule_time(
    rules: RuleSet, txn: LedgerTxn, late: timedelta, reason: Reason
) -> None:
    now = T0 + HOUR + late
    decision = only(decide(cart_event(), rules, txn, now))
    assert decision.reason is reason


def _deliver_cart(txn: LedgerTxn, rules: RuleSet, event_id: str, claimed_at: datetime) -> None:
    event = cart_event(event_id, ts=claimed_at - HOUR)
    (send,) = decide_and_commit(txn, rules, event)
    assert txn.claim([send.key], claimed_at)


def test_cooldown_skips_with_until(rules: RuleSet, txn: LedgerTxn) -> None:
    _deliver_cart(txn, rules, "e0", claimed_at=T0 - 2 * HOUR)
    decision = only(decide(cart_event("e1"), rules, txn, T0))
    assert isinstance(decision, Skip)
    assert decision.reason is Reason.COOLDOWN
    assert decision.until == T0 + 22 * HOUR
    assert decision.key == "cart:e1"


def test_cooldown_over_schedules(rules: RuleSet, txn: LedgerTxn) -> None:
    _deliver_cart(txn, rules, "e0", claimed_at=T0 - 24 * HOUR)
    # the last one went out 24h before the new one's due time (T0 + 1h): over
    decision = only(decide(cart_event("e1"), rules, txn, T0))
    assert isinstance(decision, Schedule)


def test_cancelled_send_holds_no_cooldown(rules: RuleSet, txn: LedgerTxn) -> None:
    decide_and_commit(txn, rules, cart_event("e0", ts=T0 - 2 * HOUR))
    decide_and_commit(txn, rules, make_event("order_completed", "o1", ts=T0 - HOUR))
    decision = only(decide(cart_event("e1"), rules, txn, T0))
    assert isinstance(decision, Schedule)


# -- cancellations ----------------------------------------------------------------------------


def test_cancel_on_by_user(rules: RuleSet, txn: LedgerTxn) -> None:
    decide_and_commit(txn, rules, cart_event("e1"))
    decide_and_commit(txn, rules, cart_event("e2", user="u2"))
    decisions = decide(make_event("order_completed", "o1", ts=T0 + HOUR / 2), rules, txn, T0)
    cancel = Cancel("cart", ("cart:e1",), "o1", steps={"cart:e1": 0}, event="order_completed")
    assert decisions == [cancel]


def test_cancel_of_nothing_pending_is_no_rule(rules: RuleSet, txn: LedgerTxn) -> None:
    decision = only(decide(make_event("order_completed", "o1"), rules, txn, T0))
    assert isinstance(decision, Skip)
    assert decision.reason is Reason.NO_RULE


@pytest.mark.parametrize(
    ("cart_id", "cancelled"),
    [
        # the same cart as the trigger's: cancelled
        ("c1", ("cart:e1",)),
        # another cart: the reminder stays
        ("c2", ()),
        # no cart id at all: nothing to match, nothing cancelled
        (None, ()),
    ],
)
def test_cancel_on_by_match_path(
    rules: RuleSet, txn: LedgerTxn, cart_id: str | None, cancelled: tuple[str, ...]
) -> None:
    decide_and_commit(txn, rules, cart_event("e1"))
    props = {} if cart_id is None else {"cart_id": cart_id}
    event = make_event("cart_emptied", "x1", properties=props)
    decisions = decide(event, rules, txn, T0)
    cancels = [d for d in decisions if isinstance(d, Cancel)]
    assert tuple(key for c in cancels for key in c.keys) == cancelled


def test_cancel_leaves_sent_sends_alone(rules: RuleSet, txn: LedgerTxn) -> None:
    (send,) = decide_and_commit(txn, rules, cart_event("e1"))
    txn.claim([send.key], T0 + HOUR)
    decision = only(decide(make_event("order_completed", "o1"), rules, txn, T0 + 2 * HOUR))
    assert isinstance(decision, Skip)


# -- sequences --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        # a free user gets both steps, each delay counted from the trigger
        (
            "free",
            [
                (1, "onboarding:e1#1", T0 + timedelta(days=1)),
                (2, "onboarding:e1#2", T0 + timedelta(days=3)),
            ],
        ),
        # a paid user only the first; the second is skipped by its own `when`
        ("pro", [(1, "onboarding:e1#1", T0 + timedelta(days=1))]),
    ],
)
def test_sequence_steps(
    rules: RuleSet, txn: LedgerTxn, plan: str, expected: list[tuple[int, str, datetime]]
) -> None:
    decisions = decide(make_event("trial_started", profile={"plan": plan}), rules, txn, T0)
    scheduled = [(d.step, d.key, d.due_at) for d in decisions if isinstance(d, Schedule)]
    assert scheduled == expected
    skipped = [d for d in decisions if isinstance(d, Skip)]
    if plan == "pro":
        assert [(s.reason, s.step, s.key) for s in skipped] == [
            (Reason.CONDITION_FALSE, 2, "onboarding:e1#2")
        ]
    else:
        assert skipped == []


def test_sequence_cancel_takes_every_pending_step(rules: RuleSet, txn: LedgerTxn) -> None:
    decide_and_commit(txn, rules, make_event("trial_started", profile={"plan": "free"}))
    decision = only(decide(make_event("account_deleted", "d1"), rules, txn, T0 + HOUR))
    assert isinstance(decision, Cancel)
    assert sorted(decision.keys) == ["onboarding:e1#1", "onboarding:e1#2"]


# -- decide_due -------------------------------------------------------------------------------


def _scheduled(txn: LedgerTxn, rules: RuleSet, event: Event) -> SendRecord:
    (send,) = decide_and_commit(txn, rules, event)
    return send


def test_due_send_fires(rules: RuleSet, txn: LedgerTxn) -> None:
    send = _scheduled(txn, rules, cart_event())
    assert decide_due(send, rules, txn, send.due_at) == Fire("cart:e1")


@pytest.mark.parametrize(
    ("changed_rules", "reason"),
    [
        # the rule was deleted since the send was scheduled
        ("rules: [{id: other, on: x, send: {template: d-x}}]", Reason.RULE_DELETED),
        # the rule was disabled since
        (
            "rules: [{id: cart, on: cart_abandoned, enabled: false, send: {template: d-cart}}]",
            Reason.RULE_DISABLED,
        ),
    ],
)
def test_due_send_dropped_after_rule_change(
    rules: RuleSet, txn: LedgerTxn, changed_rules: str, reason: Reason
) -> None:
    send = _scheduled(txn, rules, cart_event())
    decision = decide_due(send, rules_from(changed_rules), txn, send.due_at)
    assert isinstance(decision, Drop)
    assert (decision.key, decision.reason) == ("cart:e1", reason)


@pytest.mark.parametrize(
    ("late", "expected"),
    [
        # exactly max_late overdue: still fires
        (timedelta(hours=6), Fire("cart:e1")),
        # a second more: dropped
        (timedelta(hours=6, seconds=1), Reason.MAX_LATE),
    ],
)
def test_due_send_max_late(
    rules: RuleSet, txn: LedgerTxn, late: timedelta, expected: Fire | Reason
) -> None:
    send = _scheduled(txn, rules, cart_event())
    decision = decide_due(send, rules, txn, send.due_at + late)
    if isinstance(expected, Fire):
        assert decision == expected
    else:
        assert isinstance(decision, Drop)
        assert decision.reason is expected


def test_due_send_dropped_by_cooldown(rules: RuleSet, txn: LedgerTxn) -> None:
    first = _scheduled(txn, rules, cart_event("e1"))
    second = _scheduled(txn, rules, cart_event("e2", ts=T0 + HOUR / 2))
    assert txn.claim([first.key], first.due_at)
    decision = decide_due(second, rules, txn, second.due_at)
    assert isinstance(decision, Drop)
    assert (decision.key, decision.reason) == ("cart:e2", Reason.COOLDOWN)


def test_due_send_dropped_when_cap_full(rules: RuleSet, txn: LedgerTxn) -> None:
    # coupon has no cooldown; the weekly cap allows one "marketing" email per 7 days
    first = _scheduled(txn, rules, make_event("coupon_issued", "k1", properties={"coupon": "A"}))
    second = _scheduled(txn, rules, make_event("coupon_issued", "k2", properties={"coupon": "B"}))
    assert decide_due(first, rules, txn, T0) == Fire("coupon:A")
    assert txn.claim([first.key], T0)
    decision = decide_due(second, rules, txn, T0 + timedelta(days=7) - timedelta(seconds=1))
    assert isinstance(decision, Drop)
    assert (decision.key, decision.reason) == ("coupon:B", Reason.CAP_FULL)
    # the window is closed at both ends: exactly seven days after, the first still counts
    assert isinstance(decide_due(second, rules, txn, T0 + timedelta(days=7)), Drop)
    later = T0 + timedelta(days=7, microseconds=1)
    assert decide_due(second, rules, txn, later) == Fire("coupon:B")


def test_due_send_deferred_while_window_shut(rules: RuleSet, txn: LedgerTxn) -> None:
    morning = datetime(2026, 11, 27, 10, 0, tzinfo=UTC)
    event = make_event("report_ready", ts=morning, profile={"timezone": "Europe/Lisbon"})
    send = _scheduled(txn, rules, event)
    assert send.due_at == morning
    # a retry pushed it past 20:00 local: wait for tomorrow's opening
    decision = decide_due(send, rules, txn, T0 + HOUR)
    assert decision == Defer("report:e1", datetime(2026, 11, 28, 9, 0, tzinfo=UTC))
    assert decision.reason is Reason.SEND_WINDOW
