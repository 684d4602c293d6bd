"""The long fault run: ``python -m bench.reliability --kills 200 --events 50000 --seed N``.

Feeds a seeded workload to real ``trigmail serve`` processes (a spool by default, or a Redis
stream), SIGKILLs them at seeded moments and at armed kill points, rotates the spool, while the
fake SendGrid injects every fault class; then checks everything against the oracle and prints
the figures and the command that reproduces them. Exit 1 if any check found a violation.

``--workers 3`` runs three workers on one Redis stream group (``--redis-url``, by default the
local server's database 15) and a PostgreSQL ledger in a database created for the run on the
server of ``--postgres`` and dropped after it.
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import sys
import tempfile
import uuid
from dataclasses import fields, replace
from pathlib import Path

import psycopg

from tests.fake_sendgrid import FaultRates
from tests.reliability import workers
from tests.reliability.feeds import Feed, RedisFeed, SpoolFeed
from tests.reliability.harness import ALL_FAULTS, RunResult, RunSpec, run

DEFAULT_REDIS = "redis://127.0.0.1:6379/15"
DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=200, help="harness SIGKILLs")
    parser.add_argument("--events", type=int, default=50_000, help="lines to feed")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--redis-url", help="feed a Redis stream here instead of a spool")
    parser.add_argument("--rotate-every", type=int, default=5000, help="lines (spool only)")
    parser.add_argument("--lines-per-s", type=float, default=500.0)
    parser.add_argument("--dir", type=Path, help="keep the run's files here")
    # Sends due together share one request, so a run makes far fewer requests than emails:
    # scaling the rates up makes every fault class show up in a run of a few hundred requests.
    parser.add_argument("--fault-scale", type=float, default=1.0, help="multiply fault rates")
    parser.add_argument("--workers", type=int, default=1, help="serve processes (> 1: Redis)")
    parser.add_argument(
        "--postgres", default=DEFAULT_POSTGRES, help="server for the ledger (--workers > 1)"
    )
    return parser.parse_args(argv)


def _feed(args: argparse.Namespace, root: Path) -> Feed:
    if args.redis_url:
        return RedisFeed(args.redis_url, f"trigmail-reliability:{uuid.uuid4().hex[:12]}")
    return SpoolFeed(root / "events.jsonl", random.Random(args.seed + 2))


def _scaled(rates: FaultRates, scale: float) -> FaultRates:
    chances = {
        f.name: getattr(rates, f.name) * scale for f in fields(rates) if f.name != "latency_s"
    }
    return replace(rates, **chances)


def _create_database(admin_dsn: str) -> str:
    """Create a fresh database on the server of ``admin_dsn``; return its DSN."""
    name = f"trigmail_reliability_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return admin_dsn.rsplit("/", 1)[0] + "/" + name


def _drop_database(admin_dsn: str, dsn: str) -> None:
    name = dsn.rsplit("/", 1)[1]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _run_workers(args: argparse.Namespace, spec: RunSpec, root: Path) -> RunResult:
    feed = RedisFeed(
        args.redis_url or DEFAULT_REDIS, f"trigmail-reliability:{uuid.uuid4().hex[:12]}"
    )
    dsn = _create_database(args.postgres)
    try:
        result = workers.run(replace(spec, rotate_every=0), root, feed, dsn, args.workers)
    finally:
        feed.close()
    # A run with a violation (or one that raised) keeps its ledger: it is the evidence.
    if result.violations:
        result.figures["ledger_kept"] = dsn
    else:
        _drop_database(args.postgres, dsn)
    return result


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="trigmail-reliability-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(
        seed=args.seed,
        events=args.events,
        kills=args.kills,
        kill_points=True,
        rates=_scaled(ALL_FAULTS, args.fault_scale),
        rotate_every=0 if args.redis_url else args.rotate_every,
        lines_per_s=args.lines_per_s,
        max_chunk=10,
        drain_timeout_s=600,
    )
    result = (
        _run_workers(args, spec, root) if args.workers > 1 else run(spec, root, _feed(args, root))
    )
    command = " ".join(["python -m bench.reliability", *map(shlex.quote, argv or sys.argv[1:])])
    violations = [str(v) for v in result.violations]
    report = {"command": command, "dir": str(root), **result.figures}
    report["violations"] = len(violations)
    print(json.dumps(report, indent=2))
    for violation in violations[:100]:
        print(violation)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
