"""A sequence step's own ``cancel_on`` stops that step only; the rule's stops the sequence.

Real parts: the rules loader, the pipeline on a MemoryLedger and a SQLite file (through
``simulate``'s virtual clock), and the out-of-order path of several workers (cancel marks).
"""

from __future__ import annotations

import json
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.decisions import LogEntry, Outcome
from trigmail.ingest import RawItem
from trigmail.ledger.base import Ledger, SendState
from trigmail.ledger.memory import MemoryLedger
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.simulate import Simulation, VirtualClock

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
DAY = timedelta(days=1)
RULES = parse_rules(
    textwrap.dedent(
        """
        rules:
          - id: onboarding
            on: trial_started
            cancel_on: [account_deleted]
            steps:
              - {delay: 0, send: {template: d-day0}}
              - {delay: 3d, cancel_on: [activated], send: {template: d-day3}}
              - delay: 1w
                cancel_on: [{event: upgraded, match: properties.plan}]
                send: {template: d-day7}
        """
    )
).rule_set()
DUE = {1: T0, 2: T0 + 3 * DAY, 3: T0 + 7 * DAY}
STEP_CANCELS = {"activated": 2, "upgraded": 3}


def event(event_id: str, name: str, at: datetime, **properties: Any) -> dict[str, Any]:
    return {
        "id": event_id,
        "event": name,
        "user_id": "ana",
        "email": "ana@example.com",
        "ts": at.isoformat(),
        "properties": properties,
    }


def simulate(events: list[dict[str, Any]]) -> dict[int, Outcome]:
    """The last outcome of each step of the trigger ``t1``."""
    entries: list[LogEntry] = []
    sim = Simulation(RULES, entries.append)
    sim.run(json.dumps(e).encode() for e in sorted(events, key=lambda e: e["ts"]))
    last: dict[int, Outcome] = {}
    for entry in entries:
        if entry.key is not None and entry.key.startswith("onboarding:t1#"):
            last[int(entry.key.rsplit("#", 1)[1])] = entry.outcome
    return last


def test_a_step_cancel_stops_that_step_only() -> None:
    outcomes = simulate(
        [event("t1", "trial_started", T0, plan="pro"), event("a1", "activated", T0 + DAY)]
    )
    assert outcomes == {1: Outcome.SENT, 2: Outcome.CANCELLED, 3: Outcome.SENT}


def test_a_step_cancel_matches_on_the_trigger_value() -> None:
    outcomes = simulate(
        [
            event("t1", "trial_started", T0, plan="pro"),
            # another plan's upgrade leaves day 7 alone
            event("u1", "upgraded", T0 + DAY, plan="team"),
        ]
    )
    assert outcomes[3] is Outcome.SENT
    outcomes = simulate(
        [
            event("t1", "trial_started", T0, plan="pro"),
            event("u1", "upgraded", T0 + DAY, plan="pro"),
        ]
    )
    assert outcomes == {1: Outcome.SENT, 2: Outcome.SENT, 3: Outcome.CANCELLED}


def test_the_rule_cancel_stops_the_whole_sequence() -> None:
    outcomes = simulate(
        [event("t1", "trial_started", T0, plan="pro"), event("d1", "account_deleted", T0 + DAY)]
    )
    assert outcomes == {1: Outcome.SENT, 2: Outcome.CANCELLED, 3: Outcome.CANCELLED}


cancels = st.lists(
    st.tuples(
        st.sampled_from(["activated", "upgraded", "account_deleted"]),
        st.integers(min_value=1, max_value=10 * 24),  # hours after the trigger
        st.sampled_from(["pro", "team"]),
    ),
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(cancels=cancels)
def test_a_step_cancel_never_lets_its_step_through_nor_touches_the_others(
    cancels: list[tuple[str, int, str]],
) -> None:
    events = [event("t1", "trial_started", T0, plan="pro")]
    events += [
        event(f"c{i}", name, T0 + timedelta(hours=hours), plan=plan)
        for i, (name, hours, plan) in enumerate(cancels)
    ]
    outcomes = simulate(events)
    for step, due_at in DUE.items():
        stopped_by = [
            name
            for name, hours, plan in cancels
            if T0 + timedelta(hours=hours) < due_at
            and (
                name == "account_deleted"
                or (STEP_CANCELS[name] == step and (name != "upgraded" or plan == "pro"))
            )
        ]
        expected = Outcome.CANCELLED if stopped_by else Outcome.SENT
        assert outcomes[step] is expected, (step, cancels)


# -- several workers: a cancel decided before a trigger that entered the stream first ---------


@pytest.fixture(params=["memory", "sqlite"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    if request.param == "memory":
        return MemoryLedger(clock=VirtualClock(T0))
    return SqliteLedger(tmp_path / "ledger.db", clock=VirtualClock(T0))


def entry(event_id: str, name: str, order: str, **properties: Any) -> RawItem:
    data = json.dumps(event(event_id, name, T0, **properties)).encode()
    # The order text of a Redis entry id: it sorts as the stream does.
    return RawItem(data, f"stream {order}", order, order=order)


# (the step cancel's order, which steps end cancelled): the trigger entered at 0005
ORDERS = [
    # the activation entered after the trigger, decided first: day 3 ends cancelled
    ("0009", {2}),
    # the activation entered before the trigger (an earlier trial): nothing is cancelled
    ("0001", set()),
]


@pytest.mark.parametrize(("cancel_at", "cancelled"), ORDERS)
def test_a_step_cancel_decided_first_still_cancels_a_trigger_that_entered_before_it(
    ledger: Ledger, cancel_at: str, cancelled: set[int]
) -> None:
    shell = Pipeline(ledger, lambda: RULES, RecordingProvider(), VirtualClock(T0))
    shell.ingest([entry("a1", "activated", cancel_at)])
    shell.ingest([entry("t1", "trial_started", "0005", plan="pro")])
    states = {}
    for step in (2, 3):
        send = ledger.get_send(f"onboarding:t1#{step}")
        assert send is not None
        states[step] = send.state
    assert {s for s, state in states.items() if state is SendState.CANCELLED} == cancelled
    assert all(state is SendState.SCHEDULED for s, state in states.items() if s not in cancelled)
    ledger.close()


def test_the_cancel_line_names_the_step_it_cancelled() -> None:
    entries: list[LogEntry] = []
    sim = Simulation(RULES, entries.append)
    events = [event("t1", "trial_started", T0, plan="pro"), event("a1", "activated", T0 + DAY)]
    sim.run(json.dumps(e).encode() for e in events)
    cancelled = [(e.step, e.key) for e in entries if e.outcome is Outcome.CANCELLED]
    assert cancelled == [(2, "onboarding:t1#2")]
