"""Read one user's history from a live ledger, read-only, beside a running ``serve``.

Never through :func:`trigmail.ledger.open_ledger`: opening a ledger creates a missing SQLite
file and migrates the schema, and ``explain`` must change nothing. SQLite is opened with
``mode=ro``; PostgreSQL in a ``READ ONLY`` transaction. Both read in one snapshot, so the log
and the sends agree.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Callable, Sequence
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.errors import LedgerError
from trigmail.explain import Delivery, History
from trigmail.ledger.rows import Row, RowReader
from trigmail.records import record
from trigmail.sends import SendRecord

logger = logging.getLogger(__name__)

_POSTGRES_SCHEMES = ("postgresql://", "postgres://")

Query = Callable[[str, Sequence[Any]], Sequence[Row]]


def read_history(
    target: str,
    user_id: str,
    *,
    rule: str | None = None,
    since: datetime | None = None,
    limit: int = 500,
    busy_timeout_s: float = 5.0,
) -> History:
    """Return what the ledger ``target`` holds about ``user_id``.

    Args:
        target: a SQLite path or a ``postgresql://`` URL (the config's ``ledger:``).
        rule: only this rule's decisions and sends.
        since: only decisions at or after this time.
        limit: the newest decisions kept; older ones are left out (``History.truncated``).

    Raises:
        LedgerError: when there is no ledger there, or it cannot be read.
    """
    wanted = _Wanted(user_id, rule, since, limit)
    if target.startswith(_POSTGRES_SCHEMES):
        return _read_postgres(target, wanted)
    return _read_sqlite(Path(target), wanted, busy_timeout_s)


# Newest first, so the limit keeps the latest; (user_id, at) is decision_log_by_user_at.
# Written with SQLite's marks; PostgreSQL's are swapped in.
_LOG = (
    "SELECT * FROM decision_log"
    " WHERE user_id = ? AND (CAST(? AS TEXT) IS NULL OR rule = ?) AND at >= ?"
    " ORDER BY at DESC, id DESC LIMIT ?"
)
_SENDS = "SELECT * FROM sends WHERE user_id = ?"
# Before any decision: --since left out.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@record
class _Wanted:
    user_id: str
    rule: str | None
    since: datetime | None
    limit: int


def _read(
    query: Query,
    reader: RowReader,
    time: Callable[[datetime], Any],
    wanted: _Wanted,
    *,
    delivery_events: bool,
) -> History:
    since = time(wanted.since or _EPOCH)
    rule = wanted.rule
    rows = query(_LOG, [wanted.user_id, rule, rule, since, wanted.limit + 1])
    entries = [_entry(reader, row) for row in rows[: wanted.limit]]
    entries.reverse()
    # Every send of the user, whatever the rule: a full cap names the sends it counted.
    sends = {send.key: send for send in map(reader.send, query(_SENDS, [wanted.user_id]))}
    return History(
        user_id=wanted.user_id,
        entries=tuple(entries),
        sends=sends,
        deliveries=read_deliveries(query, reader, sends) if delivery_events else {},
        truncated=len(rows) > wanted.limit,
    )


# The last delivery event of one send (SendGrid's Event Webhook, docs/webhook.md).
_LAST_DELIVERY = (
    "SELECT event, at, detail FROM delivery_events WHERE key = ?"
    " ORDER BY at DESC, sg_event_id DESC LIMIT 1"
)


def read_deliveries(
    query: Query, reader: RowReader, sends: dict[str, SendRecord]
) -> dict[str, Delivery]:
    """The last delivery event of each send, by key (a ledger older than the webhook has
    none: the caller passes no table then)."""
    found: dict[str, Delivery] = {}
    for key in sends:
        for row in query(_LAST_DELIVERY, [key]):
            at = reader.maybe_time(row["at"])
            if at is not None:
                found[key] = Delivery(row["event"], at, row["detail"] or "")
    return found


def _entry(reader: RowReader, row: Row) -> LogEntry:
    try:
        return reader.log(row)
    except ValueError:
        # An outcome or reason word of a newer trigmail: shown as it is, not a failure.
        return LogEntry(
            at=reader.time(row["at"]),
            event_id=row["event_id"],
            user_id=row["user_id"],
            rule=row["rule"],
            step=row["step"],
            key=row["key"],
            outcome=_known(Outcome, row["outcome"], Outcome.SKIPPED),
            reason=Reason.INTERNAL_ERROR,
            due_at=reader.maybe_time(row["due_at"]),
            detail=f"{row['outcome']}/{row['reason']}: {row['detail']}",
        )


def _known(kind: type[Outcome], value: str, default: Outcome) -> Outcome:
    try:
        return kind(value)
    except ValueError:
        return default


def _read_sqlite(path: Path, wanted: _Wanted, busy_timeout_s: float) -> History:
    # Not trigmail.ledger.sqlite: it loads the migrations and sqlite-utils (a fifth of a
    # second), and explain never migrates.

    if not path.is_file():
        raise LedgerError(
            f"no ledger at {path} (has `trigmail serve` run here? use --ledger or --config)"
        )
    uri = f"{path.resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
    except sqlite3.Error as exc:
        raise LedgerError(f"ledger {path}: {exc}") from exc
    with closing(conn):
        conn.row_factory = sqlite3.Row

        def query(sql: str, params: Sequence[Any]) -> list[Row]:
            rows: list[Row] = conn.execute(sql, tuple(params)).fetchall()
            return rows

        try:
            _check_sqlite(conn, path)
            conn.execute("BEGIN")
            events = _sqlite_has(conn, "delivery_events")
            try:
                return _read(query, _SQLITE_ROWS, _to_us, wanted, delivery_events=events)
            finally:
                conn.execute("ROLLBACK")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {path}: {exc}") from exc


# How the SQLite ledger stores times and JSON (trigmail.ledger.sqlite: epoch microseconds, text).
def _to_us(moment: datetime) -> int:
    return (moment - _EPOCH) // _MICROSECOND


def _from_us(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


_MICROSECOND = timedelta(microseconds=1)
_SQLITE_ROWS = RowReader(time=_from_us, json=json.loads)


def _sqlite_has(conn: sqlite3.Connection, table: str) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    return bool(found[0])


def _check_sqlite(conn: sqlite3.Connection, path: Path) -> None:
    try:
        found = conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'"
            " AND name IN ('decision_log', 'sends')"
        ).fetchone()[0]
    except sqlite3.DatabaseError as exc:
        raise LedgerError(f"{path} is not a trigmail ledger: {exc}") from None
    if found != 2:
        raise LedgerError(f"{path} is not a trigmail ledger (no decision log in it)")


def _read_postgres(dsn: str, wanted: _Wanted) -> History:
    import psycopg
    from psycopg.rows import dict_row

    from trigmail.ledger.pg_rows import POSTGRES, ErrorScrubber
    from trigmail.ledger.semantics import as_utc

    errors = ErrorScrubber(dsn)
    with errors.guard():
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10, row_factory=dict_row)
        with conn:
            # Never writes, whatever a bug here would try; one snapshot for log and sends.
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            found = conn.execute(
                "SELECT to_regclass('decision_log') IS NOT NULL"
                " AND to_regclass('sends') IS NOT NULL AS ok"
            ).fetchone()
            if not found or not found["ok"]:
                raise LedgerError(f"{errors.redacted_dsn} is not a trigmail ledger")

            def query(sql: str, params: Sequence[Any]) -> Sequence[Row]:
                marked = sql.replace("?", "%s")
                return conn.execute(marked, tuple(params)).fetchall()

            events = conn.execute(
                "SELECT to_regclass('delivery_events') IS NOT NULL AS ok"
            ).fetchone()
            try:
                return _read(
                    query,
                    POSTGRES.rows,
                    as_utc,
                    wanted,
                    delivery_events=bool(events and events["ok"]),
                )
            finally:
                conn.execute("ROLLBACK")
