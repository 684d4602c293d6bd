"""Delivery: emails the provider accepted per second, from a backlog of due sends.

A SQLite ledger holds ``--sends`` scheduled sends, all due now (half welcome emails, counted by
a cap; half receipts: two kinds of request), each to its own user. The real serve loop claims
them (``sending`` committed first), batches them into ``/v3/mail/send`` requests and posts them
to the fake SendGrid (its own process, on 127.0.0.1, answering after ``--latency-ms``); the rate
is the sends recorded ``sent`` divided by the time from start to the last one.

Run: .venv/bin/python -m bench.bench_delivery [--sends 50000] [--latency-ms 100]
     [--concurrency 8] [--batch-window 0.025] [--no-batching]   (levers)
     .venv/bin/python -m bench.bench_delivery --baseline --sends 500 --latency-ms 0
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from datetime import timedelta
from pathlib import Path

from bench import baseline
from bench.common import (
    DEFAULT_DEADLINE_S,
    FakeSendGridProcess,
    count_state,
    header,
    insert_sends,
    make_daemon,
    query,
    rule_store,
    running,
    sendgrid_provider,
    utc_now,
    wait_until,
)
from trigmail.ledger.sqlite import from_us


def run_trigmail(directory: Path, url: str, args: argparse.Namespace) -> tuple[float, int]:
    """Deliver the backlog through the serve loop; return (seconds, requests made)."""
    ledger = directory / "ledger.db"
    spool = directory / "events.jsonl"
    spool.touch()
    provider = sendgrid_provider(url, max_connections=max(16, args.concurrency))
    daemon = make_daemon(
        spool,
        ledger,
        provider,
        concurrency=args.concurrency,
        batch_window_s=args.batch_window,
    )
    started = utc_now()
    with running(daemon):
        done = wait_until(
            lambda: count_state(ledger, "sent") >= args.sends, DEFAULT_DEADLINE_S, poll_s=0.1
        )
    provider.close()
    if not done:
        raise SystemExit(f"delivery: only {count_state(ledger, 'sent')} of {args.sends} sent")
    last = query(ledger, "SELECT MAX(updated_at), COUNT(DISTINCT message_id) FROM sends")[0]
    elapsed_s = (from_us(int(str(last[0]))) - started).total_seconds()
    return elapsed_s, int(str(last[1]))


def run_baseline(directory: Path, url: str, sends: int) -> tuple[float, int]:
    rules = rule_store().load().rule_set()
    started = time.perf_counter()
    accepted = baseline.deliver(directory / "ledger.db", url, rules, sends)
    if accepted != sends:
        raise SystemExit(f"baseline: only {accepted} of {sends} accepted")
    return time.perf_counter() - started, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sends", type=int, default=50_000)
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fake's answer delay")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    parser.add_argument("--batch-window", type=float, default=0.025, help="seconds")
    parser.add_argument(
        "--no-batching",
        action="store_true",
        help="give every send its own template, so each goes in a request of its own",
    )
    parser.add_argument("--baseline", action="store_true", help="run the straightforward design")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    header(f"delivery: backlog -> accepted by the fake SendGrid at {args.latency_ms:g} ms")
    with tempfile.TemporaryDirectory(prefix="trigmail-bench-") as temp:
        directory = Path(temp)
        due = utc_now() - timedelta(seconds=1)
        insert_sends(
            directory / "ledger.db", [due] * args.sends, distinct_templates=args.no_batching
        )
        with FakeSendGridProcess(args.latency_ms) as fake:
            if args.baseline:
                design = "baseline: sendgrid client, one request and two transactions per email"
                elapsed_s, requests = run_baseline(directory, fake.url, args.sends)
            else:
                design = (
                    f"trigmail: concurrency={args.concurrency} batch_window={args.batch_window}"
                    f" batching={'off' if args.no_batching else 'on'}"
                )
                elapsed_s, requests = run_trigmail(directory, fake.url, args)
    rate = args.sends / elapsed_s
    print(
        f"{design}: {args.sends} emails in {elapsed_s:.2f} s = {rate:,.0f} emails/s "
        f"({requests} requests, {args.sends / requests:.0f} emails per request)"
    )


if __name__ == "__main__":
    main()
