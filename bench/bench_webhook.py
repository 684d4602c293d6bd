"""Webhook ingestion: SendGrid-sized signed batches posted to trigmail's Event Webhook listener.

One listener (as ``trigmail serve`` wires it: its own HTTP server, the receiver, the ledger) on
127.0.0.1, one client posting batches one after the other, each verified (ECDSA P-256 over the
timestamp and body, through the ``sendgrid`` package's ``EventWebhook``), parsed, and committed
in one ledger transaction before the 200. Half of the events name a send in doubt, so the
settling by evidence is in the figure too.

Also reported: the cost of the signature check alone, and of parsing alone, per batch, and the
CPU time of the run (less sensitive than wall time to other work on a shared machine).

Run: .venv/bin/python -m bench.bench_webhook [--batches 30] [--batch-size 1000] [--ledger pg-dsn]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.common import header
from tests.webhook_client import event_item, make_key, post, signed_headers
from trigmail.decisions import Payload
from trigmail.ledger import open_ledger
from trigmail.ledger.base import Ledger, SendRecord, SendState
from trigmail.rules.model import Address, OnDoubt
from trigmail.webhook.events import parse_body
from trigmail.webhook.listener import serve_webhook
from trigmail.webhook.observe import WebhookMetrics
from trigmail.webhook.receiver import Receiver
from trigmail.webhook.signature import Verifier, parse_public_key

PATH = "/sendgrid/events"
KINDS = ("processed", "delivered", "open", "click", "deferred", "bounce")


def _in_doubt(ledger: Ledger, keys: list[str]) -> None:
    now = datetime.now(UTC)
    payload = Payload(template="d-1", data={}, from_=Address("hello@example.com", "Shop"))
    with ledger.transaction() as txn:
        for key in keys:
            send = SendRecord(
                key, "cart", 0, "u", "u@example.com", key, now, payload, OnDoubt.VERIFY, "v1"
            )
            txn.insert_send(send)
        txn.claim(keys, now)
        txn.finish(keys, SendState.IN_DOUBT, now)


def _batches(count: int, size: int) -> list[bytes]:
    """``count`` bodies of ``size`` events, each about SendGrid's size (300-500 bytes)."""
    bodies = []
    for b in range(count):
        items = [
            event_item(
                f"cart:e{b}-{i // 2}",
                KINDS[i % len(KINDS)],
                rule="cart",
                message_id=f"m{b}-{i}",
                category=["cart-recovery"],
                ip="192.0.2.10",
                useragent="Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15",
                url="https://shop.example/c/9?utm_source=sendgrid",
            )
            for i in range(size)
        ]
        bodies.append(json.dumps(items).encode())
    return bodies


@contextmanager
def _database(server: str | None) -> Iterator[str | None]:
    """A fresh PostgreSQL database on ``server``, dropped after; ``None`` without a server."""
    if server is None:
        yield None
        return
    import psycopg

    name = f"trigmail_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server.rsplit("/", 1)[0] + "/" + name
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument(
        "--postgres",
        default=None,
        metavar="SERVER_DSN",
        help="a PostgreSQL server (postgresql://postgres@127.0.0.1:5432/postgres): the bench "
        "creates a database of its own there and drops it after (default: a SQLite file)",
    )
    args = parser.parse_args()
    header("webhook ingestion (signed batches, one listener, one client)")
    private, public = make_key()
    verifier = Verifier(parse_public_key(public, "bench"))
    bodies = _batches(args.batches, args.batch_size)
    print(f"batch: {args.batch_size} events, {statistics.mean(map(len, bodies)) / 1e3:.0f} kB")

    stamp = str(int(time.time()))
    signatures = [signed_headers(private, body, stamp) for body in bodies]
    started = time.perf_counter()
    for body, headers in zip(bodies, signatures, strict=True):
        assert verifier.verify(body.decode(), headers[SIG], stamp)
    verify_ms = (time.perf_counter() - started) * 1e3 / len(bodies)
    started = time.perf_counter()
    for body in bodies:
        parse_body(body, datetime.now(UTC))
    parse_ms = (time.perf_counter() - started) * 1e3 / len(bodies)
    print(f"signature check alone: {verify_ms:.2f} ms per batch (decode included)")
    print(f"parsing alone: {parse_ms:.2f} ms per batch")

    with tempfile.TemporaryDirectory() as tmp, _database(args.postgres) as dsn:
        ledger = open_ledger(dsn or str(Path(tmp) / "ledger.db"))
        keys = sorted(
            {
                f"cart:e{b}-{i // 2}"
                for b in range(args.batches)
                for i in range(0, args.batch_size, 4)
            }
        )
        _in_doubt(ledger, keys)
        registry = CollectorRegistry()
        receiver = Receiver(ledger, verifier, WebhookMetrics(registry), path=PATH, max_age_s=600)
        server = serve_webhook(receiver, "127.0.0.1:0", 5_000_000)
        url = f"http://127.0.0.1:{server.port}{PATH}"
        try:
            latencies = []
            cpu_started = time.process_time()
            started = time.perf_counter()
            for body in bodies:
                began = time.perf_counter()
                assert post(url, body, signed_headers(private, body)) == 200
                latencies.append(time.perf_counter() - began)
            elapsed = time.perf_counter() - started
            cpu_s = time.process_time() - cpu_started
        finally:
            server.close()
        settled = registry.get_sample_value(
            "trigmail_sends_settled_by_evidence_total", {"rule": "cart"}
        )
        ledger.close()
    events = args.batches * args.batch_size
    print(f"ledger: {'PostgreSQL' if args.postgres else 'SQLite (WAL, synchronous=FULL)'}")
    print(
        f"end to end: {events} events in {elapsed:.2f} s = {events / elapsed:,.0f} events/s; "
        f"per batch median {statistics.median(latencies) * 1e3:.0f} ms, "
        f"max {max(latencies) * 1e3:.0f} ms; {settled:.0f} in-doubt sends settled by evidence"
    )
    # CPU time (this process: the listener and the client) is less at the mercy of other load.
    print(f"CPU: {cpu_s:.2f} s = {events / cpu_s:,.0f} events per CPU second (listener + client)")


SIG = "X-Twilio-Email-Event-Webhook-Signature"

if __name__ == "__main__":
    main()
