"""The rules every ledger shares: the state machine in one place, and no backend loaded early.

The contract suite (test_ledger_contract.py) judges the ledgers' behaviour; these tests guard
what it cannot see: that the SQL names states only as generated from the state sets, that
every move of a send follows ``TRANSITIONS``, and that the engine starts without a database
driver.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from trigmail.decisions import Payload
from trigmail.ledger.pg_rows import POSTGRES
from trigmail.ledger.semantics import (
    DELIVERED_SQL,
    FINISHED_SQL,
    LEASE_EXPIRED_ERROR,
    recovered,
    resolved,
)
from trigmail.ledger.sql import Dialect, Statements
from trigmail.ledger.sqlite import SQLITE
from trigmail.rules.model import Address, OnDoubt
from trigmail.sends import (
    DELIVERED_STATES,
    FINISHED_STATES,
    TRANSITIONS,
    SendRecord,
    SendState,
    cancelled,
    claimed,
    evolve,
    finished,
    retried,
)


def _send(state: SendState, t0: datetime, on_doubt: OnDoubt = OnDoubt.SKIP) -> SendRecord:
    payload = Payload(
        template="d-1", data={}, categories=("promo",), asm_group=None, from_=Address("a@b.c")
    )
    send = SendRecord(
        key="k1",
        rule_id="cart",
        step=0,
        user_id="u1",
        email="u1@example.com",
        event_id="e1",
        due_at=t0,
        payload=payload,
        on_doubt=on_doubt,
        rules_version="v1",
        created_at=t0,
        updated_at=t0,
    )
    return evolve(send, state=state, claimed_at=None if state == SendState.SCHEDULED else t0)


def test_the_state_lists_of_sql_are_generated_from_the_state_sets() -> None:
    assert DELIVERED_SQL == "('in_doubt', 'sending', 'sent')"
    assert FINISHED_SQL == "('cancelled', 'failed', 'in_doubt', 'sent')"
    assert {DELIVERED_SQL, FINISHED_SQL} == {
        "(" + ", ".join(f"'{s}'" for s in sorted(states)) + ")"
        for states in (DELIVERED_STATES, FINISHED_STATES)
    }


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_no_statement_spells_a_state_list_by_hand(dialect: Dialect) -> None:
    statements = Statements(dialect)
    texts = [v for v in vars(statements).values() if isinstance(v, str)]
    texts += [*statements.prune]
    lists = [m for text in texts for m in re.findall(r"state IN (\([^)]*\))", text)]
    assert lists  # the delivered counts and the pruning use them
    assert set(lists) <= {DELIVERED_SQL, FINISHED_SQL}


@pytest.mark.parametrize("dialect", [SQLITE, POSTGRES], ids=["sqlite", "postgres"])
def test_statements_are_written_in_the_dialect_placeholder(dialect: Dialect) -> None:
    texts = [v for v in vars(Statements(dialect)).values() if isinstance(v, str)]
    other = "%s" if dialect.placeholder == "?" else "?"
    assert not [text for text in texts if other in text]
    assert not [text for text in texts if "{" in text]  # every fragment was filled in


# Each move a ledger makes, from the state it starts in.
_MOVES: list[tuple[SendState, Callable[[SendRecord, datetime], SendRecord]]] = [
    (SendState.SCHEDULED, claimed),
    (SendState.SCHEDULED, lambda r, at: cancelled(r, "test", at)),
    (SendState.SENDING, lambda r, at: finished(r, SendState.SENT, at, "m1", None)),
    (SendState.SENDING, lambda r, at: finished(r, SendState.FAILED, at, None, "bad")),
    (SendState.SENDING, lambda r, at: finished(r, SendState.IN_DOUBT, at, None, "?")),
    (SendState.SENDING, lambda r, at: retried(r, at, "later", at)),
    (SendState.SENDING, recovered),
    (SendState.SENDING, lambda r, at: recovered(r, at, LEASE_EXPIRED_ERROR)),
    (SendState.IN_DOUBT, lambda r, at: resolved(r, True, at)),
    (SendState.IN_DOUBT, lambda r, at: resolved(r, False, at)),
]


@pytest.mark.parametrize(("start", "move"), _MOVES)
@pytest.mark.parametrize("on_doubt", list(OnDoubt))
def test_every_move_follows_the_transitions(
    start: SendState,
    move: Callable[[SendRecord, datetime], SendRecord],
    on_doubt: OnDoubt,
    t0: datetime,
) -> None:
    at = t0 + timedelta(minutes=5)
    moved = move(_send(start, t0, on_doubt), at)
    assert moved.state in TRANSITIONS[start]
    assert moved.updated_at == at
    # The schema's CHECK: a send past scheduled (but cancelled) says when it was claimed.
    assert moved.state in {SendState.SCHEDULED, SendState.CANCELLED} or moved.claimed_at


def test_finished_states_are_left_only_by_an_operators_resolve() -> None:
    assert [s for s in FINISHED_STATES if TRANSITIONS[s]] == [SendState.IN_DOUBT]


def _imported(module: str, candidates: tuple[str, ...]) -> list[str]:
    """Which of ``candidates`` a fresh interpreter has loaded after importing ``module``."""
    probe = (
        f"import sys, {module}; "
        f"print(','.join(sorted(m for m in {candidates!r} if m in sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    return [m for m in done.stdout.strip().split(",") if m]


def test_the_engine_imports_no_database_redis_or_http_client() -> None:
    # The engine is the functional core: a test, simulate or validate that decides events
    # must not pay for (or depend on) a backend it never opens.
    assert _imported("trigmail.engine", ("sqlite3", "psycopg", "redis", "httpx")) == []


def test_serve_loads_redis_and_psycopg_only_when_configured() -> None:
    # The embedded defaults (a spool and SQLite) need neither, nor their import time.
    assert _imported("trigmail.service", ("psycopg", "redis")) == []
