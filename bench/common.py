"""Shared helpers of the benchmarks: the fake SendGrid as a process, the machine, events, sends.

Every bench sends traffic only to 127.0.0.1 (the fake SendGrid of ``tests.fake_sendgrid``, run in
its own process so that it does not share the daemon's interpreter lock) and stops by itself.
"""

from __future__ import annotations

import compileall
import cProfile
import json
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType

from trigmail.daemon import Daemon, tune_gc
from trigmail.ledger.base import Ledger
from trigmail.ledger.sqlite import SqliteLedger, to_us
from trigmail.metrics import Metrics
from trigmail.providers.base import Provider
from trigmail.providers.sendgrid import SendGridProvider
from trigmail.rules.model import Address
from trigmail.rulestore import RuleStore
from trigmail.secrets import Secret
from trigmail.sources.spool import SpoolSource

REPO_ROOT = Path(__file__).resolve().parent.parent
RULES_DIR = REPO_ROOT / "rules.d"
# The key the fake accepts (tests.fake_sendgrid.TEST_API_KEY); only ever sent to loopback.
FAKE_API_KEY = "SG.fake-test-key.0123456789abcdefghijklmnopqrstuvwxyz"
SENDER = Address("shop@example.com", "Example Shop")
NAMES = ("cart_abandoned", "user_signup", "order_completed", "page_viewed")
WEIGHTS = (30, 10, 20, 40)
# A bench that has not finished by then has hung: it stops and says so.
DEFAULT_DEADLINE_S = 110.0


def compile_sources() -> None:
    """Write trigmail's bytecode (``__pycache__``) before a timed ``serve`` start, as installing
    a wheel does. Where ``PYTHONDONTWRITEBYTECODE`` is set (this project's machines set it), a
    checkout's serve compiles every trigmail module it imports at each start instead: about
    0.15 to 0.3 s of CPU here that an installed serve never spends."""
    compileall.compile_dir(REPO_ROOT / "trigmail", quiet=1)


def command() -> str:
    """The command line that reproduces this run."""
    module = Path(sys.argv[0]).stem
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    return f".venv/bin/python -m bench.{module} {args}".rstrip()


def machine() -> str:
    """One line describing the machine the figures come from."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{model}, {os.cpu_count()} cores, {mem_gb:.0f} GB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def header(title: str) -> None:
    print(f"== {title}")
    print(f"command: {command()}")
    print(f"machine: {machine()}")


def percentile(values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile (nearest rank) of ``values``; 0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(pct / 100 * len(ordered) + 0.5) - 1))
    return ordered[rank]


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of a live process (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def utc_now() -> datetime:
    return datetime.now(UTC)


def write_spool(path: Path, lines: Iterator[bytes]) -> int:
    """Write events to a spool; return how many."""
    count = 0
    with path.open("wb") as out:
        for line in lines:
            out.write(line + b"\n")
            count += 1
    return count


_INSERT_SEND = """
INSERT INTO sends (key, rule_id, step, user_id, email, event_id, due_at, payload, on_doubt,
    rules_version, state, cancel_match, attempts, created_at, updated_at)
VALUES (?, ?, 0, ?, ?, ?, ?, ?, ?, 'bench', 'scheduled', '{}', 0, ?, ?)
"""
# Two rules of rules.d, two kinds of message: a capped marketing email and a receipt.
_WELCOME: dict[str, object] = {
    "template": "d-welcome",
    "categories": ["onboarding"],
    "asm_group": None,
    "from": None,
    "reply_to": None,
}
_RECEIPT: dict[str, object] = {
    "template": "d-receipt",
    "categories": [],
    "asm_group": None,
    "from": None,
    "reply_to": {"email": "orders@example.com", "name": "Example Shop orders"},
}


def create_ledger(path: Path) -> None:
    """Create an empty, migrated SQLite ledger at ``path``."""
    SqliteLedger(path).close()


def insert_sends(
    path: Path,
    due_at: Sequence[datetime],
    *,
    first: int = 0,
    distinct_templates: bool = False,
) -> None:
    """Insert ``scheduled`` sends straight into a SQLite ledger, one per due time.

    Send ``n`` goes to its own user; even ones are welcome emails (category ``onboarding``,
    counted by a cap), odd ones receipts.

    Args:
        path: the ledger file (created when missing).
        due_at: when each send falls due.
        first: the number of the first send (keys and users are numbered from it).
        distinct_templates: give every send its own template, so that no two can share a
            provider request (personalization batching off).
    """
    if not path.exists():
        create_ledger(path)
    now_us = to_us(utc_now())
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        # Bench set-up, not the daemon's durability: no fsync, and a cache that holds the indexes.
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("PRAGMA cache_size = -1000000")
        conn.execute("BEGIN")
        rows = []
        for offset, due in enumerate(due_at):
            n = first + offset
            welcome = n % 2 == 0
            payload = dict(_WELCOME if welcome else _RECEIPT)
            payload["data"] = {"first_name": "Ana", "order_id": f"o_{n}", "total": "42.00"}
            if distinct_templates:
                payload["template"] = f"{payload['template']}-{n}"
            key = f"{'welcome' if welcome else 'receipt'}:u_{n}"
            rows.append(
                (
                    key,
                    "welcome" if welcome else "receipt",
                    f"u_{n}",
                    f"user{n}@example.com",
                    f"evt_{n}",
                    to_us(due),
                    json.dumps(payload, separators=(",", ":")),
                    "skip" if welcome else "resend",
                    now_us,
                    now_us,
                )
            )
        conn.executemany(_INSERT_SEND, rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def count_state(path: Path, state: str) -> int:
    """How many sends of a SQLite ledger are in ``state`` (read-only, beside a running daemon)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT COUNT(*) FROM sends WHERE state = ?", (state,)).fetchone()
        return int(row[0])
    finally:
        conn.close()


def query(path: Path, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
    """Rows of a read-only query on a SQLite ledger."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(conn.execute(sql, params).fetchall())
    finally:
        conn.close()


class FakeSendGridProcess:
    """``python -m tests.fake_sendgrid`` on an ephemeral loopback port, in its own process.

    Args:
        latency_ms: how long the fake waits before answering each request.
    """

    def __init__(self, latency_ms: float = 0.0) -> None:
        self.latency_ms = latency_ms
        self.url = ""
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> FakeSendGridProcess:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.fake_sendgrid",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--latency-ms",
                str(self.latency_ms),
            ],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line.startswith("fake SendGrid on "):
            self._proc.kill()
            raise RuntimeError(f"the fake SendGrid did not start: {line!r}")
        self.url = line.split()[3]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()


def sendgrid_provider(url: str, max_connections: int = 16) -> SendGridProvider:
    """trigmail's SendGrid provider pointed at the fake."""
    return SendGridProvider(
        Secret(FAKE_API_KEY), default_from=SENDER, host=url, max_connections=max_connections
    )


def rule_store(dirs: Sequence[Path] = (RULES_DIR,)) -> RuleStore:
    store = RuleStore(dirs, 90 * 86_400)
    store.load().rule_set()
    return store


class ThreadCpu:
    """The CPU seconds the daemon's thread used, filled in when it ends; with ``profile``, a
    cProfile of that thread written there (cProfile sees only the thread it runs in)."""

    def __init__(self, profile: Path | None = None) -> None:
        self.profile = profile
        self.seconds = 0.0

    def wrap(self, run: Callable[[], None]) -> Callable[[], None]:
        def timed() -> None:
            profiler = cProfile.Profile() if self.profile else None
            started = time.thread_time()
            try:
                if profiler is None:
                    run()
                else:
                    profiler.runcall(run)
            finally:
                self.seconds = time.thread_time() - started
                if profiler is not None and self.profile is not None:
                    profiler.dump_stats(str(self.profile))

        return timed


@contextmanager
def running(
    daemon: Daemon, deadline_s: float = DEFAULT_DEADLINE_S, cpu: ThreadCpu | None = None
) -> Iterator[Daemon]:
    """Run ``daemon`` in a thread for the ``with`` block; stop it (gracefully) after."""
    target = daemon.run if cpu is None else cpu.wrap(daemon.run)
    thread = threading.Thread(target=target, name="bench-daemon", daemon=True)
    thread.start()
    try:
        yield daemon
    finally:
        daemon.request_stop()
        thread.join(deadline_s)


def make_daemon(
    spool: Path,
    ledger: Path | Ledger,
    provider: Provider,
    *,
    concurrency: int = 8,
    batch_size: int = 500,
    batch_window_s: float = 0.025,
) -> Daemon:
    """A daemon wired as ``trigmail serve`` wires it, on ``rules.d`` and a ledger (a path: a
    SQLite ledger there), in a process whose collector is set as serve sets it."""
    tune_gc()
    return Daemon(
        SpoolSource(spool),
        SqliteLedger(ledger) if isinstance(ledger, Path) else ledger,
        provider,
        rule_store(),
        Metrics(process=False),
        concurrency=concurrency,
        batch_size=batch_size,
        batch_window_s=batch_window_s,
    )


def wait_until(condition: Callable[[], bool], deadline_s: float, poll_s: float = 0.05) -> bool:
    """Poll a callable until it returns true or ``deadline_s`` passes; return the last value."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(poll_s)
    return bool(condition())
