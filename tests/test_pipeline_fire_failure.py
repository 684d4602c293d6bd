"""A failed ``fire_due`` transaction: its sends fire at the next call, not after the horizon.

Several workers on one PostgreSQL ledger lock users in different orders now and then, and
PostgreSQL breaks the deadlock by aborting one transaction. When that was ``fire_due``'s, the
sends it had popped from the scheduler's cache were rolled back to ``scheduled`` but no longer
cached: they waited for the horizon to run out (5 minutes), and the several-worker reliability
run's drain, 3 minutes long, timed out.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime

import pytest

from tests.pipeline_harness import T0, Harness, item, line
from trigmail.errors import LedgerUnavailableError
from trigmail.ledger.base import SendRecord, SendState
from trigmail.ledger.memory import MemoryLedger, MemoryTxn
from trigmail.simulate import VirtualClock


@pytest.fixture
def clock() -> VirtualClock:
    return VirtualClock(T0)


def _deadlocked(txn: MemoryTxn, keys: Collection[str], at: datetime) -> list[SendRecord]:
    raise LedgerUnavailableError("deadlock detected")


@pytest.mark.parametrize("shared", [True, False], ids=["shared", "one-worker"])
def test_sends_of_a_failed_fire_due_fire_at_the_next_call(
    clock: VirtualClock, monkeypatch: pytest.MonkeyPatch, shared: bool
) -> None:
    ledger = MemoryLedger(clock=clock, shared=shared)
    h = Harness(ledger, clock)
    h.pipeline.start()
    h.pipeline.ingest([item(line("user_signup", "e1"))])
    with monkeypatch.context() as patch:
        patch.setattr(MemoryTxn, "claim", _deadlocked)
        with pytest.raises(LedgerUnavailableError):
            h.pipeline.fire_due()
    assert h.state("welcome:u1") is SendState.SCHEDULED  # rolled back

    h.run()  # the same instant: long before the horizon (300 s) runs out
    assert h.state("welcome:u1") is SendState.SENT
    assert [email.key for email in h.provider.sent] == ["welcome:u1"]
    ledger.close()
