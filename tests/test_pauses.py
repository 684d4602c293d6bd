"""The pause decision (engine.decide_paused) and the pauses' ledger value, table-driven."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from trigmail.decisions import Defer, Drop, Payload, Reason
from trigmail.engine import PAUSE_RECHECK_S, decide_paused
from trigmail.ledger.base import SendRecord
from trigmail.pauses import Pause, decode, encode, in_force
from trigmail.rules.model import OnDoubt

NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
LATER = NOW + timedelta(hours=1)
SOON = NOW + timedelta(seconds=2)
RECHECK = NOW + timedelta(seconds=PAUSE_RECHECK_S)


def send(rule: str = "cart") -> SendRecord:
    return SendRecord(
        key=f"{rule}:u1",
        rule_id=rule,
        step=0,
        user_id="u1",
        email="u1@example.com",
        event_id="e1",
        due_at=NOW,
        payload=Payload(template="d-1", data={}),
        on_doubt=OnDoubt.SKIP,
        rules_version="v1",
    )


@pytest.mark.parametrize(
    ("pauses", "expected"),
    [
        # no pause: the due decision goes on
        ({}, None),
        # another rule's pause changes nothing
        ({"other": Pause("other", NOW)}, None),
        # paused until resumed: held, looked at again soon
        ({"cart": Pause("cart", NOW)}, Defer("cart:u1", RECHECK, Reason.PAUSED)),
        # paused until a time before the next look: held until then
        ({"cart": Pause("cart", NOW, until=SOON)}, Defer("cart:u1", SOON, Reason.PAUSED)),
        # a pause that has ended: nothing
        ({"cart": Pause("cart", NOW - timedelta(hours=2), until=NOW)}, None),
        # --drop: dropped as paused, with the operator's reason
        (
            {"cart": Pause("cart", NOW, until=LATER, reason="broken", drop=True)},
            Drop("cart:u1", Reason.PAUSED, "rule cart paused: broken"),
        ),
    ],
)
def test_decide_paused(pauses: dict[str, Pause], expected: Drop | Defer | None) -> None:
    assert decide_paused(send(), pauses, NOW) == expected


def test_pauses_round_trip_and_a_bad_value_is_no_pause() -> None:
    pauses = {"cart": Pause("cart", NOW, until=LATER, reason="x", drop=True)}
    assert decode(encode(pauses)) == pauses
    assert in_force(pauses, LATER) == {}
    for bad in ("", "not json", "[]", '{"cart": {"at": 1}}'):
        assert decode(bad) == {}
