"""The ledger contract: every implementation of ``Ledger`` passes these same tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.ledger_helpers import (
    FakeClock,
    insert,
    make_send,
    put_in_state,
    state_of,
)
from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.errors import LedgerError
from trigmail.ledger import PostgresLedger
from trigmail.ledger.base import (
    CancelMark,
    DeadLetter,
    Ledger,
    LedgerTxn,
    SendRecord,
    SendState,
)
from trigmail.rules.model import OnDoubt

# -- inserts, duplicates and round trips -------------------------------------------------------


def test_insert_send_round_trips_every_field(ledger: Ledger, t0: datetime) -> None:
    send = make_send("k1", t0 + timedelta(hours=1))
    insert(ledger, send)
    stored = ledger.get_send("k1")
    assert stored == replace(send, created_at=t0, updated_at=t0)
    assert stored.due_at.tzinfo == UTC
    assert ledger.get_send("missing") is None


def test_times_in_another_zone_come_back_as_the_same_instant_in_utc(
    ledger: Ledger, t0: datetime
) -> None:
    lisbon_summer = timezone(timedelta(hours=1))
    insert(ledger, make_send("k1", t0.astimezone(lisbon_summer)))
    stored = ledger.get_send("k1")
    assert stored is not None
    assert stored.due_at == t0
    assert stored.due_at.utcoffset() == timedelta(0)


def test_naive_datetime_is_refused(ledger: Ledger, t0: datetime) -> None:
    with pytest.raises(ValueError, match="naive"), ledger.transaction() as txn:
        txn.insert_send(make_send("k1", t0.replace(tzinfo=None)))
    assert ledger.get_send("k1") is None


def test_insert_of_a_send_not_scheduled_is_refused(ledger: Ledger, t0: datetime) -> None:
    with pytest.raises(ValueError, match="scheduled"), ledger.transaction() as txn:
        txn.insert_send(replace(make_send("k1", t0), state=SendState.SENT))


def test_duplicate_key_is_a_no_op(ledger: Ledger, t0: datetime) -> None:
    insert(ledger, make_send("k1", t0))
    with ledger.transaction() as txn:
        assert not txn.insert_send(make_send("k1", t0 + timedelta(days=1), user="u2"))
        assert txn.send_exists("k1")
    stored = ledger.get_send("k1")
    assert stored is not None
    assert (stored.user_id, stored.due_at) == ("u1", t0)


def test_duplicate_event_is_a_no_op(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert not txn.seen_event("e1")
        assert txn.mark_seen("e1", t0)
        assert not txn.mark_seen("e1", t0 + timedelta(hours=1))
    with ledger.transaction() as txn:
        assert txn.seen_event("e1")
        assert not txn.mark_seen("e1", t0)


def test_expected_ids_are_marked_as_one_by_one(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert txn.mark_seen("old", t0)
    with ledger.transaction() as txn:
        txn.expect_seen(["old", "new", "twice", "twice", "never"], t0)
        assert not txn.seen_event("new")
        assert not txn.mark_seen("old", t0)
        assert txn.mark_seen("new", t0)
        assert txn.seen_event("new")
        assert txn.mark_seen("twice", t0)
        assert not txn.mark_seen("twice", t0)
        assert txn.mark_seen("unexpected", t0)
        assert not txn.seen_event("never")
    with ledger.transaction() as txn:
        assert [txn.seen_event(e) for e in ("old", "new", "twice", "unexpected")] == [True] * 4
        # Expected but never marked (the batch stopped before its event): not decided.
        assert not txn.seen_event("never")
        assert txn.mark_seen("never", t0)


def test_expected_ids_are_rolled_back_with_the_transaction(ledger: Ledger, t0: datetime) -> None:
    with pytest.raises(RuntimeError), ledger.transaction() as txn:
        txn.expect_seen(["e1", "e2"], t0)
        assert txn.mark_seen("e1", t0)
        raise RuntimeError("the batch failed")
    with ledger.transaction() as txn:
        assert not txn.seen_event("e1")
        txn.expect_seen(["e1"], t0)
        assert txn.mark_seen("e1", t0)


# -- transactions ------------------------------------------------------------------------------


def write_everything(txn: LedgerTxn, t0: datetime) -> None:
    txn.mark_seen("e1", t0)
    txn.insert_send(make_send("k1", t0))
    txn.set_position("spool", "42")
    txn.set_meta("rules_version", "v2")
    txn.log([LogEntry(t0, "e1", "u1", "cart", 0, "k1", Outcome.SCHEDULED, Reason.DELAY)])
    txn.add_dead_letter(DeadLetter(t0, "spool", "7", "{", "invalid_json", "not JSON"))


def test_exception_rolls_back_every_write(ledger: Ledger, t0: datetime) -> None:
    insert(ledger, make_send("old", t0))
    before = ledger.get_send("old")
    with pytest.raises(RuntimeError, match="boom"), ledger.transaction() as txn:
        write_everything(txn, t0)
        txn.claim(["old"], t0)
        raise RuntimeError("boom")
    with ledger.transaction() as txn:
        assert not txn.seen_event("e1")
        assert not txn.send_exists("k1")
        assert txn.get_position("spool") is None
        assert txn.due_sends(t0, 10) == [before]
    assert state_of(ledger, "old") == SendState.SCHEDULED
    assert ledger.get_meta("rules_version") is None
    assert ledger.decision_log() == []
    assert ledger.dead_letters() == []


def test_normal_exit_commits_every_write(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        write_everything(txn, t0)
    with ledger.transaction() as txn:
        assert txn.seen_event("e1")
        assert txn.send_exists("k1")
        assert txn.get_position("spool") == "42"
    assert ledger.get_meta("rules_version") == "v2"
    assert [entry.key for entry in ledger.decision_log()] == ["k1"]
    assert [letter.position for letter in ledger.dead_letters()] == ["7"]


def test_reads_see_the_transactions_own_writes(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        txn.mark_seen("e1", t0)
        txn.insert_send(make_send("k1", t0))
        txn.set_position("spool", "10")
        assert txn.seen_event("e1")
        assert txn.send_exists("k1")
        assert [s.key for s in txn.pending_for_user("u1", ["cart"])] == ["k1"]
        assert [s.key for s in txn.due_sends(t0, 10)] == ["k1"]
        assert txn.next_due_at() == t0
        assert txn.get_position("spool") == "10"
        txn.claim(["k1"], t0)
        assert txn.last_delivered_at("cart", "u1") == t0
        assert txn.delivered_count_since("u1", ["promo"], t0) == 1
        assert txn.due_sends(t0, 10) == []


def test_transaction_is_unusable_after_it_ends(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        pass
    with pytest.raises(LedgerError):
        txn.mark_seen("e1", t0)


def test_nested_transaction_is_refused(ledger: Ledger) -> None:
    with ledger.transaction(), pytest.raises(LedgerError), ledger.transaction():
        pass


def test_closed_ledger_is_unusable(ledger: Ledger) -> None:
    ledger.close()
    with pytest.raises(LedgerError):
        ledger.get_meta("rules_version")
    ledger.close()  # closing twice is harmless


# -- the state machine -------------------------------------------------------------------------


def test_cancel_moves_only_scheduled_sends(ledger: Ledger, t0: datetime) -> None:
    for key, state in [("a", SendState.SCHEDULED), ("b", SendState.SENDING), ("c", SendState.SENT)]:
        put_in_state(ledger, make_send(key, t0), state, t0)
    later = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        assert txn.cancel_sends(["a", "b", "c", "missing", "a"], "cancel_on", later) == ["a"]
    cancelled = ledger.get_send("a")
    assert cancelled is not None
    assert (cancelled.state, cancelled.reason, cancelled.updated_at) == (
        SendState.CANCELLED,
        "cancel_on",
        later,
    )
    assert [state_of(ledger, k) for k in "bc"] == [SendState.SENDING, SendState.SENT]


def test_claim_skips_sends_not_scheduled(ledger: Ledger, t0: datetime) -> None:
    put_in_state(ledger, make_send("a", t0), SendState.SCHEDULED, t0)
    put_in_state(ledger, make_send("b", t0), SendState.CANCELLED, t0)
    put_in_state(ledger, make_send("c", t0), SendState.SENDING, t0)
    at = t0 + timedelta(seconds=30)
    with ledger.transaction() as txn:
        claimed = txn.claim(["a", "b", "c", "missing"], at)
    assert [(r.key, r.state, r.attempts, r.claimed_at) for r in claimed] == [
        ("a", SendState.SENDING, 1, at)
    ]
    assert ledger.get_send("a") == claimed[0]
    stored_c = ledger.get_send("c")
    assert stored_c is not None
    assert (stored_c.attempts, stored_c.claimed_at) == (1, t0)


Transition = Callable[[LedgerTxn, datetime], object]

TRANSITIONS: list[tuple[str, SendState, Transition, object, SendState]] = [
    # a delivered send is sent, with the provider's message id
    (
        "finish sent",
        SendState.SENDING,
        lambda txn, at: txn.finish(["k"], SendState.SENT, at, message_id="m-1"),
        None,
        SendState.SENT,
    ),
    # a refused send is failed
    (
        "finish failed",
        SendState.SENDING,
        lambda txn, at: txn.finish(["k"], SendState.FAILED, at, error="400"),
        None,
        SendState.FAILED,
    ),
    # a send that may have reached the provider is in doubt
    (
        "finish in doubt",
        SendState.SENDING,
        lambda txn, at: txn.finish(["k"], SendState.IN_DOUBT, at, error="timeout"),
        None,
        SendState.IN_DOUBT,
    ),
    # finish only moves a claimed send
    (
        "finish scheduled",
        SendState.SCHEDULED,
        lambda txn, at: txn.finish(["k"], SendState.SENT, at),
        None,
        SendState.SCHEDULED,
    ),
    # a send that never reached the provider goes back to scheduled
    (
        "retry later",
        SendState.SENDING,
        lambda txn, at: txn.retry_later(["k"], at, "503"),
        None,
        SendState.SCHEDULED,
    ),
    # retry only moves a claimed send
    (
        "retry sent",
        SendState.SENT,
        lambda txn, at: txn.retry_later(["k"], at, "503"),
        None,
        SendState.SENT,
    ),
    # a due send dropped by the engine is cancelled
    (
        "drop scheduled",
        SendState.SCHEDULED,
        lambda txn, at: txn.drop("k", "max_late", at),
        True,
        SendState.CANCELLED,
    ),
    # a claimed send cannot be dropped
    (
        "drop sending",
        SendState.SENDING,
        lambda txn, at: txn.drop("k", "max_late", at),
        False,
        SendState.SENDING,
    ),
    # deferring keeps a send scheduled
    (
        "defer scheduled",
        SendState.SCHEDULED,
        lambda txn, at: txn.defer("k", at),
        True,
        SendState.SCHEDULED,
    ),
    # a cancelled send cannot be deferred
    (
        "defer cancelled",
        SendState.CANCELLED,
        lambda txn, at: txn.defer("k", at),
        False,
        SendState.CANCELLED,
    ),
]


@pytest.mark.parametrize(
    ("start", "action", "returns", "end"),
    [case[1:] for case in TRANSITIONS],
    ids=[case[0] for case in TRANSITIONS],
)
def test_transition(
    ledger: Ledger,
    t0: datetime,
    start: SendState,
    action: Transition,
    returns: object,
    end: SendState,
) -> None:
    put_in_state(ledger, make_send("k", t0), start, t0)
    later = t0 + timedelta(hours=2)
    with ledger.transaction() as txn:
        assert action(txn, later) == returns
    assert state_of(ledger, "k") == end


def test_finish_keeps_message_id_and_error(ledger: Ledger, t0: datetime) -> None:
    put_in_state(ledger, make_send("k", t0), SendState.SENDING, t0)
    at = t0 + timedelta(seconds=3)
    with ledger.transaction() as txn:
        txn.finish(["k"], SendState.SENT, at, message_id="m-1")
    stored = ledger.get_send("k")
    assert stored is not None
    assert (stored.message_id, stored.updated_at, stored.claimed_at) == ("m-1", at, t0)


def test_retry_later_reschedules_and_keeps_the_error(
    ledger: Ledger, t0: datetime, clock: FakeClock
) -> None:
    put_in_state(ledger, make_send("k", t0), SendState.SENDING, t0)
    retry_at = t0 + timedelta(minutes=1)
    clock.now = t0 + timedelta(seconds=2)
    with ledger.transaction() as txn:
        txn.retry_later(["k"], retry_at, "429 rate limited")
        assert txn.next_due_at() == retry_at
        assert [s.key for s in txn.due_sends(retry_at, 10)] == ["k"]
    stored = ledger.get_send("k")
    assert stored is not None
    assert (stored.due_at, stored.last_error, stored.claimed_at, stored.attempts) == (
        retry_at,
        "429 rate limited",
        None,
        1,
    )
    assert stored.updated_at == clock.now


def test_finish_refuses_a_state_that_is_no_outcome(ledger: Ledger, t0: datetime) -> None:
    put_in_state(ledger, make_send("k", t0), SendState.SENDING, t0)
    with pytest.raises(ValueError, match="finish"), ledger.transaction() as txn:
        txn.finish(["k"], SendState.CANCELLED, t0)
    assert state_of(ledger, "k") == SendState.SENDING


def test_recover_in_flight_follows_on_doubt(ledger: Ledger, t0: datetime) -> None:
    put_in_state(ledger, make_send("skip", t0), SendState.SENDING, t0)
    put_in_state(ledger, make_send("resend", t0, on_doubt=OnDoubt.RESEND), SendState.SENDING, t0)
    put_in_state(ledger, make_send("waiting", t0), SendState.SCHEDULED, t0)
    put_in_state(ledger, make_send("done", t0), SendState.SENT, t0)
    at = t0 + timedelta(hours=1)
    with ledger.transaction() as txn:
        changed = txn.recover_in_flight(at)
    assert [(r.key, r.state) for r in changed] == [
        ("resend", SendState.SCHEDULED),
        ("skip", SendState.IN_DOUBT),
    ]
    assert [ledger.get_send(r.key) for r in changed] == changed
    assert all(r.updated_at == at for r in changed)
    assert [state_of(ledger, k) for k in ("waiting", "done")] == [
        SendState.SCHEDULED,
        SendState.SENT,
    ]
    with ledger.transaction() as txn:
        assert txn.recover_in_flight(at) == []
        assert [s.key for s in txn.due_sends(at, 10)] == ["resend", "waiting"]


# -- cooldowns, caps and pending sends ---------------------------------------------------------

COUNTED: list[tuple[SendState, bool]] = [
    (SendState.SCHEDULED, False),  # not claimed yet: holds nothing back
    (SendState.SENDING, True),  # claimed: may reach the provider any moment
    (SendState.SENT, True),  # delivered
    (SendState.IN_DOUBT, True),  # may have been delivered
    (SendState.FAILED, False),  # known never to have been delivered
    (SendState.CANCELLED, False),  # a cancelled send holds nothing back
]


@pytest.mark.parametrize(("state", "counted"), COUNTED)
def test_cooldown_and_caps_count_delivered_states(
    ledger: Ledger, t0: datetime, state: SendState, counted: bool
) -> None:
    put_in_state(ledger, make_send("k", t0), state, t0)
    with ledger.transaction() as txn:
        assert txn.last_delivered_at("cart", "u1") == (t0 if counted else None)
        assert txn.delivered_count_since("u1", ["promo"], t0) == int(counted)


def test_last_delivered_at_is_the_latest_claim_of_that_rule_and_user(
    ledger: Ledger, t0: datetime
) -> None:
    put_in_state(ledger, make_send("a", t0), SendState.SENT, t0)
    put_in_state(ledger, make_send("b", t0), SendState.SENT, t0 + timedelta(hours=3))
    put_in_state(ledger, make_send("other-rule", t0, rule="x"), SendState.SENT, t0 + timedelta(9))
    put_in_state(ledger, make_send("other-user", t0, user="u2"), SendState.SENT, t0 + timedelta(9))
    with ledger.transaction() as txn:
        assert txn.last_delivered_at("cart", "u1") == t0 + timedelta(hours=3)
        assert txn.last_delivered_at("cart", "nobody") is None


CAP_CASES: list[tuple[list[str], timedelta, int]] = [
    (["promo"], timedelta(0), 2),  # both sends carry promo; since is inclusive
    (["news"], timedelta(0), 1),  # only one carries news
    (["promo", "news"], timedelta(0), 2),  # a send with both categories counts once
    (["other"], timedelta(0), 0),  # no send in that category
    ([], timedelta(0), 0),  # no categories: nothing to count
    (["promo"], timedelta(seconds=1), 1),  # the first claim is before since
]


@pytest.mark.parametrize(("categories", "since_after_t0", "expected"), CAP_CASES)
def test_delivered_count_since_counts_per_category(
    ledger: Ledger, t0: datetime, categories: list[str], since_after_t0: timedelta, expected: int
) -> None:
    first = make_send("a", t0, categories=("promo", "news"))
    put_in_state(ledger, first, SendState.SENT, t0)
    put_in_state(ledger, make_send("b", t0), SendState.SENT, t0 + timedelta(seconds=1))
    put_in_state(ledger, make_send("c", t0, user="u2"), SendState.SENT, t0)
    with ledger.transaction() as txn:
        assert txn.delivered_count_since("u1", categories, t0 + since_after_t0) == expected


def test_pending_for_user_returns_scheduled_sends_of_the_given_rules(
    ledger: Ledger, t0: datetime
) -> None:
    insert(
        ledger,
        make_send("late", t0 + timedelta(hours=2)),
        make_send("early", t0 + timedelta(hours=1)),
        make_send("other-rule", t0, rule="onboarding"),
        make_send("other-user", t0, user="u2"),
    )
    put_in_state(ledger, make_send("claimed", t0), SendState.SENDING, t0)
    with ledger.transaction() as txn:
        assert [s.key for s in txn.pending_for_user("u1", ["cart"])] == ["early", "late"]
        both = txn.pending_for_user("u1", {"cart", "onboarding"})
        assert [s.key for s in both] == ["other-rule", "early", "late"]
        assert txn.pending_for_user("u1", []) == []


def test_pending_for_user_orders_sends_due_together_by_key(ledger: Ledger, t0: datetime) -> None:
    insert(ledger, make_send("k-b", t0), make_send("k-a", t0), make_send("k-c", t0))
    with ledger.transaction() as txn:
        assert [s.key for s in txn.pending_for_user("u1", ["cart"])] == ["k-a", "k-b", "k-c"]


# -- the send path -----------------------------------------------------------------------------


def test_due_sends_are_earliest_first_up_to_limit(ledger: Ledger, t0: datetime) -> None:
    insert(
        ledger,
        make_send("c", t0 + timedelta(minutes=2)),
        make_send("a", t0),
        make_send("b", t0 + timedelta(minutes=1)),
        make_send("future", t0 + timedelta(days=1)),
    )
    until = t0 + timedelta(minutes=5)
    with ledger.transaction() as txn:
        assert [s.key for s in txn.due_sends(until, 10)] == ["a", "b", "c"]
        assert [s.key for s in txn.due_sends(until, 2)] == ["a", "b"]
        assert txn.due_sends(until, 0) == []
        assert txn.defer("a", t0 + timedelta(minutes=3))
        assert [s.key for s in txn.due_sends(until, 10)] == ["b", "c", "a"]
        assert txn.next_due_at() == t0 + timedelta(minutes=1)
        txn.drop("b", "max_late", t0)
        assert txn.next_due_at() == t0 + timedelta(minutes=2)


def test_next_due_at_is_none_without_scheduled_sends(ledger: Ledger, t0: datetime) -> None:
    with ledger.transaction() as txn:
        assert txn.next_due_at() is None
    put_in_state(ledger, make_send("k", t0), SendState.SENT, t0)
    with ledger.transaction() as txn:
        assert txn.next_due_at() is None


# -- positions, meta, logs, dead letters -------------------------------------------------------


def test_positions_are_per_source_and_overwritten(ledger: Ledger) -> None:
    with ledger.transaction() as txn:
        txn.set_position("spool", "1")
        txn.set_position("spool", "2")
        txn.set_position("redis", "1700-0")
    with ledger.transaction() as txn:
        assert (txn.get_position("spool"), txn.get_position("redis")) == ("2", "1700-0")
        assert txn.get_position("unknown") is None


def test_meta_is_overwritten(ledger: Ledger) -> None:
    with ledger.transaction() as txn:
        txn.set_meta("rules_version", "a")
    with ledger.transaction() as txn:
        txn.set_meta("rules_version", "b")
    assert ledger.get_meta("rules_version") == "b"
    assert ledger.get_meta("unknown") is None


def test_decision_log_is_newest_first_and_filters_by_event(ledger: Ledger, t0: datetime) -> None:
    entries = [
        LogEntry(t0, "e1", "u1", "cart", 0, "k1", Outcome.SCHEDULED, Reason.DELAY, t0, "1h"),
        LogEntry(t0, "e2", "u1", None, None, None, Outcome.SKIPPED, Reason.NO_RULE),
        LogEntry(t0, "e1", "u1", "tips", 1, "k2", Outcome.SKIPPED, Reason.COOLDOWN),
    ]
    with ledger.transaction() as txn:
        txn.log(entries[:2])
    with ledger.transaction() as txn:
        txn.log(entries[2:])
    assert ledger.decision_log() == entries[::-1]
    assert ledger.decision_log("e1") == [entries[2], entries[0]]
    assert ledger.decision_log(limit=1) == [entries[2]]


@pytest.mark.parametrize(
    "text",
    [
        # what a text stream would take for its own delimiters and escapes (PostgreSQL's COPY)
        "tab\there, newline\nthere, \\N, back\\slash, \r",
        # non-ASCII, and what only JSON would escape
        'ünï \u2028 "quoted" \u00a0 ✓',
    ],
)
def test_decision_log_keeps_any_text_as_it_was(ledger: Ledger, t0: datetime, text: str) -> None:
    entry = LogEntry(t0, text, text, text, 2, text, Outcome.SCHEDULED, Reason.DELAY, t0, text)
    bare = LogEntry(t0, None, None, None, None, None, Outcome.SKIPPED, Reason.NO_RULE, None, "")
    with ledger.transaction() as txn:
        txn.log([entry, bare])
    assert ledger.decision_log() == [bare, entry]


def test_dead_letters_are_newest_first(ledger: Ledger, t0: datetime) -> None:
    letters = [DeadLetter(t0, "spool", str(n), "{", "invalid_json", "not JSON") for n in range(3)]
    with ledger.transaction() as txn:
        for letter in letters:
            txn.add_dead_letter(letter)
    assert ledger.dead_letters() == letters[::-1]
    assert ledger.dead_letters(limit=2) == letters[:0:-1]


def test_status(ledger: Ledger, t0: datetime, clock: FakeClock) -> None:
    insert(ledger, make_send("tips", t0 + timedelta(days=1), rule="tips"))
    states = [SendState.SCHEDULED, SendState.SENT, SendState.IN_DOUBT, SendState.FAILED]
    for minute, state in enumerate(states):
        at = t0 + timedelta(minutes=minute)
        clock.now = at
        put_in_state(ledger, make_send(state.value, at), state, at)
    with ledger.transaction() as txn:
        txn.set_meta("rules_version", "abc")
        txn.add_dead_letter(DeadLetter(t0, "spool", "1", "x", "invalid_json", "not JSON"))
    status = ledger.status(limit=2)
    assert dict(status.counts) == {
        SendState.SCHEDULED: 2,
        SendState.SENDING: 0,
        SendState.SENT: 1,
        SendState.FAILED: 1,
        SendState.CANCELLED: 0,
        SendState.IN_DOUBT: 1,
    }
    assert status.by_rule["tips"][SendState.SCHEDULED] == 1
    assert status.by_rule["cart"][SendState.SCHEDULED] == 1
    assert status.by_rule["cart"][SendState.CANCELLED] == 0
    assert [s.key for s in status.next_due] == ["scheduled", "tips"]
    assert [s.key for s in status.in_doubt] == ["in_doubt"]
    assert [s.key for s in status.failed] == ["failed"]
    assert [s.key for s in status.recent] == ["failed", "in_doubt"]
    assert (status.dead_letters, status.rules_version) == (1, "abc")


def test_count_sends_says_what_status_counts_for_the_states_asked(
    ledger: Ledger, t0: datetime
) -> None:
    insert(ledger, make_send("s1", t0), make_send("s2", t0), make_send("s3", t0, user="u2"))
    for state in (SendState.IN_DOUBT, SendState.IN_DOUBT, SendState.SENT, SendState.CANCELLED):
        put_in_state(ledger, make_send(f"{state.value}-{t0.minute}", t0), state, t0)
        t0 += timedelta(minutes=1)
    asked = (SendState.SCHEDULED, SendState.IN_DOUBT)
    assert ledger.count_sends(asked) == {SendState.SCHEDULED: 3, SendState.IN_DOUBT: 2}
    counts = ledger.status(limit=0).counts
    assert ledger.count_sends(list(SendState)) == {state: counts[state] for state in SendState}
    assert ledger.count_sends(()) == {}


def test_a_payload_round_trips_whatever_its_data(ledger: Ledger, t0: datetime) -> None:
    # The SQL ledgers store the text ingest encoded, not a second encoding of the payload.
    data = {
        "name": 'Zoë "the" \\ \u2028 ✓',
        "nested": {"list": [1, -2.5, None, True, {"deep": []}], "empty": {}},
        "big": 2**62,
        "tiny": 1e-300,
    }
    send = make_send("odd", t0)
    send = replace(send, payload=replace(send.payload, data=data, variant="b"))
    insert(ledger, send)
    stored = ledger.get_send("odd")
    assert stored is not None
    assert stored.payload == send.payload


def test_status_counts_the_variants_of_an_ab_split(ledger: Ledger, t0: datetime) -> None:
    def variant_send(key: str, variant: str | None) -> SendRecord:
        send = make_send(key, t0, rule="promo" if variant else "cart")
        return replace(send, payload=replace(send.payload, variant=variant))

    insert(ledger, variant_send("a1", "a"), variant_send("a2", "a"), variant_send("b1", "b"))
    put_in_state(ledger, variant_send("b2", "b"), SendState.SENT, t0)
    insert(ledger, variant_send("plain", None))
    # the variant round-trips in the payload
    stored = ledger.get_send("b2")
    assert stored is not None and stored.payload.variant == "b"
    status = ledger.status()
    by_variant = {
        rule: {variant: {s: n for s, n in counts.items() if n} for variant, counts in v.items()}
        for rule, v in status.by_variant.items()
    }
    assert by_variant == {
        "promo": {
            "a": {SendState.SCHEDULED: 2},
            "b": {SendState.SCHEDULED: 1, SendState.SENT: 1},
        }
    }


def test_status_of_an_empty_ledger(ledger: Ledger) -> None:
    status = ledger.status()
    assert set(status.counts) == set(SendState)
    assert sum(status.counts.values()) == 0
    assert (status.by_rule, status.dead_letters, status.rules_version) == ({}, 0, None)


# -- pruning -----------------------------------------------------------------------------------


def test_prune_deletes_old_finished_rows_and_keeps_pending_sends(
    ledger: Ledger, t0: datetime
) -> None:
    old, cutoff, new = t0, t0 + timedelta(days=30), t0 + timedelta(days=31)
    for state in SendState:
        put_in_state(ledger, make_send(f"old-{state.value}", old), state, old)
    put_in_state(ledger, make_send("new-sent", new), SendState.SENT, new)
    with ledger.transaction() as txn:
        for at, name in [(old, "old"), (new, "new")]:
            txn.mark_seen(f"evt-{name}", at)
            txn.log([LogEntry(at, name, "u1", None, None, None, Outcome.SKIPPED, Reason.NO_RULE)])
            txn.add_dead_letter(DeadLetter(at, "spool", name, "{", "invalid_json", "not JSON"))
    removed = ledger.prune(cutoff)
    assert removed == 4 + 3  # four finished sends; a seen id, a log line, a dead letter
    with ledger.transaction() as txn:
        kept = [s.value for s in SendState if txn.send_exists(f"old-{s.value}")]
        assert kept == ["scheduled", "sending"]
        assert txn.send_exists("new-sent")
        assert (txn.seen_event("evt-old"), txn.seen_event("evt-new")) == (False, True)
        assert txn.delivered_count_since("u1", ["promo"], old) == 2  # sending and new-sent
    assert [entry.event_id for entry in ledger.decision_log()] == ["new"]
    assert [letter.position for letter in ledger.dead_letters()] == ["new"]
    assert ledger.prune(cutoff) == 0


def test_only_a_shared_ledger_expires_leases(ledger: Ledger, t0: datetime) -> None:
    # One process (memory, SQLite) settles its own sends at start and has no leases; a shared
    # ledger (PostgreSQL) settles a claim whose lease ran out (its worker died).
    shared = isinstance(ledger, PostgresLedger)
    put_in_state(ledger, make_send("k", t0), SendState.SENDING, t0)
    with ledger.transaction() as txn:
        assert [r.key for r in txn.expire_leases(t0 + timedelta(days=1))] == (
            ["k"] if shared else []
        )
    stored = ledger.get_send("k")
    assert stored is not None
    assert stored.state is (SendState.IN_DOUBT if shared else SendState.SENDING)


def test_cancel_marks_are_kept_per_user_in_source_order_and_pruned(
    ledger: Ledger, t0: datetime
) -> None:
    later = t0 + timedelta(days=31)
    with ledger.transaction() as txn:
        txn.add_cancel_mark(CancelMark("u1", "0002", "order_completed", "o2", {"p.c": "c2"}, t0))
        txn.add_cancel_mark(CancelMark("u1", "0001", "order_completed", "o1", {}, later))
        txn.add_cancel_mark(CancelMark("u2", "0003", "order_completed", "o3", {}, later))
        # The same entry decided twice (a redelivery) keeps the first mark.
        txn.add_cancel_mark(CancelMark("u1", "0002", "order_completed", "oX", {}, later))
    with ledger.transaction() as txn:
        after = txn.cancel_marks_after("u1", "0001")
        assert [(m.event_id, dict(m.values)) for m in after] == [("o2", {"p.c": "c2"})]
        assert [m.event_id for m in txn.cancel_marks_after("u1", "0000")] == ["o1", "o2"]
        assert txn.cancel_marks_after("u1", "0002") == []
    assert ledger.prune(t0 + timedelta(days=30)) == 1
    with ledger.transaction() as txn:
        assert [m.event_id for m in txn.cancel_marks_after("u1", "0000")] == ["o1"]
