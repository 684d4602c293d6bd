"""The SQLite ledger's schema: an ordered list of migrations, applied when a ledger opens.

Migration ``n`` (1-based) takes the schema from version ``n - 1`` to ``n``; the version reached
is kept as ``schema_version`` in the ``meta`` table. Migrations only ever get appended.

Times are integer microseconds since the Unix epoch (UTC), so ``ORDER BY due_at`` is exact.
Tables are STRICT, so a value of the wrong type is refused instead of silently stored.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from trigmail.errors import LedgerError

if TYPE_CHECKING:
    from sqlite_utils import Database

logger = logging.getLogger(__name__)

SCHEMA_VERSION_KEY: Final = "schema_version"

# The sends that ``sends_by_state_rule`` holds (v11); a read that wants SQLite to use it says so.
UNSCHEDULED: Final = "state <> 'scheduled'"

# sqlite-utils cannot declare CHECK constraints, so this one table is written out; the CHECKs
# are the last line of defence for the state machine and must never be silently bypassed.
_CREATE_SENDS = """
CREATE TABLE sends (
    key TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    step INTEGER NOT NULL CHECK (step >= 0),
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    event_id TEXT NOT NULL,
    due_at INTEGER NOT NULL,
    payload TEXT NOT NULL CHECK (json_valid(payload)),
    on_doubt TEXT NOT NULL CHECK (on_doubt IN ('skip', 'resend')),
    rules_version TEXT NOT NULL,
    state TEXT NOT NULL CHECK (
        state IN ('scheduled', 'sending', 'sent', 'failed', 'cancelled', 'in_doubt')
    ),
    cancel_match TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(cancel_match)),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    message_id TEXT,
    last_error TEXT,
    reason TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    claimed_at INTEGER,
    -- a send that left 'scheduled' for the provider always says when it was claimed
    CHECK (state IN ('scheduled', 'cancelled') OR claimed_at IS NOT NULL)
) STRICT
"""


def _v1_initial(db: Database) -> None:
    db.create_table("meta", {"name": str, "value": str}, pk="name", not_null={"value"}, strict=True)
    db.execute(_CREATE_SENDS)
    sends = db.table("sends")
    sends.create_index(["state", "due_at"], "sends_by_state_due")
    sends.create_index(["user_id", "state"], "sends_by_user_state")
    sends.create_index(["rule_id", "user_id", "claimed_at"], "sends_by_rule_user_claimed")
    sends.create_index(["updated_at"], "sends_by_updated")
    # Caps count a user's sends per category: one row per (send, category) of its payload.
    categories = db.create_table(
        "send_categories",
        {"key": str, "category": str},
        pk=("key", "category"),
        not_null={"key", "category"},
        foreign_keys=[("key", "sends", "key")],
        strict=True,
    )
    categories.create_index(["category", "key"], "send_categories_by_category")
    seen = db.create_table(
        "seen_events",
        {"event_id": str, "seen_at": int},
        pk="event_id",
        not_null={"seen_at"},
        strict=True,
    )
    seen.create_index(["seen_at"], "seen_events_by_seen_at")
    db.create_table(
        "positions",
        {"source": str, "position": str, "updated_at": int},
        pk="source",
        not_null={"position", "updated_at"},
        strict=True,
    )
    _create_log_tables(db)


def _create_log_tables(db: Database) -> None:
    log = db.create_table(
        "decision_log",
        {
            "id": int,
            "at": int,
            "event_id": str,
            "user_id": str,
            "rule": str,
            "step": int,
            "key": str,
            "outcome": str,
            "reason": str,
            "due_at": int,
            "detail": str,
        },
        pk="id",
        not_null={"at", "outcome", "reason", "detail"},
        strict=True,
    )
    log.create_index(["event_id"], "decision_log_by_event")
    log.create_index(["at"], "decision_log_by_at")
    dead = db.create_table(
        "dead_letters",
        {
            "id": int,
            "at": int,
            "source": str,
            "position": str,
            "raw": str,
            "reason": str,
            "detail": str,
        },
        pk="id",
        not_null={"at", "source", "position", "raw", "reason", "detail"},
        strict=True,
    )
    dead.create_index(["at"], "dead_letters_by_at")


def _v2_state_rule_index(db: Database) -> None:
    # Counting sends by state and rule (status, and the daemon's gauges every 15 s) scanned the
    # whole table: a second with a million pending, during which the serve loop stood still.
    db.table("sends").create_index(["state", "rule_id"], "sends_by_state_rule")


def _v3_cancel_marks(db: Database) -> None:
    # Cancel events of a source read out of order (several workers on a Redis group), so a
    # trigger decided after its cancel still finds it (trigmail.ledger.base.CancelMark).
    marks = db.create_table(
        "cancel_marks",
        {
            "user_id": str,
            "ord": str,
            "event": str,
            "event_id": str,
            "vals": str,
            "at": int,
        },
        pk=("user_id", "ord"),
        not_null={"event", "event_id", "vals", "at"},
        strict=True,
    )
    marks.create_index(["at"], "cancel_marks_by_at")


def _v4_decision_log_by_user(db: Database) -> None:
    # `trigmail explain USER` reads one user's decisions in time order; without this index it
    # scanned the whole log (millions of rows) for a handful.
    db.table("decision_log").create_index(["user_id", "at"], "decision_log_by_user_at")


def _v5_delivery_events(db: Database) -> None:
    # SendGrid's Event Webhook: each event once (by sg_event_id), found by the send's key, pruned
    # by when it came; the sends on_doubt: verify sent again (once each); and on_doubt may now
    # say verify (docs/webhook.md).
    events = db.create_table(
        "delivery_events",
        {
            "sg_event_id": str,
            "key": str,
            "rule_id": str,
            "event": str,
            "at": int,
            "message_id": str,
            "detail": str,
            "received_at": int,
        },
        pk="sg_event_id",
        not_null={"key", "rule_id", "event", "at", "detail", "received_at"},
        strict=True,
    )
    events.create_index(["key", "at"], "delivery_events_by_key")
    events.create_index(["received_at"], "delivery_events_by_received")
    resends = db.create_table(
        "doubt_resends", {"key": str, "at": int}, pk="key", not_null={"at"}, strict=True
    )
    resends.create_index(["at"], "doubt_resends_by_at")
    _allow_on_doubt_verify(db.conn)


def _allow_on_doubt_verify(conn: sqlite3.Connection) -> None:
    """Widen the ``on_doubt`` CHECK of ``sends`` to take ``verify``.

    SQLite cannot alter a CHECK; rebuilding ``sends`` would trip the foreign key of
    ``send_categories``. Loosening a CHECK changes nothing stored, the case SQLite documents
    editing the schema text for (sqlite.org/lang_altertable.html, "making other kinds of table
    schema changes").
    """
    _edit_sends_checks(
        conn, [("on_doubt IN ('skip', 'resend')", "on_doubt IN ('skip', 'resend', 'verify')")]
    )


def _edit_sends_checks(conn: sqlite3.Connection, edits: list[tuple[str, str]]) -> None:
    """Replace text in the CHECKs of ``sends``: each ``(old, new)`` must say no less than before.

    The bumped ``schema_version`` makes every connection reread the schema.
    """
    version = conn.execute("PRAGMA schema_version").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    try:
        for old, new in edits:
            conn.execute(
                "UPDATE sqlite_master SET sql = replace(sql, ?, ?)"
                " WHERE type = 'table' AND name = 'sends'",
                (old, new),
            )
        conn.execute(f"PRAGMA schema_version = {int(version) + 1}")
    finally:
        conn.execute("PRAGMA writable_schema = OFF")


# The CHECKs of sends that list more than two values, and the same tests as comparisons.
_CHECKS_AS_COMPARISONS: Final = [
    (
        "on_doubt IN ('skip', 'resend', 'verify')",
        "(on_doubt = 'skip' OR on_doubt = 'resend' OR on_doubt = 'verify')",
    ),
    (
        "state IN ('scheduled', 'sending', 'sent', 'failed', 'cancelled', 'in_doubt')",
        "(state = 'scheduled' OR state = 'sending' OR state = 'sent' OR state = 'failed'"
        " OR state = 'cancelled' OR state = 'in_doubt')",
    ),
]


def _v6_checks_as_comparisons(db: Database) -> None:
    # SQLite tests `x IN (a, b, c)` (a list of more than two) by building a temporary table of
    # the list, anew for every row it checks: two per send inserted, more than the row's own
    # insert cost. Comparisons joined by OR accept exactly the same values, with no table.
    _edit_sends_checks(db.conn, _CHECKS_AS_COMPARISONS)


def _v7_scheduled_by_due(db: Database) -> None:
    # The due reads want the scheduled sends alone, in due order: a partial index holds just
    # those, so a send leaving 'scheduled' leaves it, and sent sends never fill it. The other
    # indexes dropped serve no query (EXPLAIN QUERY PLAN, tests/test_ledger_sqlite_schema.py),
    # only pruning, which walks the appended tables in rowid order instead; each cost a b-tree
    # write per row inserted.
    db.execute("DROP INDEX sends_by_state_due")
    db.execute(
        "CREATE INDEX sends_scheduled_by_due ON sends (due_at, key) WHERE state = 'scheduled'"
    )
    for name in ("send_categories_by_category", "seen_events_by_seen_at", "decision_log_by_at"):
        db.execute(f"DROP INDEX {name}")


def _v8_claimed_by_rule_user(db: Database) -> None:
    # The last delivery per rule and user is the one reader of this index, and reads claimed
    # sends alone (a delivered send always has its claim time: the CHECK of sends). A send is
    # ingested scheduled, unclaimed: the partial index leaves it out until its claim, where the
    # full one took a b-tree write per send ingested, in an order as random as the users, so a
    # page of the WAL per send on a large ledger.
    db.execute("DROP INDEX sends_by_rule_user_claimed")
    db.execute(
        "CREATE INDEX sends_by_rule_user_claimed ON sends (rule_id, user_id, claimed_at)"
        " WHERE claimed_at IS NOT NULL"
    )


# A (send, category) of the table that its send's payload does not list, or the other way round.
_CATEGORY_MISMATCH: Final = """
SELECT c.key FROM send_categories AS c LEFT JOIN sends AS s ON s.key = c.key
WHERE s.key IS NULL OR NOT EXISTS (
    SELECT 1 FROM json_each(s.payload, '$.categories') AS p WHERE p.value = c.category)
UNION ALL
SELECT s.key FROM sends AS s, json_each(s.payload, '$.categories') AS p
WHERE NOT EXISTS (SELECT 1 FROM send_categories AS c WHERE c.key = s.key AND c.category = p.value)
LIMIT 1
"""


def _v9_categories_from_payload(db: Database) -> None:
    # Caps read a send's categories from its payload, which has always listed them. The table
    # copying them cost, per send ingested, a statement, two b-tree writes and a foreign-key
    # probe per category (callgrind: 2 % of an event's instructions). A ledger whose table
    # says other than its payloads (written by hand) is left as it is, and refused: dropping
    # the table would change what its caps count.
    mismatch = db.execute(_CATEGORY_MISMATCH).fetchone()
    if mismatch is not None:
        raise LedgerError(
            f"ledger: send {mismatch[0]!r}: its send_categories rows differ from its payload's"
            " categories; make them agree, then start again to migrate to schema version 9"
        )
    db.execute("DROP TABLE send_categories")


def _v10_no_log_by_event(db: Database) -> None:
    # No serve path, command or page reads one event's log lines: only
    # Ledger.decision_log(event_id), which tests call, and which scans the log without it. The
    # index cost a b-tree write per log line, a line or two per event ingested (callgrind: 1.7 %
    # of an event's instructions). `trigmail explain` reads a user's lines, by the user's index.
    db.execute("DROP INDEX decision_log_by_event")


def _v11_state_rule_unscheduled(db: Database) -> None:
    # Every send is ingested scheduled, and no reader of this index wants the scheduled ones:
    # recovery reads the sending sends, the evidence reads the in-doubt ones, status the newest
    # in doubt or failed (each names the predicate, or SQLite would not use a partial index). A
    # send ingested cost a b-tree write here for nothing (callgrind: see docs/architecture.md),
    # and its claim a move where it is now one insert. Status counts the scheduled sends by a
    # table scan (trigmail.ledger.sqlite), as its counts by A/B variant already read every row.
    db.execute("DROP INDEX sends_by_state_rule")
    db.execute(f"CREATE INDEX sends_by_state_rule ON sends (state, rule_id) WHERE {UNSCHEDULED}")


Migration = Callable[["Database"], None]

MIGRATIONS: Final[tuple[Migration, ...]] = (
    _v1_initial,
    _v2_state_rule_index,
    _v3_cancel_marks,
    _v4_decision_log_by_user,
    _v5_delivery_events,
    _v6_checks_as_comparisons,
    _v7_scheduled_by_due,
    _v8_claimed_by_rule_user,
    _v9_categories_from_payload,
    _v10_no_log_by_event,
    _v11_state_rule_unscheduled,
)
LATEST_VERSION: Final = len(MIGRATIONS)


def schema_version(conn: sqlite3.Connection) -> int:
    """Return the schema version of the open database; 0 for an empty one."""
    has_meta = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
    ).fetchone()
    if has_meta is None:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (SCHEMA_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to :data:`LATEST_VERSION` in one transaction; return that version.

    ``conn`` must be in autocommit mode (``isolation_level=None``), outside any transaction.

    Raises:
        LedgerError: when a newer trigmail wrote the database.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = _apply_pending(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return version


def _apply_pending(conn: sqlite3.Connection) -> int:
    version = schema_version(conn)
    if version > LATEST_VERSION:
        raise LedgerError(
            f"the ledger has schema version {version}, newer than this trigmail knows "
            f"({LATEST_VERSION}): upgrade trigmail"
        )
    if version == LATEST_VERSION:
        return version
    # Imported only to migrate: sqlite-utils and pluggy were ~0.06 s of every start (median of
    # 10 starts that open an up-to-date ledger, 0.91 -> 0.85 s).
    from sqlite_utils import Database

    db = Database(conn, recursive_triggers=False, execute_plugins=False)
    for number, step in enumerate(MIGRATIONS[version:], start=version + 1):
        logger.info("ledger: migrating schema to version %d", number)
        step(db)
        conn.execute(
            "INSERT INTO meta (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (SCHEMA_VERSION_KEY, str(number)),
        )
    return LATEST_VERSION
