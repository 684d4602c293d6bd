"""Accepted requests' outcomes committed together: each caller returns once its own is in."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from pathlib import Path
from typing import cast

import pytest

from tests.ledger_helpers import make_send, put_in_state, state_of
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.errors import LedgerError
from trigmail.ledger import SqliteLedger
from trigmail.ledger.base import Ledger, LedgerTxn, SendState
from trigmail.outcomes import Outcomes
from trigmail.sends import send_entry

WAIT_S = 20.0


class Gated:
    """A ledger whose first transaction waits for ``release``; it counts transactions."""

    def __init__(self, inner: Ledger, fail: bool = False) -> None:
        self.inner = inner
        self.fail = fail
        self.transactions = 0
        self.first_open = threading.Event()
        self.release = threading.Event()

    def transaction(self) -> AbstractContextManager[LedgerTxn]:
        return self._transaction()

    @contextmanager
    def _transaction(self) -> Iterator[LedgerTxn]:
        self.transactions += 1
        if self.transactions == 1:
            self.first_open.set()
            assert self.release.wait(WAIT_S)
        if self.fail:
            raise LedgerError("disk full")
        with self.inner.transaction() as txn:
            yield txn


def _entries(ledger: Ledger, key: str, at: datetime) -> list[LogEntry]:
    send = ledger.get_send(key)
    assert send is not None
    return [send_entry(send, Outcome.SENT, Reason.DELIVERED, at)]


def _outcomes_while_one_commits(
    tmp_path: Path, t0: datetime, *, fail: bool
) -> tuple[SqliteLedger, Gated, list[BaseException | None]]:
    """Three requests answered together: the first commits alone (held open), the two
    others wait behind it; returns what each raised."""
    ledger = SqliteLedger(tmp_path / "ledger.db")
    keys = ["a", "b", "c"]
    for n, key in enumerate(keys):
        put_in_state(ledger, make_send(key, t0, user=f"u{n}"), SendState.SENDING, t0)
    gated = Gated(ledger, fail=fail)
    outcomes = Outcomes(cast(Ledger, gated))
    raised: list[BaseException | None] = [None] * len(keys)

    def send(index: int) -> None:
        key = keys[index]
        try:
            outcomes.sent([key], t0, f"msg-{key}", _entries(ledger, key, t0))
        except BaseException as exc:  # noted for the test to look at
            raised[index] = exc

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert gated.first_open.wait(WAIT_S)
    others = [threading.Thread(target=send, args=(n,)) for n in (1, 2)]
    for thread in others:
        thread.start()
    # Both wait their turn once they queued their outcome: then the first may commit.
    _wait_until(lambda: len(outcomes._waiting) == 2)
    gated.release.set()
    for thread in [first, *others]:
        thread.join(WAIT_S)
    return ledger, gated, raised


def _wait_until(condition: Callable[[], bool]) -> None:
    done = threading.Event()
    for _ in range(int(WAIT_S / 0.01)):
        if condition():
            return
        done.wait(0.01)  # polling a condition against a deadline, not a fixed wait
    raise AssertionError("condition never held")


def test_outcomes_answered_together_share_a_transaction(tmp_path: Path, t0: datetime) -> None:
    ledger, gated, raised = _outcomes_while_one_commits(tmp_path, t0, fail=False)
    assert raised == [None, None, None]
    assert gated.transactions == 2  # the first alone, then the two that waited, together
    for key in ("a", "b", "c"):
        assert state_of(ledger, key) is SendState.SENT
        send = ledger.get_send(key)
        assert send is not None and send.message_id == f"msg-{key}"
    assert {entry.key for entry in ledger.decision_log(limit=10)} >= {"a", "b", "c"}


def test_a_failed_commit_is_raised_in_every_slot_it_carried(tmp_path: Path, t0: datetime) -> None:
    ledger, gated, raised = _outcomes_while_one_commits(tmp_path, t0, fail=True)
    assert gated.transactions == 2
    assert all(isinstance(exc, LedgerError) for exc in raised)
    for key in ("a", "b", "c"):
        assert state_of(ledger, key) is SendState.SENDING  # in doubt at the next start


def test_a_lone_outcome_is_committed_before_the_call_returns(tmp_path: Path, t0: datetime) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    put_in_state(ledger, make_send("k", t0), SendState.SENDING, t0)
    Outcomes(ledger).sent(["k"], t0, "m", _entries(ledger, "k", t0))
    assert state_of(ledger, "k") is SendState.SENT


@pytest.fixture(autouse=True)
def _no_leftover_threads() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    assert not [t for t in threading.enumerate() if t not in before and t.is_alive()]
