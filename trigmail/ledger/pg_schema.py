"""The PostgreSQL ledger's schema: ordered migrations, applied under a lock when a ledger opens.

Migration ``n`` (1-based) takes the schema from version ``n - 1`` to ``n``; the version reached is
kept as ``schema_version`` in the ``meta`` table, as in the SQLite ledger. Migrations only ever
get appended. The whole upgrade is one transaction that first takes a transaction-level
advisory lock, so workers starting together apply each migration once: the second waits, then
finds the schema current.

Times are ``timestamptz`` (microseconds, like SQLite's integers); payloads are ``jsonb``. Keys
and rule ids use the ``C`` collation so ``ORDER BY key`` is the code-point order of the memory
and SQLite ledgers whatever the database's locale.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import psycopg

from trigmail.errors import LedgerError

logger = logging.getLogger(__name__)

SCHEMA_VERSION_KEY: Final = "schema_version"

# Advisory locks use the two-key form (namespace, hashtext(name)) so trigmail's locks can never
# collide with each other, nor with an application's one-key locks on the same database: a
# user's lock equal to the spool lock this process holds would block its own transactions.
LOCK_SCHEMA: Final = 0x746D0001
LOCK_USER: Final = 0x746D0002
LOCK_EXCLUSIVE: Final = 0x746D0003

_V1_INITIAL: Final = (
    "CREATE TABLE meta (name text PRIMARY KEY, value text NOT NULL)",
    """
    CREATE TABLE sends (
        key text COLLATE "C" PRIMARY KEY,
        rule_id text COLLATE "C" NOT NULL,
        step integer NOT NULL CHECK (step >= 0),
        user_id text NOT NULL,
        email text NOT NULL,
        event_id text NOT NULL,
        due_at timestamptz NOT NULL,
        payload jsonb NOT NULL,
        -- the payload's categories, as an array caps can test with && (overlap)
        categories text[] NOT NULL DEFAULT '{}',
        on_doubt text NOT NULL CHECK (on_doubt IN ('skip', 'resend')),
        rules_version text NOT NULL,
        state text NOT NULL CHECK (
            state IN ('scheduled', 'sending', 'sent', 'failed', 'cancelled', 'in_doubt')
        ),
        cancel_match jsonb NOT NULL DEFAULT '{}',
        attempts integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        message_id text,
        last_error text,
        reason text,
        created_at timestamptz NOT NULL,
        updated_at timestamptz NOT NULL,
        claimed_at timestamptz,
        -- which worker claimed the send, and until when it vouches for it
        lease_owner text,
        lease_until timestamptz,
        CHECK (state IN ('scheduled', 'cancelled') OR claimed_at IS NOT NULL)
    )
    """,
    # Partial: the send path only ever looks for scheduled sends, a small part of the table.
    "CREATE INDEX sends_scheduled_by_due ON sends (due_at, key) WHERE state = 'scheduled'",
    "CREATE INDEX sends_by_user_state ON sends (user_id, state)",
    "CREATE INDEX sends_by_rule_user_claimed ON sends (rule_id, user_id, claimed_at)",
    "CREATE INDEX sends_by_updated ON sends (updated_at)",
    "CREATE INDEX sends_sending_by_lease ON sends (lease_until) WHERE state = 'sending'",
    "CREATE TABLE seen_events (event_id text PRIMARY KEY, seen_at timestamptz NOT NULL)",
    "CREATE INDEX seen_events_by_seen_at ON seen_events (seen_at)",
    """
    CREATE TABLE positions (
        source text PRIMARY KEY, position text NOT NULL, updated_at timestamptz NOT NULL
    )
    """,
    """
    CREATE TABLE decision_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL,
        event_id text,
        user_id text,
        rule text,
        step integer,
        key text,
        outcome text NOT NULL,
        reason text NOT NULL,
        due_at timestamptz,
        detail text NOT NULL
    )
    """,
    "CREATE INDEX decision_log_by_event ON decision_log (event_id)",
    "CREATE INDEX decision_log_by_at ON decision_log (at)",
    """
    CREATE TABLE dead_letters (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at timestamptz NOT NULL,
        source text NOT NULL,
        position text NOT NULL,
        raw text NOT NULL,
        reason text NOT NULL,
        detail text NOT NULL
    )
    """,
    "CREATE INDEX dead_letters_by_at ON dead_letters (at)",
)

# Each migration is a list of statements, run in order inside the upgrade's transaction.
Migration = Sequence[str]

# Cancel events of a source read out of order (several workers on a Redis group), so a trigger
# decided after its cancel still finds it (trigmail.ledger.base.CancelMark).
_V2_CANCEL_MARKS: Final = (
    """
    CREATE TABLE cancel_marks (
        user_id text NOT NULL,
        ord text NOT NULL,
        event text NOT NULL,
        event_id text NOT NULL,
        vals text NOT NULL,
        at timestamptz NOT NULL,
        PRIMARY KEY (user_id, ord)
    )
    """,
    "CREATE INDEX cancel_marks_by_at ON cancel_marks (at)",
)

# `trigmail explain USER` reads one user's decisions in time order; without this index it
# scanned the whole log (millions of rows) for a handful. Plain CREATE INDEX: CONCURRENTLY
# cannot run inside the upgrade's transaction, and writes wait only while it is built.
_V3_DECISION_LOG_BY_USER: Final = (
    "CREATE INDEX decision_log_by_user_at ON decision_log (user_id, at)",
)

# SendGrid's Event Webhook: each event once (by sg_event_id), found by the send's key, pruned by
# when it came; the sends on_doubt: verify sent again (once each); and on_doubt may say verify.
_V4_DELIVERY_EVENTS: Final = (
    """
    CREATE TABLE delivery_events (
        sg_event_id text PRIMARY KEY,
        key text COLLATE "C" NOT NULL,
        rule_id text COLLATE "C" NOT NULL,
        event text NOT NULL,
        at timestamptz NOT NULL,
        message_id text,
        detail text NOT NULL,
        received_at timestamptz NOT NULL
    )
    """,
    "CREATE INDEX delivery_events_by_key ON delivery_events (key, at)",
    "CREATE INDEX delivery_events_by_received ON delivery_events (received_at)",
    """
    CREATE TABLE doubt_resends (key text COLLATE "C" PRIMARY KEY, at timestamptz NOT NULL)
    """,
    "CREATE INDEX doubt_resends_by_at ON doubt_resends (at)",
    "ALTER TABLE sends DROP CONSTRAINT sends_on_doubt_check",
    "ALTER TABLE sends ADD CONSTRAINT sends_on_doubt_check"
    " CHECK (on_doubt IN ('skip', 'resend', 'verify'))",
)

MIGRATIONS: Final[tuple[Migration, ...]] = (
    _V1_INITIAL,
    _V2_CANCEL_MARKS,
    _V3_DECISION_LOG_BY_USER,
    _V4_DELIVERY_EVENTS,
)
LATEST_VERSION: Final = len(MIGRATIONS)


def schema_version(conn: psycopg.Connection[Any]) -> int:
    """Return the schema version of the connected database; 0 for an empty one."""
    has_meta = conn.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()
    if has_meta is None or not has_meta[0]:
        return 0
    row = conn.execute("SELECT value FROM meta WHERE name = %s", (SCHEMA_VERSION_KEY,)).fetchone()
    return 0 if row is None else int(row[0])


def migrate(
    conn: psycopg.Connection[Any],
    migrations: Sequence[Migration] = MIGRATIONS,
) -> int:
    """Bring the schema up to the last of ``migrations`` in one transaction; return its version.

    Args:
        conn: an autocommit connection outside any transaction.
        migrations: the ordered migrations (tests pass a longer list).

    Raises:
        LedgerError: when a newer trigmail wrote the database.
    """
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (LOCK_SCHEMA,))
        version = schema_version(conn)
        latest = len(migrations)
        if version > latest:
            raise LedgerError(
                f"the ledger has schema version {version}, newer than this trigmail knows "
                f"({latest}): upgrade trigmail"
            )
        for number, statements in enumerate(migrations[version:], start=version + 1):
            logger.info("ledger: migrating schema to version %d", number)
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (name, value) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (SCHEMA_VERSION_KEY, str(number)),
            )
    return latest
