"""Scheduler: a restart with 1,000,000 pending delayed sends in the SQLite ledger.

The ledger is filled directly (``executemany``): ``--near`` sends fall due at a steady rate over
``--window`` seconds starting ``--lead`` seconds after the restart, the rest are spread over the
next 30 days. Then the daemon starts in a child process (wired as ``trigmail serve`` wires it,
delivering to the fake SendGrid at 100 ms on 127.0.0.1) and runs until the near sends are due.

Reported: the child's peak RSS (``VmHWM``), the time from its start to ``serve: ready``, and the
lateness of firing (``claimed_at - due_at``) of the sends that fell due after it was ready.

Run: .venv/bin/python -m bench.bench_scheduler [--pending 1000000]
     .venv/bin/python -m bench.bench_scheduler --horizon 3e8 --max-entries 2000000  (load all)
"""

from __future__ import annotations

import argparse
import logging
import random
import signal
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench.common import (
    FAKE_API_KEY,
    REPO_ROOT,
    FakeSendGridProcess,
    count_state,
    header,
    insert_sends,
    make_daemon,
    peak_rss_mb,
    percentile,
    query,
    sendgrid_provider,
    utc_now,
)
from tests.serve_harness import Serve, clean_env
from trigmail.ledger.sqlite import to_us
from trigmail.scheduler import Scheduler

# Filled in chunks so that the generator's own memory stays small.
_CHUNK = 100_000


def fill(ledger: Path, pending: int, near: int, near_start_s: float, window_s: float) -> None:
    """Write ``pending`` scheduled sends, ``near`` of them due soon, the rest within 30 days."""
    rng = random.Random(1)
    now = utc_now()
    far = pending - near
    # In due order, as they would have been scheduled by a steady stream of events.
    offsets_s = sorted(rng.uniform(3600, 30 * 86_400) for _ in range(far))
    for first in range(0, far, _CHUNK):
        due = [now + timedelta(seconds=s) for s in offsets_s[first : first + _CHUNK]]
        insert_sends(ledger, due, first=first)
    # Written last, relative to the time the daemon is about to start.
    start = utc_now() + timedelta(seconds=near_start_s)
    due = [start + timedelta(seconds=window_s * n / near) for n in range(near)]
    insert_sends(ledger, due, first=far)


def child(args: argparse.Namespace) -> None:
    """The daemon process: serve's wiring, with the scheduler the lever asks for."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    spool = Path(args.ledger).with_name("events.jsonl")
    spool.touch()
    daemon = make_daemon(
        spool, Path(args.ledger), sendgrid_provider(args.url), batch_window_s=args.batch_window
    )
    daemon.pipeline.scheduler = Scheduler(args.horizon, args.max_entries)
    signal.signal(signal.SIGTERM, lambda _signum, _frame: daemon.request_stop())
    daemon.run()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pending", type=int, default=1_000_000)
    parser.add_argument("--near", type=int, default=20_000, help="sends due during the run")
    parser.add_argument("--lead", type=float, default=10.0, help="seconds to the first near send")
    parser.add_argument("--window", type=float, default=20.0, help="seconds the near sends span")
    parser.add_argument("--horizon", type=float, default=300.0, help="scheduler horizon, s")
    parser.add_argument("--max-entries", type=int, default=50_000, help="scheduler heap bound")
    parser.add_argument("--batch-window", type=float, default=0.025, help="seconds")
    parser.add_argument("--ready-timeout", type=float, default=90.0, help="seconds")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ledger", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    header(f"scheduler: restart with {args.pending:,} pending sends")
    with (
        tempfile.TemporaryDirectory(prefix="trigmail-bench-") as temp,
        FakeSendGridProcess(100) as fake,
    ):
        ledger = Path(temp) / "ledger.db"
        filled = time.perf_counter()
        fill(ledger, args.pending, args.near, args.lead, args.window)
        print(f"filled the ledger in {time.perf_counter() - filled:.1f} s")
        _restart(ledger, fake.url, args)


def _restart(ledger: Path, url: str, args: argparse.Namespace) -> None:
    command = [
        *("-m", "bench.bench_scheduler", "--child", "--ledger", str(ledger), "--url", url),
        *("--horizon", str(args.horizon), "--max-entries", str(args.max_entries)),
        *("--batch-window", str(args.batch_window)),
    ]
    serve = Serve(REPO_ROOT, [], clean_env({"SENDGRID_API_KEY": FAKE_API_KEY}))
    serve.command = [sys.executable, *command]
    started = time.monotonic()
    started_at = utc_now()
    with serve:
        try:
            serve.wait_line(r"serve: ready", timeout_s=args.ready_timeout)
        except AssertionError:
            rss_mb = peak_rss_mb(serve.proc.pid)
            print(f"not ready within {args.ready_timeout:g} s; peak RSS so far {rss_mb:.0f} MiB")
            return
        ready_s = time.monotonic() - started
        ready_at = started_at + timedelta(seconds=ready_s)
        end = started + args.lead + args.window + 2.0
        while time.monotonic() < end and serve.proc.poll() is None:
            time.sleep(0.2)
        rss_mb = peak_rss_mb(serve.proc.pid)
        code = serve.stop(timeout_s=30)
    rows = query(
        ledger,
        "SELECT claimed_at - due_at, due_at FROM sends WHERE claimed_at IS NOT NULL",
    )
    after_ready = [int(str(r[0])) / 1000 for r in rows if int(str(r[1])) >= to_us(ready_at)]
    every = [int(str(r[0])) / 1000 for r in rows]
    requests = query(ledger, "SELECT COUNT(DISTINCT message_id) FROM sends")[0][0]
    print(
        f"scheduler: horizon={args.horizon:g} s, max_entries={args.max_entries:,}, "
        f"batch_window={args.batch_window:g} s"
    )
    print(f"peak RSS: {rss_mb:.0f} MiB")
    print(f"start to ready: {ready_s:.2f} s")
    print(
        f"fired: {len(every)} (sent {count_state(ledger, 'sent')} in {requests} requests); "
        f"due after ready: "
        f"{len(after_ready)}, lateness p50 {percentile(after_ready, 50):.0f} ms, "
        f"p99 {percentile(after_ready, 99):.0f} ms, max {max(after_ready, default=0):.0f} ms"
    )
    if every != after_ready:
        print(f"lateness of all fired (incl. due before ready): p99 {percentile(every, 99):.0f} ms")
    print(f"child exit code: {code}")


if __name__ == "__main__":
    main()
