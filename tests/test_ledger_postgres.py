"""What only the PostgreSQL ledger promises: schema, several workers on one database, leases,
per-user serialisation, the exclusive lock, error classes and a password that never shows.

Races are made deterministic by holding one transaction open and waiting until the other
worker's backend is seen waiting on a lock in ``pg_stat_activity``, never by sleeping.
"""

from __future__ import annotations

import logging
import os
import socket
import textwrap
import threading
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg
import pytest

from tests.ledger_helpers import FakeClock, make_send, put_in_state
from trigmail.errors import LedgerError, LedgerUnavailableError
from trigmail.ledger import PostgresLedger, open_ledger
from trigmail.ledger.base import DeadLetter, SendState
from trigmail.ledger.pg_schema import LATEST_VERSION, LOCK_SCHEMA, LOCK_USER, MIGRATIONS, migrate
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import OnDoubt

pytestmark = pytest.mark.postgres

T = TypeVar("T")
PASSWORD = "hunter2-never-shown"


@pytest.fixture
def clock(t0: datetime) -> FakeClock:
    return FakeClock(t0)


@pytest.fixture
def workers(postgres_dsn: str, clock: FakeClock) -> Iterator[tuple[PostgresLedger, PostgresLedger]]:
    """Two ledgers on one database, as two worker processes would open it."""
    first = PostgresLedger(postgres_dsn, worker_id="w1", clock=clock)
    second = PostgresLedger(postgres_dsn, worker_id="w2", clock=clock)
    try:
        yield first, second
    finally:
        first.close()
        second.close()


@pytest.fixture
def ledger(workers: tuple[PostgresLedger, PostgresLedger]) -> PostgresLedger:
    return workers[0]


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the database behind the ledger's back, on a connection of its own."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return [] if cursor.description is None else cursor.fetchall()


def run_blocked(dsn: str, pool: ThreadPoolExecutor, work: Callable[[], T]) -> Future[T]:
    """Start ``work`` in a thread and return once its backend waits on a lock.

    Fails at once if ``work`` finishes instead: then nothing made it wait.
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        before = _lock_waiters(conn)
        future = pool.submit(work)
        while _lock_waiters(conn) == before:
            if future.done():
                future.result()  # raises what the work raised
                pytest.fail("the second worker did not wait for the first")
    return future


def _lock_waiters(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    ).fetchone()
    assert row is not None
    return int(row[0])


# -- the schema --------------------------------------------------------------------------------


def test_a_new_database_gets_the_latest_schema(ledger: PostgresLedger, postgres_dsn: str) -> None:
    assert ledger.get_meta("schema_version") == str(LATEST_VERSION) == "2"
    tables = {name for (name,) in query(postgres_dsn, "SELECT tablename FROM pg_tables")}
    expected = {"meta", "sends", "seen_events", "positions", "decision_log", "dead_letters"}
    expected.add("cancel_marks")
    assert expected <= tables
    types = dict(
        query(
            postgres_dsn,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_name = 'sends'",
        )
    )
    assert types["due_at"] == types["lease_until"] == "timestamp with time zone"
    assert types["payload"] == types["cancel_match"] == "jsonb"
    assert types["lease_owner"] == "text"


def test_reopening_keeps_data_and_schema(postgres_dsn: str, t0: datetime) -> None:
    with closing(PostgresLedger(postgres_dsn)) as first, first.transaction() as txn:
        txn.insert_send(make_send("k1", t0))
        txn.set_position("spool", "9")
    with closing(PostgresLedger(postgres_dsn)) as second, second.transaction() as txn:
        assert txn.send_exists("k1")
        assert txn.get_position("spool") == "9"
    assert query(postgres_dsn, "SELECT value FROM meta WHERE name = 'schema_version'") == [("2",)]


def test_a_later_migration_is_applied_once_and_in_order(postgres_dsn: str) -> None:
    later = (*MIGRATIONS, ["ALTER TABLE sends ADD COLUMN note text"])
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        assert migrate(conn) == LATEST_VERSION
        assert migrate(conn, later) == LATEST_VERSION + 1
        assert migrate(conn, later) == LATEST_VERSION + 1  # a second ADD COLUMN would fail
    stored = query(postgres_dsn, "SELECT value FROM meta WHERE name = 'schema_version'")
    assert stored == [(str(LATEST_VERSION + 1),)]


def test_a_newer_schema_is_refused(postgres_dsn: str) -> None:
    PostgresLedger(postgres_dsn).close()
    query(postgres_dsn, "UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    with pytest.raises(LedgerError, match="schema version 99, newer"):
        PostgresLedger(postgres_dsn)


def test_workers_starting_together_create_the_schema_once(postgres_dsn: str) -> None:
    opened: list[PostgresLedger] = []
    with psycopg.connect(postgres_dsn, autocommit=True) as holder:
        # Holding the schema lock makes both openers queue behind it, then go one by one.
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_SCHEMA,))
        with ThreadPoolExecutor(2) as pool:
            first = run_blocked(postgres_dsn, pool, lambda: PostgresLedger(postgres_dsn))
            second = run_blocked(postgres_dsn, pool, lambda: PostgresLedger(postgres_dsn))
            holder.execute("COMMIT")
            opened = [first.result(), second.result()]
    for ledger in opened:
        assert ledger.get_meta("schema_version") == str(LATEST_VERSION)
        ledger.close()


def test_a_constraint_violation_fails_loudly(ledger: PostgresLedger, t0: datetime) -> None:
    bad = make_send("k1", t0)
    with pytest.raises(LedgerError, match="check constraint"), ledger.transaction() as txn:
        txn.insert_send(replace(bad, step=-1))
    assert ledger.get_send("k1") is None


# -- two workers on one database ---------------------------------------------------------------


def test_a_key_inserted_by_two_workers_at_once_is_inserted_once(
    workers: tuple[PostgresLedger, PostgresLedger], postgres_dsn: str, t0: datetime
) -> None:
    first, second = workers

    def insert_again() -> tuple[bool, bool]:
        with second.transaction() as txn:
            return txn.insert_send(make_send("k1", t0, user="u2")), txn.mark_seen("e1", t0)

    with ThreadPoolExecutor(1) as pool, first.transaction() as txn:
        assert txn.insert_send(make_send("k1", t0))
        assert txn.mark_seen("e1", t0)
        # The second insert waits for the first transaction, then does nothing.
        waiting = run_blocked(postgres_dsn, pool, insert_again)
    assert waiting.result() == (False, False)
    stored = first.get_send("k1")
    assert stored is not None and stored.user_id == "u1"


def test_a_send_being_claimed_is_skipped_by_the_other_worker(
    workers: tuple[PostgresLedger, PostgresLedger], postgres_dsn: str, t0: datetime
) -> None:
    first, second = workers
    for key in "abc":
        put_in_state(first, make_send(key, t0), SendState.SCHEDULED, t0)
    with first.transaction() as txn_1:
        assert [r.key for r in txn_1.claim(["a", "b"], t0)] == ["a", "b"]
        # No thread needed: SKIP LOCKED never waits for the first worker's open claim.
        with second.transaction() as txn_2:
            assert [r.key for r in txn_2.claim(["b", "a", "c"], t0)] == ["c"]
    assert leases(postgres_dsn) == {"a": "w1", "b": "w1", "c": "w2"}


def leases(dsn: str) -> dict[str, str]:
    """Return the lease owner of every ``sending`` send."""
    return dict(query(dsn, "SELECT key, lease_owner FROM sends WHERE state = 'sending'"))


def test_a_claim_rolled_back_leaves_the_sends_to_the_other_worker(
    workers: tuple[PostgresLedger, PostgresLedger], t0: datetime
) -> None:
    first, second = workers
    put_in_state(first, make_send("a", t0), SendState.SCHEDULED, t0)
    with pytest.raises(RuntimeError), first.transaction() as txn:
        assert txn.claim(["a"], t0)
        raise RuntimeError("worker 1 fails before its commit")
    with second.transaction() as txn:
        assert [r.key for r in txn.claim(["a"], t0)] == ["a"]


def test_two_workers_claiming_the_same_due_sends_claim_each_once(
    workers: tuple[PostgresLedger, PostgresLedger], t0: datetime
) -> None:
    keys = [f"k{n:03}" for n in range(300)]
    with workers[0].transaction() as txn:
        for key in keys:
            txn.insert_send(make_send(key, t0, user=f"u{key}"))
    start = threading.Barrier(2)

    def claim_all(ledger: PostgresLedger) -> list[str]:
        start.wait()
        claimed: list[str] = []
        while True:
            with ledger.transaction() as txn:
                due = [send.key for send in txn.due_sends(t0, 25)]
                if not due:
                    return claimed
                claimed += [send.key for send in txn.claim(due, t0)]

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(claim_all, workers))
    counts = Counter(results[0] + results[1])
    assert sorted(counts) == keys
    assert set(counts.values()) == {1}


# -- leases ------------------------------------------------------------------------------------

LEASES: list[tuple[str, int, OnDoubt, SendState]] = [
    ("w2", 59, OnDoubt.SKIP, SendState.SENDING),  # another worker's lease still runs
    ("w2", 60, OnDoubt.SKIP, SendState.IN_DOUBT),  # its worker died: in doubt, never resent
    ("w2", 60, OnDoubt.RESEND, SendState.SCHEDULED),  # ... or sent again, where the rule opts in
    ("w1", 1, OnDoubt.SKIP, SendState.IN_DOUBT),  # a worker settles its own at once
]


@pytest.mark.parametrize(("recoverer", "after_s", "on_doubt", "expected"), LEASES)
def test_recover_settles_own_sends_and_expired_leases(
    workers: tuple[PostgresLedger, PostgresLedger],
    t0: datetime,
    recoverer: str,
    after_s: int,
    on_doubt: OnDoubt,
    expected: SendState,
) -> None:
    first, _ = workers  # w1 claims, with the default 60 s lease
    put_in_state(first, make_send("k", t0, on_doubt=on_doubt), SendState.SENDING, t0)
    ledger = next(w for w in workers if w.worker_id == recoverer)
    with ledger.transaction() as txn:
        changed = txn.recover_in_flight(t0 + timedelta(seconds=after_s))
    assert [r.key for r in changed] == ([] if expected is SendState.SENDING else ["k"])
    stored = first.get_send("k")
    assert stored is not None and stored.state is expected


EXPIRES: list[tuple[str, int, SendState]] = [
    ("w2", 59, SendState.SENDING),  # the lease still runs: the claimer may be mid-request
    ("w2", 60, SendState.IN_DOUBT),  # expired: another worker settles it
    ("w1", 30, SendState.SENDING),  # a live worker's own running lease is never touched
]


@pytest.mark.parametrize(("expirer", "after_s", "expected"), EXPIRES)
def test_expire_leases_settles_only_expired_claims(
    workers: tuple[PostgresLedger, PostgresLedger],
    t0: datetime,
    expirer: str,
    after_s: int,
    expected: SendState,
) -> None:
    first, _ = workers  # w1 claims, with the default 60 s lease
    put_in_state(first, make_send("k", t0), SendState.SENDING, t0)
    ledger = next(w for w in workers if w.worker_id == expirer)
    with ledger.transaction() as txn:
        changed = txn.expire_leases(t0 + timedelta(seconds=after_s))
    assert [r.key for r in changed] == ([] if expected is SendState.SENDING else ["k"])
    stored = first.get_send("k")
    assert stored is not None and stored.state is expected


# -- per-user serialisation: cooldowns, caps, cancellations ------------------------------------

HELD_BACK: list[tuple[str, str]] = [
    ("cooldown: 24h", "cooldown"),  # one email of the rule per user per day
    ("", "cap_full"),  # the weekly cap of one promo email per user
]


@pytest.mark.parametrize(("cooldown", "reason"), HELD_BACK)
def test_two_workers_firing_one_users_sends_send_only_one(
    workers: tuple[PostgresLedger, PostgresLedger],
    postgres_dsn: str,
    t0: datetime,
    cooldown: str,
    reason: str,
) -> None:
    first, second = workers
    cap = "" if cooldown else "caps: [{id: weekly, max: 1, per: 7d, categories: [promo]}]"
    rules = parse_rules(
        textwrap.dedent(f"""
        rules:
          - id: cart
            on: cart_abandoned
            {cooldown}
            send: {{template: d-123, category: promo}}
        {cap}
        """)
    ).rule_set()
    insert_both = [make_send("k1", t0), make_send("k2", t0)]
    with first.transaction() as txn:
        for send in insert_both:
            txn.insert_send(send)
    pipeline = Pipeline(second, lambda: rules, RecordingProvider(), lambda: t0)
    with ThreadPoolExecutor(1) as pool, first.transaction() as txn:
        # Worker 1 checks the user's cooldown and caps, and claims k1 ...
        assert txn.last_delivered_at("cart", "u1") is None
        assert txn.delivered_count_since("u1", ["promo"], t0 - timedelta(days=7)) == 0
        assert txn.claim(["k1"], t0)
        # ... while worker 2, deciding the same user, must wait to see that claim.
        firing = run_blocked(postgres_dsn, pool, pipeline.fire_due)
    assert firing.result() == []
    dropped = first.get_send("k2")
    assert dropped is not None
    assert (dropped.state, dropped.reason) == (SendState.CANCELLED, reason)
    assert leases(postgres_dsn) == {"k1": "w1"}


def test_a_cancellation_waits_for_a_send_being_scheduled_for_that_user(
    workers: tuple[PostgresLedger, PostgresLedger], postgres_dsn: str, t0: datetime
) -> None:
    first, second = workers

    def cancel_pending() -> list[str]:
        with second.transaction() as txn:
            pending = [s.key for s in txn.pending_for_user("u1", ["cart"])]
            return txn.cancel_sends(pending, "cancel_on", t0)

    with ThreadPoolExecutor(1) as pool, first.transaction() as txn:
        txn.insert_send(make_send("k1", t0))
        cancelling = run_blocked(postgres_dsn, pool, cancel_pending)
    assert cancelling.result() == ["k1"]
    stored = first.get_send("k1")
    assert stored is not None and stored.state is SendState.CANCELLED


def test_users_locked_in_opposite_orders_is_a_deadlock_to_retry(
    workers: tuple[PostgresLedger, PostgresLedger], postgres_dsn: str
) -> None:
    first, second = workers

    def lock_a_then_b() -> str:
        return outcome(first, ["a", "b"])

    crossing: list[Future[str]] = []
    with ThreadPoolExecutor(1) as pool:
        # Worker 2 holds b; worker 1 takes a and waits for b; worker 2 asking for a closes
        # the cycle. PostgreSQL aborts one of the two; the other goes through.
        mine = outcome(
            second,
            ["b", "a"],
            between=lambda: crossing.append(run_blocked(postgres_dsn, pool, lock_a_then_b)),
        )
        assert sorted([mine, crossing[0].result()]) == ["deadlock", "done"]


def outcome(
    ledger: PostgresLedger, users: list[str], between: Callable[[], None] = lambda: None
) -> str:
    """Lock ``users`` in order in one transaction, calling ``between`` after the first."""
    try:
        with ledger.transaction() as txn:
            txn.pending_for_user(users[0], ["cart"])
            between()
            txn.pending_for_user(users[1], ["cart"])
    except LedgerUnavailableError as exc:
        assert "deadlock" in str(exc)
        return "deadlock"
    return "done"


def test_lock_users_takes_the_locks_in_one_global_order(
    workers: tuple[PostgresLedger, PostgresLedger], postgres_dsn: str
) -> None:
    # Batches that take their users up front in one order every worker follows (by lock key,
    # not as given) cannot deadlock over them: the crossing above becomes a queue. Seen here
    # from outside: a batch waiting at the middle user holds those before it, none after.
    first, second = workers
    users = [f"user-{n}" for n in range(9)]
    by_key = [
        row[0]
        for row in query(
            postgres_dsn, "SELECT u FROM unnest(%s::text[]) AS u ORDER BY hashtext(u)", (users,)
        )
    ]
    low, middle, high = by_key[0], by_key[4], by_key[-1]

    def lock_all() -> str:
        with second.transaction() as txn:
            txn.lock_users(by_key[::-1])
        return "done"

    with ThreadPoolExecutor(1) as pool:
        with first.transaction() as txn:
            txn.pending_for_user(middle, ["cart"])
            waiting = run_blocked(postgres_dsn, pool, lock_all)
            assert (free(postgres_dsn, low), free(postgres_dsn, high)) == (False, True)
        assert waiting.result() == "done"


def free(dsn: str, user_id: str) -> bool:
    """Whether ``user_id``'s lock is free now (taken and let go at once if it is)."""
    rows = query(dsn, "SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))", (LOCK_USER, user_id))
    return bool(rows[0][0])


def test_lock_users_is_idempotent_within_a_transaction(
    ledger: PostgresLedger, postgres_dsn: str
) -> None:
    with ledger.transaction() as txn:
        txn.lock_users(["a", "b"])
        txn.lock_users(["b", "a", "a"])
        held = query(
            postgres_dsn,
            "SELECT count(*) FROM pg_locks JOIN pg_database ON pg_database.oid = database"
            " WHERE datname = current_database() AND locktype = 'advisory' AND granted",
        )
        assert held == [(2,)]


# -- the exclusive lock (one worker per spool) -------------------------------------------------


def test_only_one_ledger_holds_an_exclusive_name_until_it_closes(
    workers: tuple[PostgresLedger, PostgresLedger],
) -> None:
    first, second = workers
    assert first.acquire_exclusive("spool:/var/spool/trigmail/events.jsonl")
    assert first.acquire_exclusive("spool:/var/spool/trigmail/events.jsonl")  # held already
    assert not second.acquire_exclusive("spool:/var/spool/trigmail/events.jsonl")
    assert second.acquire_exclusive("spool:/other.jsonl")
    first.close()
    assert second.acquire_exclusive("spool:/var/spool/trigmail/events.jsonl")


def test_exclusive_lock_does_not_block_the_holders_transactions(
    ledger: PostgresLedger, t0: datetime
) -> None:
    # A user whose lock key equals the spool's must not wait for this process's own lock.
    assert ledger.acquire_exclusive("u1")
    with ledger.transaction() as txn:
        assert txn.last_delivered_at("cart", "u1") is None


# -- errors, connections and secrets -----------------------------------------------------------


def with_password(dsn: str) -> str:
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{PASSWORD}@")


def shown(exc: BaseException, caplog: pytest.LogCaptureFixture) -> str:
    return "".join(traceback.format_exception(exc)) + caplog.text


def test_the_password_never_shows_in_repr_errors_or_logs(
    postgres_dsn: str, caplog: pytest.LogCaptureFixture, t0: datetime
) -> None:
    caplog.set_level(logging.DEBUG)
    with closing(PostgresLedger(with_password(postgres_dsn))) as ledger:
        assert PASSWORD not in repr(ledger)
        assert ":<secret>@" in repr(ledger)
        bad = make_send("k1", t0)
        with pytest.raises(LedgerError) as raised, ledger.transaction() as txn:
            txn.insert_send(replace(bad, step=-1))
    assert PASSWORD not in shown(raised.value, caplog)
    assert ":<secret>@" in str(raised.value)


UNREACHABLE: list[tuple[str, type[LedgerError]]] = [
    # nothing listens on port 1: the server is down
    (f"postgresql://postgres:{PASSWORD}@127.0.0.1:1/trigmail", LedgerUnavailableError),
    # libpq quotes a malformed string back, password included
    (f"host=127.0.0.1 password={PASSWORD} dbname", LedgerError),
]


@pytest.mark.parametrize(("dsn", "error"), UNREACHABLE)
def test_failing_to_open_never_shows_the_password(
    dsn: str, error: type[LedgerError], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(error) as raised:
        PostgresLedger(dsn, connect_timeout_s=2)
    assert PASSWORD not in shown(raised.value, caplog)


def terminate_backends(dsn: str) -> None:
    """Kill every other connection to the test database, as a server restart does."""
    query(
        dsn,
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )


def test_a_connection_lost_mid_transaction_is_unavailable_then_replaced(
    postgres_dsn: str, clock: FakeClock
) -> None:
    with closing(PostgresLedger(postgres_dsn, pool_min=1, pool_max=1, clock=clock)) as ledger:
        with pytest.raises(LedgerUnavailableError), ledger.transaction() as txn:
            txn.set_position("spool", "1")
            terminate_backends(postgres_dsn)
            txn.set_position("spool", "2")
        # The pool checks a connection before handing it out: an idle dead one costs nothing.
        terminate_backends(postgres_dsn)
        with ledger.transaction() as txn:
            assert txn.get_position("spool") is None


def test_a_full_pool_is_unavailable(postgres_dsn: str) -> None:
    ledger = PostgresLedger(postgres_dsn, pool_min=1, pool_max=1, pool_timeout_s=0.1)
    with closing(ledger), ledger.transaction(), ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(ledger.get_meta, "schema_version")
        with pytest.raises(LedgerUnavailableError, match="unavailable"):
            waiting.result()


def test_threads_run_transactions_side_by_side(ledger: PostgresLedger, t0: datetime) -> None:
    with ledger.transaction() as txn, ThreadPoolExecutor(1) as pool:
        txn.insert_send(make_send("k1", t0))
        # Another thread gets a connection of its own and does not see uncommitted work.
        assert pool.submit(ledger.get_send, "k1").result() is None
    assert ledger.get_send("k1") is not None


def test_nul_characters_in_a_dead_letter_are_kept_visible(
    ledger: PostgresLedger, t0: datetime
) -> None:
    with ledger.transaction() as txn:
        txn.add_dead_letter(DeadLetter(t0, "spool", "7", "\x00\x01{", "invalid_json", "no\x00"))
    [letter] = ledger.dead_letters()
    assert (letter.raw, letter.detail) == ("\ufffd\x01{", "no\ufffd")


def test_open_ledger_opens_a_postgres_url_as_this_worker(postgres_dsn: str) -> None:
    opened = open_ledger(postgres_dsn)
    try:
        assert isinstance(opened, PostgresLedger)
        assert opened.worker_id == f"{socket.gethostname()}-{os.getpid()}"
    finally:
        opened.close()


def test_times_come_back_in_utc_whatever_the_session_zone(postgres_dsn: str, t0: datetime) -> None:
    database = postgres_dsn.rsplit("/", 1)[1]
    query(postgres_dsn, f"ALTER DATABASE {database} SET TIME ZONE 'Asia/Tokyo'")
    with closing(PostgresLedger(postgres_dsn)) as ledger:
        put_in_state(ledger, make_send("k", t0), SendState.SENT, t0)
        stored = ledger.get_send("k")
    assert stored is not None
    assert (stored.due_at, stored.claimed_at) == (t0, t0)
    assert stored.due_at.tzinfo is UTC
