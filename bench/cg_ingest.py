"""Instructions per ingested event, counted by callgrind: the serve loop's turn on a fixed clock.

``Worker.step`` runs in one thread over a pre-written spool of the bench's events (batches of
500, ``synchronous=FULL``, SQLite) until every event is decided. The clock never moves, so two
runs of the same tree execute the same instructions: callgrind counts them at two spool sizes
and the difference, divided by the difference in events, is one event's cost, start-up
cancelled out. Wall-clock benches judge a lever under load badly; this does not.

With ``--prefill N`` both runs start from a ledger that has already decided the first N events
(decided outside callgrind, the spool appended to in place so its position still holds): the
per-event figure is then that of a ledger whose users have sends already, as in a long run,
rather than of a fresh one.

Run: .venv/bin/python -m bench.cg_ingest [--events 1000,3000] [--prefill 20000]
(needs valgrind; ``--run N --spool S --ledger L`` is the measured child.)
"""

from __future__ import annotations

import argparse
import itertools
import logging
import re
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench.common import rule_store, write_spool
from bench.events import event_lines
from trigmail.daemon import Daemon, tune_gc
from trigmail.ledger.sqlite import SqliteLedger
from trigmail.metrics import Metrics
from trigmail.providers.recording import RecordingProvider
from trigmail.sources.spool import SpoolSource

NOW = datetime(2026, 11, 1, tzinfo=UTC)
_COLLECTED = re.compile(rb"Collected : (\d+)")


def _lines(events: int) -> Iterator[bytes]:
    return event_lines(events, step_s=0.002, start=NOW + timedelta(days=1), steady=True)


def run(spool: Path, ledger_path: Path, events: int) -> None:
    """Decide the events of ``spool`` into the ledger until it has seen ``events``, the clock
    fixed at :data:`NOW`."""
    logging.disable(logging.WARNING)
    tune_gc()  # as serve sets the process's collector
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


def _count(directory: Path, events: int, prefill: int) -> int:
    """Instructions to decide the first ``prefill + events`` events, the first ``prefill``
    decided beforehand (not counted)."""
    spool = directory / f"events-{events}.jsonl"
    ledger = directory / f"ledger-{events}.db"
    lines = _lines(prefill + events)
    write_spool(spool, itertools.islice(lines, prefill))
    if prefill:
        run(spool, ledger, prefill)
    with spool.open("ab") as rest:  # in place: the position taken in the prefill still holds
        rest.writelines(line + b"\n" for line in lines)
    events += prefill
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
    parser.add_argument(
        "--prefill", type=int, default=0, help="events decided before each counted run"
    )
    parser.add_argument("--run", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spool", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--ledger", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run is not None:
        run(args.spool, args.ledger, args.run)
        return
    small, large = (int(n) for n in args.events.split(","))
    with tempfile.TemporaryDirectory(prefix="trigmail-cg-") as temp:
        low = _count(Path(temp), small, args.prefill)
        high = _count(Path(temp), large, args.prefill)
    per_event = (high - low) / (large - small)
    prefilled = f" after {args.prefill} prefilled" if args.prefill else ""
    print(f"instructions{prefilled}: {small} events {low:,}; {large} events {high:,}")
    print(f"per ingested event: {per_event:,.0f}")


if __name__ == "__main__":
    main()
