"""Trigger-to-provider latency of `trigmail serve`: from an event's `ts` to the fake SendGrid.

Starts the fake SendGrid in this process and the real `trigmail serve` as a subprocess on a
spool, appends `ping` events at a steady rate with `ts` = the moment each line is written, and
measures, per idempotency key, the fake's receive time of the request that carried it minus the
event's `ts` (same host, same clock). Prints p50/p99/max.

Run: .venv/bin/python -m bench.bench_latency [--rate 500] [--seconds 20] [--latency-ms 0]
[--max-hold 0s] (the event-order gate's bound; ``0s`` turns the gate off, for an A/B)
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from tests.fake_sendgrid import FakeSendGrid, FaultRates
from tests.serve_harness import REPO_ROOT, Serve, clean_env, wait_for, write_config

RULES = REPO_ROOT / "tests" / "fixtures" / "serve" / "rules"


def _line(n: int) -> str:
    event = {
        "id": f"b{n}",
        "event": "ping",
        "user_id": f"u{n}",
        "email": f"user{n}@example.com",
        "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
        "user": {"first_name": "Ana"},
        "properties": {"note": "bench"},
    }
    return json.dumps(event) + "\n"


def _append_at_rate(spool: Path, rate: float, count: int) -> float:
    """Write ``count`` lines, one every ``1 / rate`` seconds; return the achieved rate."""
    started = time.monotonic()
    with spool.open("a", encoding="utf-8") as file:
        for n in range(count):
            # Pacing, not synchronisation: each line waits for its slot in the schedule.
            slot_s = started + n / rate - time.monotonic()
            if slot_s > 0:
                time.sleep(slot_s)
            file.write(_line(n))
            file.flush()
    return count / (time.monotonic() - started)


def _percentile(ordered: list[float], fraction: float) -> float:
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def _latencies_ms(fake: FakeSendGrid, sent_at: dict[str, float]) -> list[float]:
    latencies: list[float] = []
    for request in fake.requests:
        if not request.accepted or request.received_at is None:
            continue
        for personalization in request.body["personalizations"]:
            key = personalization["custom_args"]["trigmail_key"]
            latencies.append((request.received_at - sent_at[key]) * 1000)
    return sorted(latencies)


def _sent_at(spool: Path) -> dict[str, float]:
    """The ``ts`` of every event, by the key the ``notify`` rule gives it."""
    stamps = {}
    for line in spool.read_text(encoding="utf-8").splitlines():
        event = json.loads(line)
        ts = datetime.strptime(event["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        stamps[f"notify:{event['id']}"] = ts.timestamp()
    return stamps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500.0, help="events per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--latency-ms", type=float, default=0.0, help="the fake's own latency")
    parser.add_argument("--max-hold", help="delivery.max_hold for serve (0s: no event-order gate)")
    args = parser.parse_args()
    count = int(args.rate * args.seconds)
    root = Path(tempfile.mkdtemp(prefix="trigmail-bench-"))
    try:
        shutil.copytree(RULES, root / "rules")
        rates = FaultRates(latency_s=args.latency_ms / 1000)
        with FakeSendGrid(rates=rates) as fake:
            config = write_config(
                root / "trigmail.yaml",
                fake_url=fake.url,
                source={"spool": str(root / "events.jsonl")},
                rules_dir=root / "rules",
                ledger=root / "ledger.db",
                sendgrid={"timeout": 10, "connect_timeout": 5},
            )
            serve_args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
            env = clean_env({"SENDGRID_API_KEY": fake.api_key})
            if args.max_hold is not None:
                env["TRIGMAIL_MAX_HOLD"] = args.max_hold
            with Serve(root, serve_args, env) as serve:
                serve.wait_ready()
                achieved = _append_at_rate(root / "events.jsonl", args.rate, count)
                wait_for(lambda: len(fake.accepted_keys()) >= count, f"{count} accepted keys", 120)
                assert serve.stop() == 0
            latencies = _latencies_ms(fake, _sent_at(root / "events.jsonl"))
            requests = len(fake.accepted)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(f"command: python -m bench.bench_latency {' '.join(sys.argv[1:])}".rstrip())
    print(f"events: {count} appended at {achieved:,.0f}/s (asked {args.rate:,.0f}/s)")
    print(f"provider: fake SendGrid, latency {args.latency_ms:g} ms; {requests} requests")
    print(
        "trigger-to-provider latency: "
        f"p50 {_percentile(latencies, 0.50):.1f} ms, "
        f"p99 {_percentile(latencies, 0.99):.1f} ms, "
        f"max {latencies[-1]:.1f} ms ({len(latencies)} keys)"
    )


if __name__ == "__main__":
    main()
