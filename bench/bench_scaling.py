"""Scaling out: emails/s with 1, 2 and 4 `trigmail serve` workers on one stream and one ledger.

The fake SendGrid runs in this process (answering after ``--latency-ms``) for the whole bench.
For each worker count N: a fresh PostgreSQL database, a fresh Redis stream and consumer group,
and N real ``trigmail serve`` subprocesses, each a consumer of that group under its own name
(``worker1`` …) with the database as its ledger. Once every worker is ready, ``--events``
events are added to the stream (pipelined ``XADD``), each triggering one immediate email to its
own user. Measured from the fake's side:

- emails/s: accepted emails divided by the time from the first acceptance to the last;
- all accepted: from the first ``XADD`` until every key was accepted;
- duplicates: a key accepted twice (must be 0), and how the sends split between the workers
  (``lease_owner`` of the sent rows) and how busy the CPUs were.

The workers are then stopped with SIGTERM (each must exit 0), the stream and the database
dropped.

Run: .venv/bin/python -m bench.bench_scaling [--events 20000] [--workers 1,2,4]
     [--latency-ms 100] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
import yaml

from bench.common import header
from tests.fake_sendgrid import FakeSendGrid, FaultRates
from tests.serve_harness import Serve, clean_env, wait_for

RULE_ID = "bench-now"
# One rule, one immediate email per event: the key is the rule and the event id.
RULES_YAML = f"""\
rules:
  - id: {RULE_ID}
    on: bench_ping
    send:
      template: d-bench
      data: {{name: "{{{{ user.first_name }}}}"}}
"""
GROUP = "trigmail-bench"
XADD_CHUNK = 1000
# How long one worker count may take to deliver every email before the bench gives up.
RUN_DEADLINE_S = 120.0
TICKS_PER_S = os.sysconf("SC_CLK_TCK")
SERVER_NAMES = frozenset({"postgres", "redis-server"})


@dataclass(frozen=True)
class Result:
    """What one worker count achieved."""

    workers: int
    emails: int
    requests: int
    span_s: float
    all_accepted_s: float
    duplicates: int
    per_worker: tuple[int, ...]
    pending_after_stop: int
    cpu: CpuSample  # the ticks spent between the first XADD and the last acceptance

    @property
    def rate(self) -> float:
        return self.emails / self.span_s if self.span_s > 0 else float("inf")


class Acceptances:
    """The emails the fake accepted since a mark: each key with the time it was accepted."""

    def __init__(self, fake: FakeSendGrid) -> None:
        self.fake = fake
        self.latency_s = fake.rates.latency_s
        self._next = len(fake.requests)
        self.at: list[float] = []
        self.keys: Counter[str] = Counter()
        self.requests = 0

    def poll(self) -> int:
        """Take in the requests accepted since the last poll; return the distinct keys so far."""
        requests = self.fake.requests
        for request in requests[self._next :]:
            if not request.accepted or request.received_at is None:
                continue
            self.requests += 1
            # Recorded once the latency was served: that is when the fake accepted it.
            accepted_at = request.received_at + self.latency_s
            for personalization in request.body["personalizations"]:
                self.keys[personalization["custom_args"]["trigmail_key"]] += 1
                self.at.append(accepted_at)
        self._next = len(requests)
        return len(self.keys)


def cpu_ticks() -> tuple[int, int]:
    """(busy, total) clock ticks of all the machine's CPUs together, from ``/proc/stat``."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # guest time is already counted in user
    return total - idle, total


def process_ticks(pid: int) -> int:
    """User + system clock ticks a live process has used (threads included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces: fields are counted after its closing parenthesis.
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def servers_ticks() -> int:
    """Clock ticks of every live PostgreSQL and Redis server process (backends included)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # gone meanwhile
        name = text[text.index("(") + 1 : text.rindex(")")]
        if name in SERVER_NAMES:
            fields = text.rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
    return ticks


@dataclass(frozen=True)
class CpuSample:
    """Clock ticks so far: the machine's (busy and total) and those of the bench's parts."""

    busy: int
    total: int
    workers: int
    bench: int
    servers: int

    @classmethod
    def take(cls, worker_pids: Sequence[int]) -> CpuSample:
        busy, total = cpu_ticks()
        return cls(
            busy=busy,
            total=total,
            workers=sum(process_ticks(p) for p in worker_pids),
            bench=process_ticks(os.getpid()),
            servers=servers_ticks(),
        )


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new, empty PostgreSQL database for one run; dropped after."""
    name = f"trigmail_bench_scaling_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield as_url(psycopg.conninfo.make_conninfo(admin_dsn, dbname=name))
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextmanager
def fresh_stream(client: redis.Redis) -> Iterator[str]:
    """A stream name of its own for one run; the stream and its dead letters deleted after."""
    stream = f"trigmail:bench-scaling:{uuid.uuid4().hex[:10]}"
    try:
        yield stream
    finally:
        client.delete(stream, stream + ":dead")


def as_url(conninfo: str) -> str:
    """``postgresql://`` URL of a libpq conninfo (the config's ``ledger:`` wants a URL)."""
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = params.get("user", "postgres")
    host = params.get("host", "127.0.0.1")
    port = params.get("port", 5432)
    password = f":{params['password']}" if params.get("password") else ""
    return f"postgresql://{user}{password}@{host}:{port}/{params['dbname']}"


def write_worker_config(
    path: Path,
    *,
    name: str,
    args: argparse.Namespace,
    stream: str,
    ledger: str,
    fake_url: str,
    rules_dir: Path,
) -> None:
    document: dict[str, Any] = {
        "source": {
            "redis": {
                "url": args.redis_url,
                "stream": stream,
                "group": GROUP,
                "consumer": name,
            }
        },
        "rules_dir": str(rules_dir),
        "ledger": ledger,
        "from": {"email": "hello@shop.example", "name": "Example Shop"},
        "provider": {"sendgrid": {"host": fake_url, "timeout": 10, "connect_timeout": 5}},
        "metrics": {"listen": "127.0.0.1:0"},
        "delivery": {"concurrency": args.concurrency, "shutdown_timeout": 20},
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")


def add_events(client: redis.Redis, stream: str, count: int, run: str) -> None:
    """``XADD`` ``count`` events, pipelined in chunks; each is one email to its own user."""
    for first in range(0, count, XADD_CHUNK):
        pipe = client.pipeline(transaction=False)
        for n in range(first, min(first + XADD_CHUNK, count)):
            event = {
                "id": f"{run}-{n}",
                "event": "bench_ping",
                "user_id": f"u{n}",
                "email": f"user{n}@example.com",
                "user": {"first_name": "Ana"},
            }
            pipe.xadd(stream, {"data": json.dumps(event)})
        pipe.execute()


def sends_per_worker(ledger: str, names: Sequence[str]) -> tuple[int, ...]:
    """How many sent emails each worker claimed, in the order of ``names``.

    A worker's Redis consumer name is its lease owner in the ledger.
    """
    with psycopg.connect(ledger) as conn:
        rows = conn.execute(
            "SELECT lease_owner, count(*) FROM sends WHERE state = 'sent' GROUP BY lease_owner"
        ).fetchall()
    by_owner = {str(owner): int(count) for owner, count in rows}
    return tuple(by_owner.get(name, 0) for name in names)


def run_workers(
    count: int, args: argparse.Namespace, fake: FakeSendGrid, client: redis.Redis
) -> Result:
    """Deliver ``args.events`` emails with ``count`` workers; return what was measured."""
    run = uuid.uuid4().hex[:8]
    root = Path(tempfile.mkdtemp(prefix="trigmail-bench-scaling-"))
    rules_dir = root / "rules.d"
    rules_dir.mkdir()
    (rules_dir / "bench.yaml").write_text(RULES_YAML, encoding="utf-8")
    env = clean_env({"SENDGRID_API_KEY": fake.api_key})
    try:
        with (
            fresh_database(args.postgres) as ledger,
            fresh_stream(client) as stream,
            ExitStack() as stack,
        ):
            workers: list[Serve] = []
            names = [f"worker{n}" for n in range(1, count + 1)]
            for name in names:
                home = root / name
                home.mkdir()
                config = home / "config.yaml"
                write_worker_config(
                    config,
                    name=name,
                    args=args,
                    stream=stream,
                    ledger=ledger,
                    fake_url=fake.url,
                    rules_dir=rules_dir,
                )
                workers.append(stack.enter_context(Serve(home, ["--config", str(config)], env)))
            for worker in workers:
                worker.wait_ready(timeout_s=60)
            seen = Acceptances(fake)
            pids = [w.proc.pid for w in workers]
            before = CpuSample.take(pids)
            started = time.time()
            add_events(client, stream, args.events, run)
            wait_for(
                lambda: seen.poll() >= args.events,
                f"{args.events} emails accepted by {count} workers",
                RUN_DEADLINE_S,
            )
            after = CpuSample.take(pids)
            # The fake records a request before answering it: the ledger says `sent` a moment later.
            per_worker = wait_for(
                lambda: (
                    (split := sends_per_worker(ledger, names))
                    and sum(split) >= args.events
                    and split
                ),
                "every send recorded as sent in the ledger",
            )
            for worker in workers:
                worker.signal(signal.SIGTERM)
            codes = [worker.wait_exit(30) for worker in workers]
            if any(codes):
                raise SystemExit(f"{count} workers: exit codes {codes} after SIGTERM")
            seen.poll()
            # A graceful stop acknowledges whatever it read: nothing is left for others to claim.
            pending = int(client.xpending(stream, GROUP)["pending"])
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return Result(
        workers=count,
        emails=len(seen.at),
        requests=seen.requests,
        span_s=max(seen.at) - min(seen.at),
        all_accepted_s=max(seen.at) - started,
        duplicates=sum(n - 1 for n in seen.keys.values() if n > 1),
        pending_after_stop=pending,
        per_worker=per_worker,
        cpu=CpuSample(
            busy=after.busy - before.busy,
            total=after.total - before.total,
            workers=after.workers - before.workers,
            bench=after.bench - before.bench,
            servers=after.servers - before.servers,
        ),
    )


def print_table(results: Sequence[Result]) -> None:
    base = results[0].rate if results else 0.0
    print()
    print(
        "| workers | emails/s | vs 1 worker | all accepted after | requests | duplicate keys "
        "| sent per worker | pending after stop | CPUs busy "
        "| CPU s: workers / PostgreSQL+Redis / fake+bench / other |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        split = " / ".join(f"{n:,}" for n in r.per_worker)
        cpu = r.cpu
        other = cpu.busy - cpu.workers - cpu.servers - cpu.bench
        seconds = " / ".join(
            f"{ticks / TICKS_PER_S:.1f}" for ticks in (cpu.workers, cpu.servers, cpu.bench, other)
        )
        print(
            f"| {r.workers} | {r.rate:,.0f} | {r.rate / base:.2f}x | {r.all_accepted_s:.1f} s "
            f"| {r.requests:,} | {r.duplicates} | {split} | {r.pending_after_stop} "
            f"| {cpu.busy / max(cpu.total, 1):.0%} "
            f"| {seconds} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=20_000, help="events (= emails) per run")
    parser.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated")
    parser.add_argument("--latency-ms", type=float, default=100.0, help="the fake's answer delay")
    parser.add_argument("--concurrency", type=int, default=8, help="delivery.concurrency")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument(
        "--postgres",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="an admin connection: each run creates (and drops) a database of its own",
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    header("scaling out: emails/s by worker count (Redis stream, PostgreSQL ledger)")
    print(
        f"workload: {args.events:,} events, one immediate email each, distinct users; fake "
        f"SendGrid in process, latency {args.latency_ms:g} ms; delivery.concurrency "
        f"{args.concurrency} per worker; {os.cpu_count()} CPUs shared by the workers, "
        "PostgreSQL, Redis and the fake"
    )
    results: list[Result] = []
    client = redis.Redis.from_url(args.redis_url)
    try:
        with FakeSendGrid(rates=FaultRates(latency_s=args.latency_ms / 1000)) as fake:
            for count in counts:
                result = run_workers(count, args, fake, client)
                results.append(result)
                print(
                    f"{count} workers: {result.rate:,.0f} emails/s, all accepted after "
                    f"{result.all_accepted_s:.1f} s",
                    flush=True,
                )
    finally:
        client.close()
    print_table(results)
    if any(r.duplicates for r in results):
        raise SystemExit("a key was accepted twice")
    if any(r.pending_after_stop for r in results):
        raise SystemExit("entries were left pending after a graceful stop")


if __name__ == "__main__":
    main()
