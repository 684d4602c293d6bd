"""Ingest: events per second from a JSONL spool into committed decisions (``synchronous=FULL``).

The real serve loop (``Daemon``: spool → engine → one ledger transaction per batch, with the
source position) runs on ``rules.d`` over a realistic mix of events. Their ``ts`` is a day ahead,
so no send falls due during the run: this measures ingest alone (delivery has its own bench).

Run: .venv/bin/python -m bench.bench_ingest [--events 100000] [--batch-size 500]
     .venv/bin/python -m bench.bench_ingest --events 3000 --batch-size 1   (group commit off)
     .venv/bin/python -m bench.bench_ingest --events 3000 --baseline
     .venv/bin/python -m bench.bench_ingest --events 20000 --postgres postgresql://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import psycopg

from bench import baseline
from bench.bench_scaling import fresh_database
from bench.common import (
    DEFAULT_DEADLINE_S,
    ThreadCpu,
    header,
    make_daemon,
    query,
    rule_store,
    running,
    utc_now,
    wait_until,
    write_spool,
)
from bench.events import event_lines
from trigmail.daemon import Daemon
from trigmail.ledger.postgres import PostgresLedger
from trigmail.providers.recording import RecordingProvider


def _seen(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    rows = query(ledger, "SELECT COUNT(*) FROM seen_events")
    return int(str(rows[0][0]))


def run_trigmail(
    directory: Path, spool: Path, events: int, batch_size: int, cpu: ThreadCpu
) -> float:
    """Serve the spool until every event is decided; return the seconds it took."""
    ledger = directory / "ledger.db"
    daemon = make_daemon(spool, ledger, RecordingProvider(), batch_size=batch_size)
    return _timed(daemon, lambda: _seen(ledger), events, cpu)


def run_postgres(
    admin_dsn: str, spool: Path, events: int, batch_size: int, cpu: ThreadCpu
) -> float:
    """As :func:`run_trigmail`, on a fresh PostgreSQL database (one worker)."""
    with fresh_database(admin_dsn) as url:
        ledger = PostgresLedger(url)
        try:
            daemon = make_daemon(spool, ledger, RecordingProvider(), batch_size=batch_size)
            with psycopg.connect(url, autocommit=True) as conn:

                def seen() -> int:
                    row = conn.execute("SELECT count(*) FROM seen_events").fetchone()
                    return 0 if row is None else int(row[0])

                return _timed(daemon, seen, events, cpu)
        finally:
            ledger.close()


def _timed(daemon: Daemon, seen: Callable[[], int], events: int, cpu: ThreadCpu) -> float:
    started = time.perf_counter()
    with running(daemon, cpu=cpu):
        done = wait_until(lambda: seen() >= events, DEFAULT_DEADLINE_S, poll_s=0.02)
        elapsed_s = time.perf_counter() - started
    if not done:
        raise SystemExit(f"ingest: only {seen()} of {events} events decided in time")
    return elapsed_s


def run_baseline(directory: Path, spool: Path) -> float:
    rules = rule_store().load().rule_set()
    started = time.perf_counter()
    baseline.ingest(spool, directory / "baseline.db", rules)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-size", type=int, default=500, help="events per transaction")
    parser.add_argument("--baseline", action="store_true", help="run the straightforward design")
    parser.add_argument("--postgres", metavar="DSN", help="a PostgreSQL ledger (a fresh database)")
    parser.add_argument(
        "--profile", metavar="FILE", type=Path, help="write a cProfile of the daemon's thread"
    )
    args = parser.parse_args()
    cpu = ThreadCpu(args.profile)
    logging.disable(logging.WARNING)
    header("ingest: spool -> committed decisions, synchronous=FULL")
    with tempfile.TemporaryDirectory(prefix="trigmail-bench-") as temp:
        directory = Path(temp)
        spool = directory / "events.jsonl"
        write_spool(
            spool,
            event_lines(
                args.events, step_s=0.002, start=utc_now() + timedelta(days=1), steady=True
            ),
        )
        if args.baseline:
            design = "baseline: one transaction per event"
            elapsed_s = run_baseline(directory, spool)
        elif args.postgres:
            design = f"trigmail on PostgreSQL, one worker: batch_size={args.batch_size}"
            elapsed_s = run_postgres(args.postgres, spool, args.events, args.batch_size, cpu)
        else:
            design = f"trigmail: batch_size={args.batch_size}"
            elapsed_s = run_trigmail(directory, spool, args.events, args.batch_size, cpu)
    rate = args.events / elapsed_s
    print(f"{design}: {args.events} events in {elapsed_s:.2f} s = {rate:,.0f} events/s")
    if cpu.seconds:
        per_event_us = cpu.seconds / args.events * 1e6
        print(
            f"daemon thread CPU: {cpu.seconds:.2f} s = {per_event_us:.0f} us per event"
            f" = {args.events / cpu.seconds:,.0f} events per CPU second"
        )


if __name__ == "__main__":
    main()
