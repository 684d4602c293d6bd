"""Event order under load: a backlog read at start, and a burst into a running `trigmail serve`.

A shop's events (signups, carts, orders; 2 % redeliveries, 5 % of the lines without an id) go
through the real `trigmail serve` (a subprocess) on a spool, to the fake SendGrid in this
process answering after ``--latency-ms``. A cart reminder falls due 2 s after its cart; an order
of the same user cancels it. Half the carts see an order inside those 2 s, a fifth after them.

- **backlog**: all events written while serve is down (their ``ts`` an hour old), then serve
  starts: the drain time (serve's start to everything decided and sent), emails/s, the wrong
  reminders (an order entered before the reminder was due: must be 0) and how far the sends
  differ from ``trigmail simulate``'s on the same file (must be 0 too).
- **burst**: the same mix written into a running serve as fast as this process can, each write
  stamped with its moment: drain time, emails/s, wrong reminders, and the immediate sends' lag
  (the fake's receive time minus the event's ``ts``) p50/p99.
- **baseline** (``--baseline``): the backlog through the one-process design of
  :mod:`bench.baseline` (decide every line, one transaction each, then send one by one); its
  delivery is timed on its first ``--baseline-sends`` emails and the rest projected.

Run: .venv/bin/python -m bench.bench_backlog [--events 20000] [--latency-ms 100] [--baseline]

``--profile FILE`` samples serve with py-spy (``pip install py-spy``; it needs ptrace rights)
from ready to drained, all threads, and writes the collapsed stacks to FILE.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import baseline
from bench.common import compile_sources, header, percentile, rule_store
from tests.fake_sendgrid import FakeSendGrid, FaultRates
from tests.reliability.feeds import SpoolFeed
from tests.reliability.workload import format_ts
from tests.serve_harness import Serve, clean_env, write_config
from trigmail.events import parse_ts

REMINDER_DELAY_S = 2.0
RULES_YAML = f"""\
rules:
  - id: welcome
    on: user_signup
    send: {{template: d-welcome}}
  - id: cart-reminder
    on: cart_abandoned
    delay: {REMINDER_DELAY_S:.0f}s
    cancel_on: [order_completed]
    send: {{template: d-cart}}
  - id: receipt
    on: order_completed
    dedupe: "{{rule}}:{{properties.order_id}}"
    send: {{template: d-receipt}}
"""
IMMEDIATE_RULES = ("welcome", "receipt")
REDELIVERED = 0.02
IDLESS = 0.05
# A drain that makes no progress for this long has stalled: the figures say so rather than
# wait on; one that progresses may take up to DRAIN_S.
STALL_S = 60.0
DRAIN_S = 1800.0


@dataclass
class Stream:
    """The events of a run, in feed order: (seconds from the stream's start, the document, or
    for a redelivery the index of the line it repeats)."""

    timed: list[tuple[float, dict[str, Any] | int]] = field(default_factory=list)


class Writer:
    """Turns a stream's items into lines as a producer writes them: a document with its
    ``ts``, a redelivery as the very text of the line it repeats."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def line(self, item: dict[str, Any] | int, at: float) -> str:
        if isinstance(item, int):
            text = self.texts[item]
        else:
            text = json.dumps({**item, "ts": format_ts(at)})
        self.texts.append(text)
        return text

    def write_all(self, path: Path, stream: Stream, start: float) -> None:
        with path.open("w", encoding="utf-8") as file:
            for at, item in stream.timed:
                file.write(self.line(item, start + at) + "\n")


def shop(events: int, step_s: float, seed: int) -> Stream:
    """About ``events`` events, a new user every ``step_s`` (virtual) seconds, in ``ts`` order."""
    rng = random.Random(seed)
    timed: list[tuple[float, int, dict[str, Any]]] = []
    n = 0
    while len(timed) < events * (1 - REDELIVERED):
        user, at = f"u{n}", n * step_s
        cart_at = at + rng.uniform(0.01, 0.5)
        timed.append((at, len(timed), _event(f"signup-{user}", "user_signup", user)))
        timed.append((cart_at, len(timed), _event(f"cart-{user}", "cart_abandoned", user)))
        draw = rng.random()
        if draw < 0.7:
            late = draw >= 0.5
            low, high = (2.2, 6.0) if late else (0.05, REMINDER_DELAY_S - 0.2)
            order = _event(f"order-{user}", "order_completed", user, order_id=f"o-{user}")
            timed.append((cart_at + rng.uniform(low, high), len(timed), order))
        n += 1
    ordered = [(at, document) for at, _, document in sorted(timed, key=lambda t: t[:2])]
    signups = [document for _, document in ordered if document["event"] == "user_signup"]
    for document in rng.sample(signups, min(len(signups), int(events * IDLESS))):
        del document["id"]
    stream = Stream()
    for at, document in ordered:
        stream.timed.append((at, document))
        if rng.random() < REDELIVERED:
            stream.timed.append((at, rng.randrange(len(stream.timed))))
    return stream


def _event(event_id: str, name: str, user: str, **properties: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "id": event_id,
        "event": name,
        "user_id": user,
        "email": f"{user}@example.com",
    }
    if properties:
        document["properties"] = properties
    return document


def wrong_reminders(spool: Path, accepted: set[str]) -> int:
    """Reminders accepted although their user's order entered (by its ``ts``) before they
    were due."""
    carts: dict[str, float] = {}
    wrong = 0
    for text in spool.read_text(encoding="utf-8").splitlines():
        document = json.loads(text)
        at, user = parse_ts(document["ts"]).timestamp(), document["user_id"]
        if document["event"] == "cart_abandoned":
            carts.setdefault(user, at)
        elif (
            document["event"] == "order_completed"
            and user in carts
            and at < carts.pop(user) + REMINDER_DELAY_S
            and f"cart-reminder:cart-{user}" in accepted
        ):
            wrong += 1
    return wrong


def simulated(spool: Path, rules: Path) -> set[str]:
    command = ["simulate", str(spool), "--rules", str(rules), "--format", "json"]
    done = subprocess.run(
        [sys.executable, "-m", "trigmail", *command],
        env=clean_env(),
        capture_output=True,
        check=False,
        timeout=600,
    )
    entries = [json.loads(text) for text in done.stdout.splitlines() if text.strip()]
    return {entry["key"] for entry in entries if entry["outcome"] == "sent"}


class Run:
    """One serve on a spool in ``root`` against ``fake``."""

    def __init__(self, root: Path, fake: FakeSendGrid) -> None:
        self.root = root
        self.fake = fake
        self.spool = root / "events.jsonl"
        self.ledger = root / "ledger.db"
        self.rules = root / "rules"
        self.rules.mkdir(parents=True, exist_ok=True)
        (self.rules / "rules.yaml").write_text(RULES_YAML, encoding="utf-8")
        config = write_config(
            root / "trigmail.yaml",
            fake_url=fake.url,
            source={"spool": str(self.spool)},
            rules_dir=self.rules,
            ledger=self.ledger,
        )
        args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
        self.serve = Serve(root, args, clean_env({"SENDGRID_API_KEY": fake.api_key}))

    def idle(self) -> bool:
        if not SpoolFeed(self.spool, random.Random(0), half_lines=False).consumed(self.ledger):
            return False
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            row = conn.execute(
                "SELECT count(*) FROM sends WHERE state IN ('scheduled', 'sending')"
            ).fetchone()
        finally:
            conn.close()
        return int(row[0]) == 0

    def position(self) -> int:
        """The committed offset in the spool."""
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            row = conn.execute("SELECT position FROM positions").fetchone()
        except sqlite3.OperationalError:  # no schema yet
            return 0
        finally:
            conn.close()
        return 0 if row is None else int(json.loads(row[0])["offset"])

    def accepted(self) -> set[str]:
        return set(self.fake.accepted_keys())


def drained(run: Run) -> bool:
    """Wait until serve has decided the whole spool and sent everything; ``False`` when it
    stalled (no line decided and no email accepted for :data:`STALL_S`)."""
    deadline_s = time.monotonic() + DRAIN_S
    last, since_s = (-1, -1), time.monotonic()
    while not run.idle():
        now_s = time.monotonic()
        progress = (run.position(), len(run.fake.requests))
        if progress != last:
            last, since_s = progress, now_s
        if now_s - since_s > STALL_S or now_s > deadline_s:
            return False
        time.sleep(0.2)  # polling the ledger, not synchronising
    return True


def cpu_s(pid: int) -> float:
    """The CPU seconds (user and system) a live process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sampler(pid: int, profile: Path | None) -> subprocess.Popen[bytes] | None:
    """py-spy recording ``pid``'s threads into ``profile`` (collapsed stacks), if asked."""
    if profile is None:
        return None
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250"]
    command += ["--threads", "--nonblocking", "--output", str(profile)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_sampler(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        process.wait(60)


def run_backlog(
    root: Path, stream: Stream, latency_s: float, profile: Path | None = None
) -> dict[str, Any]:
    Writer().write_all(root / "events.jsonl", stream, time.time() - 3600)
    with FakeSendGrid(rates=FaultRates(latency_s=latency_s)) as fake:
        run = Run(root, fake)
        started_s = time.monotonic()
        with run.serve:
            run.serve.wait_ready(60)
            ready_s = time.monotonic() - started_s
            ready_cpu_s = cpu_s(run.serve.proc.pid)
            spy = sampler(run.serve.proc.pid, profile)
            stalled = not drained(run)
            drain_s = time.monotonic() - started_s
            # The machine may be shared: serve's own CPU time says what the drain cost it.
            drain_cpu_s = cpu_s(run.serve.proc.pid) - ready_cpu_s
            stop_sampler(spy)
            run.serve.stop(60)
        accepted = run.accepted()
    expected = simulated(run.spool, run.rules)
    return {
        "events": len(stream.timed),
        "drain_s": round(drain_s, 2),
        "ready_s": round(ready_s, 2),
        "stalled": stalled,
        "emails": len(accepted),
        "emails_per_s": round(len(accepted) / drain_s, 1),
        "serve_cpu_s": round(drain_cpu_s, 2),
        "emails_per_serve_cpu_s": round(len(accepted) / max(drain_cpu_s, 0.01), 1),
        "wrong_reminders": wrong_reminders(run.spool, accepted),
        "differ_from_simulate": len(expected ^ accepted),
    }


def run_burst(root: Path, stream: Stream, latency_s: float) -> dict[str, Any]:
    spool = root / "events.jsonl"
    spool.touch()
    written_at: dict[str, float] = {}
    with FakeSendGrid(rates=FaultRates(latency_s=latency_s)) as fake:
        run = Run(root, fake)
        with run.serve:
            run.serve.wait_ready(60)
            started_s = time.monotonic()
            writer = Writer()
            with spool.open("a", encoding="utf-8") as file:
                for n in range(0, len(stream.timed), 50):
                    now = time.time()
                    chunk = [writer.line(item, now) for _, item in stream.timed[n : n + 50]]
                    file.write("".join(text + "\n" for text in chunk))
                    file.flush()
            write_s = time.monotonic() - started_s
            stalled = not drained(run)
            drain_s = time.monotonic() - started_s
            run.serve.stop(60)
        for text in spool.read_text(encoding="utf-8").splitlines():
            document = json.loads(text)
            written_at.setdefault(document.get("id", ""), parse_ts(document["ts"]).timestamp())
        lags_ms = _immediate_lags_ms(fake, written_at)
        accepted = run.accepted()
    return {
        "events": len(stream.timed),
        "write_s": round(write_s, 2),
        "drain_s": round(drain_s, 2),
        "stalled": stalled,
        "emails": len(accepted),
        "emails_per_s": round(len(accepted) / drain_s, 1),
        "wrong_reminders": wrong_reminders(spool, accepted),
        "immediate_lag_p50_ms": round(percentile(lags_ms, 50), 1),
        "immediate_lag_p99_ms": round(percentile(lags_ms, 99), 1),
    }


def _immediate_lags_ms(fake: FakeSendGrid, written_at: dict[str, float]) -> list[float]:
    """Per immediate email whose event had an id: the fake's first receipt minus its ``ts``."""
    first: dict[str, float] = {}
    for request in fake.requests:
        if not request.accepted or request.received_at is None:
            continue
        for personalization in request.body["personalizations"]:
            key = personalization["custom_args"]["trigmail_key"]
            first.setdefault(key, request.received_at)
    lags = []
    for key, received_at in first.items():
        rule, _, rest = key.partition(":")
        event_id = rest if rule == "welcome" else f"order-{rest.removeprefix('o-')}"
        if rule in IMMEDIATE_RULES and event_id in written_at:
            lags.append((received_at - written_at[event_id]) * 1000)
    return sorted(lags) or [0.0]


def run_baseline(root: Path, stream: Stream, latency_s: float, sends: int) -> dict[str, Any]:
    """The backlog through :mod:`bench.baseline`: every line decided, then ``sends`` emails
    sent one by one; the rest of the delivery projected at that rate."""
    spool = root / "events.jsonl"
    Writer().write_all(spool, stream, time.time() - 3600)
    rules_dir = root / "rules"
    rules_dir.mkdir(parents=True, exist_ok=True)
    (rules_dir / "rules.yaml").write_text(RULES_YAML, encoding="utf-8")
    rules = rule_store([rules_dir])()
    with FakeSendGrid(rates=FaultRates(latency_s=latency_s)) as fake:
        started_s = time.monotonic()
        baseline.ingest(spool, root / "baseline.db", rules)
        ingest_s = time.monotonic() - started_s
        due = _count(root / "baseline.db", "SELECT count(*) FROM sends WHERE state='scheduled'")
        started_s = time.monotonic()
        sent = baseline.deliver(root / "baseline.db", fake.url, rules, sends)
        per_email_s = (time.monotonic() - started_s) / max(sent, 1)
    return {
        "events": len(stream.timed),
        "ingest_s": round(ingest_s, 2),
        "emails": due,
        "emails_timed": sent,
        "emails_per_s": round(1 / per_email_s, 1),
        "drain_s_projected": round(ingest_s + due * per_email_s, 1),
    }


def _count(ledger: Path, sql: str) -> int:
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        row = conn.execute(sql).fetchone()
    finally:
        conn.close()
    return int(row[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=100.0)
    parser.add_argument("--step-s", type=float, default=0.02, help="virtual s between users")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", choices=("backlog", "burst"), help="run one of the two")
    parser.add_argument("--baseline", action="store_true", help="also the one-process design")
    parser.add_argument("--baseline-sends", type=int, default=300)
    parser.add_argument(
        "--profile", metavar="FILE", type=Path, help="py-spy serve during the backlog's drain"
    )
    args = parser.parse_args(argv)
    latency_s = args.latency_ms / 1000
    header(f"backlog and burst: {args.events} events, SendGrid latency {args.latency_ms:.0f} ms")
    report: dict[str, Any] = {}
    compile_sources()  # serve's start-up as installed: drain_s and ready_s include it
    parts = [args.only] if args.only else ["backlog", "burst"]
    for part in parts:
        root = Path(tempfile.mkdtemp(prefix=f"trigmail-bench-{part}-"))
        try:
            stream = shop(args.events, args.step_s, args.seed)
            if part == "backlog":
                report[part] = run_backlog(root, stream, latency_s, args.profile)
            else:
                report[part] = run_burst(root, stream, latency_s)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps({part: report[part]}), flush=True)
    if args.baseline:
        root = Path(tempfile.mkdtemp(prefix="trigmail-bench-baseline-"))
        try:
            stream = shop(args.events, args.step_s, args.seed)
            report["baseline"] = run_baseline(root, stream, latency_s, args.baseline_sends)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(json.dumps({"baseline": report["baseline"]}), flush=True)
        if "backlog" in report:
            ratio = report["baseline"]["drain_s_projected"] / report["backlog"]["drain_s"]
            print(json.dumps({"backlog_drain_vs_baseline": round(ratio, 1)}))
    failed = any(part.get("wrong_reminders") or part.get("stalled") for part in report.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
