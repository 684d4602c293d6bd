"""Instructions per ingested event, counted by callgrind: the serve loop's turn on a fixed clock.

``Worker.step`` runs in one thread over a pre-written spool of the bench's events (batches of
500, ``synchronous=FULL``, SQLite) until every event is decided. The clock never moves, so two
runs of the same tree execute the same instructions: callgrind counts them at two spool sizes
and the difference, divided by the difference in events, is one event's cost, start-up
cancelled out. Wall-clock benches judge a lever under load badly; this does not.

Run: .venv/bin/python -m bench.cg_ingest [--events 1000,3000]
(needs valgrind; ``--run N --dir D`` is the measured child.)
"""

from __future__ import annotations

import argparse
import logging
import re
import sqlite3
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import rule_store, write_spool
from bench.events import event_lines
from trigmail.daemon import Daemon
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.metrics import Metrics
from trigmail.providers.recording import RecordingProvider
from trigmail.sources.spool import SpoolSource

NOW = datetime(2026, 11, 1, tzinfo=UTC)
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _spool(directory: Path, events: int) -> Path:
    spool = directory / f"events-{events}.jsonl"
    lines = event_lines(events, step_s=0.002, start=NOW + timedelta(days=1), steady=True)
    write_spool(spool, lines)
    return spool


def run(spool: Path, ledger_path: Path, events: int) -> None:
    """Decide every event of ``spool`` into a fresh ledger, the clock fixed at :data:`NOW`."""
    logging.disable(logging.WARNING)
    ledger = SqliteLedger(ledger_path, clock=lambda: NOW)
    daemon = Daemon(
        SpoolSource(spool),
        ledger,
        RecordingProvider(),
        rule_store(),
        Metrics(process=False),
        clock=lambda: NOW,
    )
    worker = daemon.worker
    worker.start()
    with sqlite3.connect(ledger_path) as check:
        while True:
            if worker.step(NOW) > 0 and not worker._held:
                seen = check.execute("SELECT COUNT(*) FROM seen_events").fetchone()[0]
                if seen >= events:
                    break
    ledger.close()


def _count(directory: Path, events: int) -> int:
    spool = _spool(directory, events)
    ledger = directory / f"ledger-{events}.db"
    out = directory / f"callgrind-{events}.out"
    child = [sys.executable, "-m", "bench.cg_ingest", "--run", str(events), "--spool", str(spool)]
    child += ["--ledger", str(ledger)]
    done = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *child],
        capture_output=True,
        check=True,
    )
    found = _COLLECTED.search(done.stderr)
    if found is None:
        raise SystemExit(f"callgrind printed no total:\n{done.stderr.decode(errors='replace')}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", default="1000,3000", help="two spool sizes, comma-separated")
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ledger", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run(args.spool, args.ledger, args.run)
        return
    small, large = (int(n) for n in args.events.split(","))
    with tempfile.TemporaryDirectory(prefix="trigmail-cg-") as temp:
        low = _count(Path(temp), small)
        high = _count(Path(temp), large)
    per_event = (high - low) / (large - small)
    print(f"instructions: {small} events {low:,}; {large} events {high:,}")
    print(f"per ingested event: {per_event:,.0f}")


if __name__ == "__main__":
    main()
