"""What SQLite and PostgreSQL do each their own way, as data: a :class:`Dialect`, and the
statements of :class:`~trigmail.ledger.sql.txn.SqlTxn` written in it.

The statements are written once, with ``?`` parameters and the dialect's fragments, so each
database runs the same reads and writes in its own words.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from trigmail.ledger.migrations import UNSCHEDULED
from trigmail.ledger.rows import RowReader
from trigmail.ledger.semantics import DELIVERED_SQL, FINISHED_SQL
from trigmail.sends import SendState

# One encoder for every value: json.dumps with options builds a new one per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def json_text(value: Any) -> str:
    """Return ``value`` as compact JSON text."""
    if type(value) is dict and not value:
        return "{}"  # most sends' trigger values: setting the encoder up costs more than this
    return _ENCODER.encode(value)


@dataclass(frozen=True)
class Dialect:
    """What one database does its own way; statements are written with ``?`` parameters.

    The defaults are those of a database with no types of its own for JSON and for lists, and
    no locks beyond its transactions'.

    Attributes:
        time: an aware datetime to its stored form.
        keys: a list of text to one parameter that :attr:`in_list` expands.
        rows: decodes rows into records.
        in_list: ``{column}`` is in the list given as one parameter.
        begin_write: starts a transaction that writes (and serialises what it must).
        begin_read: starts a transaction that only reads.
        delivered_count: the count behind ``delivered_count_since`` (user, since, categories);
            ``{delivered}`` stands for the delivered states.
        placeholder: how the driver marks a parameter (``?``, ``%s``).
        document: a JSON value to the form of a JSON column (by default, JSON text).
        encoded: JSON text already encoded to the form of a JSON column (by default, itself).
        text: diagnostic text to a storable form (PostgreSQL's ``text`` refuses NUL).
        user_index: a planner hint naming the index of a user's sends, after ``FROM sends``.
        due_index: a planner hint naming the index of scheduled sends in due order, after
            ``FROM sends``.
        key_state: how an update that finds sends by key tests their state (SQLite's ``+state``
            keeps its planner on the primary key rather than the state index).
        categories_column: whether ``sends`` stores its categories as a column (an array).
        end_lease: what a settled send's update also sets (PostgreSQL's lease columns).
        drop_lease: what a send scheduled again also sets.
        for_update: what locks the rows a read-then-write reads.
        inserted: what makes an insert of a send say whether it inserted (a returned row);
            empty where the driver's row count says it, cheaper.
        payload_variant: the A/B variant kept in a send's payload (``NULL`` without one).
        appended_before: how pruning finds the rows older than the cutoff (one parameter) in a
            table rows are appended to in time order; ``{table}`` and ``{column}`` name them.
        state_counts: the count of sends by rule and state (``rule_id, state, n``).
    """

    time: Callable[[datetime], Any]
    keys: Callable[[list[str]], Any]
    rows: RowReader
    in_list: str
    begin_write: str
    begin_read: str
    delivered_count: str
    placeholder: str = "?"
    document: Callable[[Any], Any] = json_text
    encoded: Callable[[str], Any] = str
    text: Callable[[str], str] = str
    user_index: str = ""
    due_index: str = ""
    key_state: str = "state"
    categories_column: bool = False
    end_lease: str = ""
    drop_lease: str = ""
    for_update: str = ""
    inserted: str = " RETURNING key"
    payload_variant: str = "json_extract(payload, '$.variant')"
    appended_before: str = "{column} < ?"
    state_counts: str = "SELECT rule_id, state, COUNT(*) AS n FROM sends GROUP BY rule_id, state"


_SEND_COLUMNS = (
    "key, rule_id, step, user_id, email, event_id, due_at, payload, on_doubt, rules_version,"
    " state, cancel_match, attempts, message_id, last_error, reason, created_at, updated_at,"
    " claimed_at"
)


def _status_counts(d: Dialect) -> tuple[str, dict[SendState, str], str]:
    """The counts of status: by rule and state; of one state (the gauges); by A/B variant."""
    # One state's count read from an index: the scheduled sends' partial index, or the state
    # index, which holds the sends other than scheduled alone (SQLite schema v11). The state
    # is written out, not bound: a planner uses a partial index only for a predicate it reads.
    count_in = {
        state: (
            f"SELECT COUNT(*) FROM sends{d.due_index} WHERE state = 'scheduled'"
            if state is SendState.SCHEDULED
            else f"SELECT COUNT(*) FROM sends WHERE state = '{state.value}' AND {UNSCHEDULED}"
        )
        for state in SendState
    }
    variant = d.payload_variant
    by_variant = (
        f"SELECT rule_id, {variant} AS variant, state, COUNT(*) AS n FROM sends"
        f" WHERE {variant} IS NOT NULL GROUP BY rule_id, {variant}, state"
    )
    return d.state_counts, count_in, by_variant


def _users_at_once(d: Dialect) -> tuple[str, str]:
    """The reads of a batch's users at once (:mod:`trigmail.ledger.sql.users`): their
    scheduled sends, and their last delivery of each rule; the users are one parameter."""
    users = d.in_list.format(column="user_id").replace("?", d.placeholder)
    scheduled = f"SELECT * FROM sends{d.user_index} WHERE {users} AND state = 'scheduled'"
    delivered = (
        f"SELECT rule_id, user_id, MAX(claimed_at) AS at FROM sends{d.user_index}"
        f" WHERE {users} AND state IN {DELIVERED_SQL} GROUP BY rule_id, user_id"
    )
    return scheduled, delivered


def _first_copy(d: Dialect) -> tuple[str, str, str, str]:
    """What an event's first copy changes when a later copy was decided first (see
    :mod:`trigmail.copies`): a waiting send's trigger values, a cancel undone, the event's
    cancel marks moved back; and the reads of a user's cancelled sends."""
    rematch = "UPDATE sends SET cancel_match = ? WHERE key = ? AND state = 'scheduled'"
    restore = (
        "UPDATE sends SET state = 'scheduled', reason = NULL, updated_at = ?"
        " WHERE key = ? AND state = 'cancelled' RETURNING *"
    )
    move_mark = "UPDATE cancel_marks SET ord = ? WHERE user_id = ? AND event_id = ? AND ord > ?"
    cancelled = (
        f"SELECT * FROM sends{d.user_index} WHERE user_id = ? AND state = 'cancelled'"
        f" AND {d.in_list.format(column='rule_id')} ORDER BY due_at, key"
    )
    return rematch, restore, move_mark, cancelled


class Statements:
    """Every statement of :class:`SqlTxn`, in one dialect."""

    def __init__(self, d: Dialect) -> None:
        p = d.placeholder

        def sql(text: str) -> str:
            # The backends name the state sets as {delivered} and {finished}.
            text = text.replace("{delivered}", DELIVERED_SQL).replace("{finished}", FINISHED_SQL)
            return text.replace("?", p)

        keys = d.in_list.format(column="key")
        send_columns = _SEND_COLUMNS + (", categories" if d.categories_column else "")
        send_values = ", ".join(["?"] * (send_columns.count(",") + 1))
        self.seen_event = sql("SELECT 1 FROM seen_events WHERE event_id = ?")
        self.send_exists = sql("SELECT 1 FROM sends WHERE key = ?")
        self.sends_among = sql(f"SELECT key FROM sends WHERE {keys}")
        # MAX ignores an unclaimed send anyway; saying so lets SQLite use its partial index of
        # the claimed sends (schema v8).
        self.last_delivered = sql(
            "SELECT MAX(claimed_at) FROM sends WHERE rule_id = ? AND user_id = ?"
            " AND state IN {delivered} AND claimed_at IS NOT NULL"
        )
        self.pending_for_user = sql(
            f"SELECT * FROM sends{d.user_index} WHERE user_id = ? AND state = 'scheduled'"
            f" AND {d.in_list.format(column='rule_id')} ORDER BY due_at, key"
        )
        self.scheduled_of, self.delivered_of = _users_at_once(d)
        self.delivered_count = sql(d.delivered_count)
        self.cancel_marks_after = sql(
            "SELECT * FROM cancel_marks WHERE user_id = ? AND ord > ? ORDER BY ord"
        )
        self.add_cancel_mark = sql(
            "INSERT INTO cancel_marks (user_id, ord, event, event_id, vals, at)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id, ord) DO NOTHING"
        )
        self.mark_seen = sql(
            "INSERT INTO seen_events (event_id, seen_at) VALUES (?, ?)"
            " ON CONFLICT (event_id) DO NOTHING"
        )
        self.insert_send = sql(
            f"INSERT INTO sends ({send_columns}) VALUES ({send_values})"
            f" ON CONFLICT (key) DO NOTHING{d.inserted}"
        )
        # Kept sends, written together (the count of rows inserted says whether all were).
        self.insert_sends = sql(
            f"INSERT INTO sends ({send_columns}) VALUES ({send_values})"
            " ON CONFLICT (key) DO NOTHING"
        )
        self.cancel_sends = sql(
            "UPDATE sends SET state = 'cancelled', reason = ?, updated_at = ?"
            f" WHERE {keys} AND {d.key_state} = 'scheduled' RETURNING key"
        )
        self.insert_log = sql(
            "INSERT INTO decision_log (at, event_id, user_id, rule, step, key, outcome, reason,"
            " due_at, detail) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.add_dead_letter = sql(
            "INSERT INTO dead_letters (at, source, position, raw, reason, detail)"
            " VALUES (?, ?, ?, ?, ?, ?)"
        )
        self.get_position = sql("SELECT position FROM positions WHERE source = ?")
        self.set_position = sql(
            "INSERT INTO positions (source, position, updated_at) VALUES (?, ?, ?)"
            " ON CONFLICT (source) DO UPDATE"
            " SET position = excluded.position, updated_at = excluded.updated_at"
        )
        self.due_sends = sql(
            f"SELECT * FROM sends{d.due_index} WHERE state = 'scheduled' AND due_at <= ?"
            " ORDER BY due_at, key LIMIT ?"
        )
        self.next_due = sql(
            f"SELECT * FROM sends{d.due_index} WHERE state = 'scheduled'"
            " ORDER BY due_at, key LIMIT ?"
        )
        self.next_due_at = f"SELECT MIN(due_at) FROM sends{d.due_index} WHERE state = 'scheduled'"
        self.claim = sql(
            "UPDATE sends SET state = 'sending', attempts = attempts + 1, claimed_at = ?,"
            f" updated_at = ? WHERE {keys} AND {d.key_state} = 'scheduled' RETURNING *"
        )
        # The rows of sends about to be claimed, and their claims decided from them, written.
        self.sends_of = sql(f"SELECT * FROM sends WHERE {keys}")
        self.write_claims = sql(
            "UPDATE sends SET state = 'sending', attempts = attempts + 1, claimed_at = ?,"
            f" updated_at = ? WHERE {keys} AND {d.key_state} = 'scheduled'"
        )
        self.finish = sql(
            "UPDATE sends SET state = ?, updated_at = ?, message_id = COALESCE(?, message_id),"
            f" last_error = COALESCE(?, last_error) WHERE {keys} AND {d.key_state} = 'sending'"
        )
        self.retry_later = sql(
            "UPDATE sends SET state = 'scheduled', due_at = ?, last_error = ?,"
            f" claimed_at = NULL{d.drop_lease}, updated_at = ?"
            f" WHERE {keys} AND {d.key_state} = 'sending'"
        )
        self.drop = sql(
            "UPDATE sends SET state = 'cancelled', reason = ?, updated_at = ?"
            " WHERE key = ? AND state = 'scheduled'"
        )
        self.defer = sql(
            "UPDATE sends SET due_at = ?, updated_at = ? WHERE key = ? AND state = 'scheduled'"
        )
        self.rematch, self.restore, self.move_cancel_mark, self.cancelled_for_user = (
            sql(text) for text in _first_copy(d)
        )
        self.in_state = sql(f"SELECT * FROM sends WHERE key = ? AND state = ?{d.for_update}")
        # Reads of sends in a state other than scheduled say so, for SQLite's partial index of
        # them (schema v11); the same rows either way.
        self.sending = (
            f"SELECT * FROM sends WHERE state = 'sending' AND {UNSCHEDULED}{d.for_update}"
        )
        # Writes back a send the shared semantics settled (recovery, resolution).
        self.settle = sql(
            "UPDATE sends SET state = ?, due_at = ?, claimed_at = ?, last_error = ?,"
            f" updated_at = ?{d.end_lease} WHERE key = ? AND state = ?"
        )
        self.set_meta = sql(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value"
        )
        self.get_send = sql("SELECT * FROM sends WHERE key = ?")
        self.get_meta = sql("SELECT value FROM meta WHERE name = ?")
        self.dead_letters = sql("SELECT * FROM dead_letters ORDER BY id DESC LIMIT ?")
        self.dead_count = "SELECT COUNT(*) FROM dead_letters"
        self.log_newest = sql("SELECT * FROM decision_log ORDER BY id DESC LIMIT ?")
        self.log_of_event = sql(
            "SELECT * FROM decision_log WHERE event_id = ? ORDER BY id DESC LIMIT ?"
        )
        self.counts, self.count_in, self.variant_counts = _status_counts(d)
        self.latest = sql("SELECT * FROM sends ORDER BY updated_at DESC, key LIMIT ?")
        self.latest_in = sql(
            f"SELECT * FROM sends WHERE state = ? AND {UNSCHEDULED}"
            " ORDER BY updated_at DESC, key LIMIT ?"
        )
        self.prune = tuple(
            sql(text)
            for text in (
                "DELETE FROM sends WHERE updated_at < ? AND state IN {finished}",
                "DELETE FROM seen_events WHERE "
                + d.appended_before.format(table="seen_events", column="seen_at"),
                "DELETE FROM decision_log WHERE "
                + d.appended_before.format(table="decision_log", column="at"),
                "DELETE FROM dead_letters WHERE at < ?",
                "DELETE FROM cancel_marks WHERE at < ?",
            )
        )
