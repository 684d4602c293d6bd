"""How long ``trigmail explain USER`` takes on a 1,000,000-send ledger (target: under 0.5 s).

Run: .venv/bin/python -m bench.bench_explain [--sends 1000000] [--runs 5] [--postgres DSN]

The ledger is built in the database itself (a recursive CTE in SQLite, ``generate_series`` in
PostgreSQL): 100,000 users with 10 sends each, every send with its two decision-log lines
(scheduled, then sent or cancelled), so 2,000,000 log lines. Figures:

- the read and the words alone, in-process (``read_history`` + ``explain``), for one user, one
  rule of that user, and ``--since``;
- the same read with the ``(user_id, at)`` index of the decision log bypassed, which is what a
  ledger written before that migration costs;
- the whole command as a fresh process (interpreter start-up included).

``--postgres`` takes an admin DSN; a scratch database is created in it and dropped after.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from bench.common import header
from trigmail.explain import explain
from trigmail.explain_ledger import read_history
from trigmail.ledger import open_ledger

TRIGMAIL = Path(sys.executable).with_name("trigmail")
SENDS_PER_USER = 10
# 2026-03-01T00:00:00Z in epoch microseconds; each send one minute after the previous of its user
T0_US = 1_772_323_200_000_000
_RULES = "('welcome','cart-recovery','onboarding','receipt')"

_SQLITE_FILL = f"""
WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < :sends - 1)
INSERT INTO sends (key, rule_id, step, user_id, email, event_id, due_at, payload, on_doubt,
    rules_version, state, cancel_match, attempts, message_id, created_at, updated_at, claimed_at)
SELECT 'k' || i, json_extract('["welcome","cart-recovery","onboarding","receipt"]',
        '$[' || (i % 4) || ']'),
    0, 'u_' || (i / {SENDS_PER_USER}), 'u' || (i / {SENDS_PER_USER}) || '@example.com',
    'evt_' || i, {T0_US} + (i % {SENDS_PER_USER}) * 60000000 + 3600000000,
    '{{"template":"d-x","data":{{}},"categories":["onboarding"],"asm_group":null,' ||
        '"from":null,"reply_to":null}}',
    'skip', 'bench', CASE WHEN i % 7 = 0 THEN 'cancelled' ELSE 'sent' END, '{{}}',
    CASE WHEN i % 7 = 0 THEN 0 ELSE 1 END, CASE WHEN i % 7 = 0 THEN NULL ELSE 'msg-' || i END,
    {T0_US}, {T0_US}, CASE WHEN i % 7 = 0 THEN NULL ELSE {T0_US} + 3600000000 END
FROM n
"""
_SQLITE_LOG = f"""
INSERT INTO decision_log (at, event_id, user_id, rule, step, key, outcome, reason, due_at, detail)
SELECT created_at + (CAST(substr(key, 2) AS INTEGER) % {SENDS_PER_USER}) * 60000000, event_id,
    user_id, rule_id, 0, key, 'scheduled', 'delay', due_at, '' FROM sends
UNION ALL
SELECT due_at, event_id, user_id, rule_id, 0, key,
    CASE state WHEN 'sent' THEN 'sent' ELSE 'cancelled' END,
    CASE state WHEN 'sent' THEN 'delivered' ELSE 'cancel_on' END, due_at,
    CASE state WHEN 'sent' THEN '' ELSE 'by order_completed' END FROM sends
"""

_PG_FILL = f"""
INSERT INTO sends (key, rule_id, step, user_id, email, event_id, due_at, payload, categories,
    on_doubt, rules_version, state, cancel_match, attempts, message_id, created_at, updated_at,
    claimed_at)
SELECT 'k' || i, (ARRAY{_RULES.replace("(", "[").replace(")", "]")})[i %% 4 + 1], 0,
    'u_' || (i / {SENDS_PER_USER}), 'u' || (i / {SENDS_PER_USER}) || '@example.com', 'evt_' || i,
    t0 + (i %% {SENDS_PER_USER}) * interval '1 minute' + interval '1 hour',
    '{{"template":"d-x","data":{{}},"categories":["onboarding"],"asm_group":null,
      "from":null,"reply_to":null}}'::jsonb,
    ARRAY['onboarding'], 'skip', 'bench',
    CASE WHEN i %% 7 = 0 THEN 'cancelled' ELSE 'sent' END, '{{}}'::jsonb,
    CASE WHEN i %% 7 = 0 THEN 0 ELSE 1 END, CASE WHEN i %% 7 = 0 THEN NULL ELSE 'msg-' || i END,
    t0, t0, CASE WHEN i %% 7 = 0 THEN NULL ELSE t0 + interval '1 hour' END
FROM generate_series(0, %(sends)s - 1) AS i, (SELECT timestamptz '2026-03-01T00:00:00Z' AS t0) c

"""
_PG_LOG = f"""
INSERT INTO decision_log (at, event_id, user_id, rule, step, key, outcome, reason, due_at, detail)
SELECT created_at + (substr(key, 2)::int % {SENDS_PER_USER}) * interval '1 minute', event_id,
    user_id, rule_id, 0, key, 'scheduled', 'delay', due_at, '' FROM sends
UNION ALL
SELECT due_at, event_id, user_id, rule_id, 0, key,
    CASE state WHEN 'sent' THEN 'sent' ELSE 'cancelled' END,
    CASE state WHEN 'sent' THEN 'delivered' ELSE 'cancel_on' END, due_at,
    CASE state WHEN 'sent' THEN '' ELSE 'by order_completed' END FROM sends
"""


def build_sqlite(path: Path, sends: int) -> None:
    import sqlite3

    open_ledger(path).close()  # created and migrated
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute(_SQLITE_FILL, {"sends": sends})
        conn.execute(_SQLITE_LOG)
        conn.execute("COMMIT")
        conn.execute("ANALYZE")
    finally:
        conn.close()


def build_postgres(dsn: str, sends: int) -> None:
    import psycopg

    open_ledger(dsn).close()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_PG_FILL, {"sends": sends})
        conn.execute(_PG_LOG)
        conn.execute("ANALYZE")


def median_ms(runs: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def user_of(sends: int) -> str:
    """A user in the middle of the ledger."""
    return f"u_{sends // SENDS_PER_USER // 2}"


def in_process(target: str, user: str, runs: int) -> None:
    def one(**kwargs: object) -> Callable[[], object]:
        return lambda: explain(read_history(target, user, **kwargs))  # type: ignore[arg-type]

    lines = explain(read_history(target, user))
    print(f"  {user}: {len(lines)} decisions")
    print(f"  in-process, the user:          {median_ms(runs, one()):8.1f} ms")
    print(f"  in-process, --rule welcome:    {median_ms(runs, one(rule='welcome')):8.1f} ms")
    since = datetime(2026, 3, 1, 0, 5, tzinfo=UTC)
    print(f"  in-process, --since:           {median_ms(runs, one(since=since)):8.1f} ms")


def unindexed_sqlite(path: Path, user: str, runs: int) -> None:
    """The log query as a ledger without decision_log_by_user_at runs it (a full scan)."""
    import sqlite3

    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        sql = "SELECT * FROM decision_log NOT INDEXED WHERE user_id = ? ORDER BY at DESC LIMIT 501"
        ms = median_ms(min(runs, 3), lambda: conn.execute(sql, (user,)).fetchall())
    finally:
        conn.close()
    print(f"  the log query without the index: {ms:8.1f} ms")


def as_process(target: str, user: str, runs: int) -> None:
    def run() -> None:
        subprocess.run(
            [str(TRIGMAIL), "explain", user, "--ledger", target, "--format", "json"],
            check=True,
            capture_output=True,
        )

    print(f"  trigmail explain (process):    {median_ms(runs, run):8.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--postgres", help="admin DSN: also bench a PostgreSQL ledger")
    args = parser.parse_args()
    header("explain on a large ledger")
    with tempfile.TemporaryDirectory(prefix="trigmail-bench-explain-") as tmp:
        path = Path(tmp) / "ledger.db"
        started = time.perf_counter()
        build_sqlite(path, args.sends)
        print(f"SQLite: {args.sends:,} sends built in {time.perf_counter() - started:.1f} s")
        user = user_of(args.sends)
        in_process(str(path), user, args.runs)
        unindexed_sqlite(path, user, args.runs)
        as_process(str(path), user, args.runs)
    if args.postgres:
        bench_postgres(args.postgres, args.sends, args.runs)


def bench_postgres(admin: str, sends: int, runs: int) -> None:
    import psycopg

    name = f"trigmail_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    dsn = admin.rsplit("/", 1)[0] + f"/{name}"
    try:
        started = time.perf_counter()
        build_postgres(dsn, sends)
        print(f"PostgreSQL: {sends:,} sends built in {time.perf_counter() - started:.1f} s")
        in_process(dsn, user_of(sends), runs)
        as_process(dsn, user_of(sends), runs)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
