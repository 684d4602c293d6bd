"""Properties of the whole engine under any interleaving of events and clock advances.

Hypothesis generates event streams (a few users, triggers and cancels, redelivered ids, with and
without ``match`` values) spread over the 2026 DST changes, runs them through the real
:class:`Simulation` (pipeline, MemoryLedger, RecordingProvider, VirtualClock), and checks what
was sent against the ledger and against an independent reading of the stream.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trigmail.decisions import LogEntry, Outcome
from trigmail.events import format_ts, parse_event
from trigmail.ledger.base import SendRecord, SendState
from trigmail.rules.loader import parse_rules
from trigmail.simulate import Simulation

RULES = parse_rules(
    textwrap.dedent(
        """
        rules:
          - id: cart
            on: cart_abandoned
            delay: 1h
            cancel_on: [order_completed, {event: cart_emptied, match: properties.cart_id}]
            cooldown: 3h
            dedupe: "{rule}:{user_id}:{properties.cart_id}"
            send: {template: d-cart, category: marketing}
          - id: promo
            on: promo_seen
            delay: 30m
            send_window: {from: "09:00", to: "20:00", timezone: user.timezone}
            send: {template: d-promo, category: marketing}
          - id: welcome
            on: user_signup
            dedupe: "{rule}:{user_id}"
            send: {template: d-welcome}
        caps:
          - {id: daily, max: 2, per: 1d, categories: [marketing]}
        """
    )
).rule_set()
COOLDOWN = timedelta(hours=3)
CAP_MAX, CAP_PER = 2, timedelta(days=1)
WINDOW = (time(9, 0), time(20, 0))

# Each user carries one profile zone; u3's is no IANA name, so its window is in UTC.
PROFILE_ZONE = {"u1": "Europe/Lisbon", "u2": "America/New_York", "u3": "Nowhere/Land"}
WINDOW_ZONE = {
    "u1": ZoneInfo("Europe/Lisbon"),
    "u2": ZoneInfo("America/New_York"),
    "u3": ZoneInfo("UTC"),
}
# Just before the 2026 DST changes in Europe (29 March, 25 October); New York's
# fall back (1 November) is reached from the second.
STARTS = [datetime(2026, 3, 27, 12, 0, tzinfo=UTC), datetime(2026, 10, 23, 12, 0, tzinfo=UTC)]
NAMES = [
    "cart_abandoned",
    "cart_abandoned",
    "order_completed",
    "cart_emptied",
    "promo_seen",
    "promo_seen",
    "user_signup",
]


@dataclass(frozen=True)
class Emit:
    name: str
    user: str
    event_id: str | None  # None: no id, the event's hash is its id
    cart_id: str | None


@dataclass(frozen=True)
class Advance:
    minutes: int


emits = st.builds(
    Emit,
    name=st.sampled_from(NAMES),
    user=st.sampled_from(sorted(PROFILE_ZONE)),
    event_id=st.one_of(st.none(), st.sampled_from([f"e{n}" for n in range(10)])),
    cart_id=st.one_of(st.none(), st.sampled_from(["c1", "c2"])),
)
# Mostly short steps (cooldowns, delays, caps interact), some long ones (across a DST change).
advances = st.builds(
    Advance,
    minutes=st.one_of(st.integers(min_value=0, max_value=90), st.integers(0, 12 * 60)),
)
streams = st.lists(st.one_of(emits, emits, advances), min_size=20, max_size=60)


@dataclass(frozen=True)
class Decided:
    """An event the engine decided (a redelivered id is decided once, the first time)."""

    index: int
    id: str
    name: str
    user: str
    cart_id: str | None
    at: datetime


@dataclass
class Run:
    decided: dict[str, Decided]
    order: list[Decided]
    sent: list[SendRecord]
    entries: list[LogEntry]


def _line(emit: Emit, at: datetime) -> bytes:
    cart_id = emit.cart_id
    if emit.name == "cart_abandoned" and cart_id is None:
        cart_id = "c0"  # the dedupe key needs one
    obj: dict[str, Any] = {
        "event": emit.name,
        "user_id": emit.user,
        "email": f"{emit.user}@example.com",
        "ts": format_ts(at),
        "user": {"timezone": PROFILE_ZONE[emit.user]},
        "properties": {} if cart_id is None else {"cart_id": cart_id},
    }
    if emit.event_id is not None:
        obj["id"] = emit.event_id
    return json.dumps(obj).encode()


def simulate(start: datetime, stream: list[Emit | Advance]) -> Run:
    entries: list[LogEntry] = []
    simulation = Simulation(RULES, entries.append)
    now = start
    decided: dict[str, Decided] = {}
    order: list[Decided] = []
    for index, step in enumerate(stream, start=1):
        if isinstance(step, Advance):
            now += timedelta(minutes=step.minutes)
            simulation.run_until(now)
            continue
        line = _line(step, now)
        simulation.feed(index, line)
        event = parse_event(line, now)
        if event.id not in decided:
            cart_id = event.properties.get("cart_id")
            seen = Decided(index, event.id, step.name, step.user, cart_id, now)
            decided[event.id] = seen
            order.append(seen)
    simulation.run_until(None)
    sent = []
    for email in simulation.provider.sent:
        record = simulation.ledger.get_send(email.key)
        assert record is not None
        sent.append(record)
    return Run(decided, order, sent, entries)


def _sent_by(run: Run, rule: str) -> dict[str, list[datetime]]:
    times: dict[str, list[datetime]] = defaultdict(list)
    for record in run.sent:
        if rule in ("*", record.rule_id):
            assert record.claimed_at is not None
            times[record.user_id].append(record.claimed_at)
    return {user: sorted(found) for user, found in times.items()}


PROPERTY_SETTINGS = settings(
    max_examples=75, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@PROPERTY_SETTINGS
@given(start=st.sampled_from(STARTS), stream=streams)
def test_no_key_is_sent_twice(start: datetime, stream: list[Emit | Advance]) -> None:
    run = simulate(start, stream)
    keys = [record.key for record in run.sent]
    assert len(keys) == len(set(keys))
    assert all(record.state is SendState.SENT for record in run.sent)
    sent_lines = [e.key or "" for e in run.entries if e.outcome is Outcome.SENT]
    assert sorted(sent_lines) == sorted(keys)
    # welcome is keyed by user: once per user, ever
    welcomed = [record.user_id for record in run.sent if record.rule_id == "welcome"]
    assert len(welcomed) == len(set(welcomed))


def _cancels(trigger: Decided, cancel: Decided) -> bool:
    if cancel.user != trigger.user or cancel.index <= trigger.index:
        return False
    if cancel.name == "order_completed":
        return True
    return (
        cancel.name == "cart_emptied"
        and cancel.cart_id is not None
        and cancel.cart_id == trigger.cart_id
    )


@PROPERTY_SETTINGS
@given(start=st.sampled_from(STARTS), stream=streams)
def test_no_send_after_its_cancel_event(start: datetime, stream: list[Emit | Advance]) -> None:
    run = simulate(start, stream)
    for record in run.sent:
        if record.rule_id != "cart":
            continue
        trigger = run.decided[record.event_id]
        assert record.claimed_at is not None
        for cancel in run.order:
            if _cancels(trigger, cancel):
                # a cancel decided while the send was still scheduled would have taken it:
                # the send went out at or before the cancel's time (due sends fire first)
                assert record.claimed_at <= cancel.at, (record.key, cancel)


@PROPERTY_SETTINGS
@given(start=st.sampled_from(STARTS), stream=streams)
def test_cooldown_and_caps_hold(start: datetime, stream: list[Emit | Advance]) -> None:
    run = simulate(start, stream)
    for times in _sent_by(run, "cart").values():
        assert all(later - earlier >= COOLDOWN for earlier, later in pairwise(times))
    for user, times in _capped_times(run).items():
        # no closed window of CAP_PER holds more than CAP_MAX sends
        for first, last in zip(times, times[CAP_MAX:], strict=False):
            assert last - first > CAP_PER, (user, times)


def _capped_times(run: Run) -> dict[str, list[datetime]]:
    cart = _sent_by(run, "cart")
    promo = _sent_by(run, "promo")
    return {user: sorted(cart.get(user, []) + promo.get(user, [])) for user in {*cart, *promo}}


@PROPERTY_SETTINGS
@given(start=st.sampled_from(STARTS), stream=streams)
def test_windowed_sends_fire_inside_local_hours(
    start: datetime, stream: list[Emit | Advance]
) -> None:
    run = simulate(start, stream)
    opens, closes = WINDOW
    for record in run.sent:
        if record.rule_id != "promo":
            continue
        assert record.claimed_at is not None
        local = record.claimed_at.astimezone(WINDOW_ZONE[record.user_id]).time()
        assert opens <= local < closes, (record.key, record.claimed_at, local)
        # never before its trigger's delay has passed
        trigger = run.decided[record.event_id]
        assert record.claimed_at >= trigger.at + timedelta(minutes=30)
