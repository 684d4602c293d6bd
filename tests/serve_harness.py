"""Run the real ``trigmail serve`` as a subprocess, for end-to-end tests and benchmarks.

Readiness and outcomes are awaited by polling a condition against a deadline (a log line on
stderr, read by a thread; the metrics ``/healthz`` endpoint; a ledger count), never by sleeping
a fixed time. The process is always killed on exit from its ``with`` block.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import yaml

from tests.fake_sendgrid import FakeSendGrid
from trigmail.cli.status import status_json as cli_status_json
from trigmail.decisions import LogEntry
from trigmail.ledger import open_ledger
from trigmail.ledger.base import SendRecord, SendState

T = TypeVar("T")

# The working tree under test: first on the child's path, so that it runs this code even where
# the virtualenv's editable install is stale (it then sees ``trigmail`` as a namespace package).
REPO_ROOT = Path(__file__).resolve().parent.parent
# The installed console script, as a user runs it.
TRIGMAIL = Path(sys.executable).with_name("trigmail")
# How often a condition is polled: short enough to notice quickly, long enough to stay cheap.
POLL_S = 0.02
# The default bound of one wait; a test that needs longer passes its own.
WAIT_S = 20.0
_METRICS_LINE = re.compile(r"metrics: serving /metrics, /healthz and /readyz on ([\d.]+):(\d+)")


def wait_for(condition: Callable[[], T | None], what: str, timeout_s: float = WAIT_S) -> T:
    """Poll ``condition`` until it returns something truthy; return that.

    Raises:
        AssertionError: naming ``what`` when the deadline passes first.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(POLL_S)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test's environment without any ``TRIGMAIL_*`` or SendGrid setting, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("TRIGMAIL_") and k not in ("SENDGRID_API_KEY", "CREDENTIALS_DIRECTORY")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )
    env.update(extra or {})
    return env


def write_config(
    path: Path,
    *,
    fake_url: str,
    source: Mapping[str, Any],
    rules_dir: Path,
    ledger: Path,
    delivery: Mapping[str, Any] | None = None,
    sendgrid: Mapping[str, Any] | None = None,
    from_email: str = "hello@shop.example",
) -> Path:
    """Write a config for a run against the fake SendGrid at ``fake_url``."""
    document = {
        "source": dict(source),
        "rules_dir": str(rules_dir),
        "ledger": str(ledger),
        "from": {"email": from_email, "name": "Example Shop"},
        "provider": {
            "sendgrid": {
                "host": fake_url,
                "timeout": 0.5,
                "connect_timeout": 0.5,
                **(sendgrid or {}),
            }
        },
        "delivery": {
            "retry_base": 0.05,
            "retry_cap": 0.2,
            "shutdown_timeout": 5,
            **(delivery or {}),
        },
    }
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


SERVE_RULES = Path(__file__).parent / "fixtures" / "serve" / "rules"


def serve_in(
    root: Path, fake_url: str, api_key: str, source: Mapping[str, Any], name: str
) -> Serve:
    """A serve of config ``root/<name>.yaml`` on ``source``, the fixture rules (copied to
    ``root/rules`` once) and the ledger ``root/ledger.db``; several may share ``root``."""
    if not (root / "rules").exists():
        shutil.copytree(SERVE_RULES, root / "rules")
    config = write_config(
        root / f"{name}.yaml",
        fake_url=fake_url,
        source=source,
        rules_dir=root / "rules",
        ledger=root / "ledger.db",
    )
    args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
    return Serve(root, args, clean_env({"SENDGRID_API_KEY": api_key}))


def append_events(spool: Path, events: Iterable[Mapping[str, Any] | str]) -> None:
    """Append events (objects, or raw lines as given) to a spool, as a producer would."""
    lines = [e if isinstance(e, str) else json.dumps(e) for e in events]
    with spool.open("a", encoding="utf-8") as file:
        file.write("".join(line + "\n" for line in lines))


class Serve:
    """One ``trigmail serve`` subprocess; use as a context manager.

    Args:
        cwd: the working directory (where the embedded defaults point).
        args: arguments after ``trigmail serve``.
        env: the full environment (see :func:`clean_env`).
    """

    def __init__(self, cwd: Path, args: Sequence[str], env: Mapping[str, str]) -> None:
        self.cwd = cwd
        self.command = [sys.executable, "-m", "trigmail", "serve", *args]
        self.env = dict(env)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Serve:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.kill()

    @property
    def proc(self) -> subprocess.Popen[bytes]:
        assert self._proc is not None, "not started"
        return self._proc

    @property
    def stderr(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def start(self) -> None:
        self._proc = subprocess.Popen(
            self.command,
            cwd=self.cwd,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self._reader = threading.Thread(target=self._read, name="serve-stderr", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        for raw in self._proc.stderr:
            with self._cond:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, pattern: str, timeout_s: float = WAIT_S, after: int = 0) -> re.Match[str]:
        """Wait for a stderr line matching ``pattern`` (a regex), from line ``after`` on."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for line in self.lines[after:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining_s = deadline - time.monotonic()
                if self.proc.poll() is not None and not self._reader_alive():
                    raise AssertionError(
                        f"serve exited ({self.proc.returncode}) before logging {pattern!r}:\n"
                        + "\n".join(self.lines)
                    )
                if remaining_s <= 0:
                    raise AssertionError(
                        f"no stderr line matched {pattern!r} within {timeout_s:.0f}s:\n"
                        + "\n".join(self.lines)
                    )
                self._cond.wait(min(remaining_s, 0.2))

    def _reader_alive(self) -> bool:
        return self._reader is not None and self._reader.is_alive()

    def mark(self) -> int:
        """The number of stderr lines so far, for :meth:`wait_line`'s ``after``."""
        with self._cond:
            return len(self.lines)

    def wait_ready(self, timeout_s: float = WAIT_S) -> None:
        """Wait for ``serve: ready`` and, when metrics are served, a healthy ``/healthz``."""
        self.wait_line(r"serve: ready", timeout_s)
        if self.metrics_port() is not None:
            wait_for(self._healthy, "/healthz to answer 200", timeout_s)

    def metrics_port(self) -> int | None:
        for line in self.lines:
            match = _METRICS_LINE.search(line)
            if match:
                return int(match.group(2))
        return None

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path`` from the metrics server."""
        port = self.metrics_port()
        assert port is not None, "serve logged no metrics address"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as reply:
                return reply.status, reply.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    def _healthy(self) -> bool:
        try:
            return self.get("/healthz")[0] == 200
        except OSError:
            return False

    def metric(self, name: str) -> float | None:
        """The value of an unlabelled metric sample, from ``/metrics``."""
        _, text = self.get("/metrics")
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout_s: float = WAIT_S) -> int:
        """SIGTERM, then wait for the exit; return the exit code."""
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout_s)

    def wait_exit(self, timeout_s: float = WAIT_S) -> int:
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"serve did not exit within {timeout_s:.0f}s:\n{self.stderr}"
            ) from None
        if self._reader is not None:
            self._reader.join(5)
        return code

    def kill(self) -> None:
        """SIGKILL (if still running) and reap; safe to call more than once."""
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        if self._reader is not None:
            self._reader.join(5)
        if self._proc.stderr is not None:
            self._proc.stderr.close()


def sends(ledger: Path) -> dict[str, SendRecord]:
    """Every send in a SQLite ledger, by key; safe beside a running serve (reads only)."""
    if not ledger.exists():
        return {}
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        keys = [row[0] for row in conn.execute("SELECT key FROM sends ORDER BY key")]
    finally:
        conn.close()
    opened = open_ledger(ledger)
    try:
        found = {key: opened.get_send(key) for key in keys}
    finally:
        opened.close()
    return {key: send for key, send in found.items() if send is not None}


def decisions(ledger: Path) -> list[LogEntry]:
    """The whole decision log of a SQLite ledger, oldest first."""
    opened = open_ledger(ledger)
    try:
        return list(reversed(opened.decision_log(limit=1_000_000)))
    finally:
        opened.close()


def ledger_status(ledger: Path) -> dict[str, Any]:
    """What ``status --format json`` prints, computed in this process (no interpreter start)."""
    opened = open_ledger(ledger)
    try:
        return cli_status_json(opened.status(limit=100))
    finally:
        opened.close()


def run_trigmail(
    *args: str | Path, cwd: Path, env: Mapping[str, str] | None = None, timeout_s: float = 60
) -> subprocess.CompletedProcess[str]:
    """``trigmail ARGS`` as a user runs it, in a subprocess: the test's clean environment plus
    ``env``, no colour, tables wide enough that no cell folds; never raises on a failure."""
    return subprocess.run(
        [sys.executable, "-m", "trigmail", *map(str, args)],
        cwd=cwd,
        env=clean_env({"NO_COLOR": "1", "COLUMNS": "250", **(env or {})}),
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout_s,
    )


def status_json(
    cwd: Path, ledger: Path | str, limit: int | None = None, timeout_s: float = 30
) -> dict[str, Any]:
    """``trigmail status --format json --ledger LEDGER [--limit N]``, run as a subprocess."""
    command = ["status", "--format", "json", "--ledger", str(ledger)]
    if limit is not None:
        command += ["--limit", str(limit)]
    done = subprocess.run(
        [sys.executable, "-m", "trigmail", *command],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        check=True,
        timeout=timeout_s,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def ping(n: int | str, **changes: Any) -> dict[str, Any]:
    """A ``ping`` event: the ``notify`` rule (on_doubt: skip) sends key ``notify:p<n>``."""
    event: dict[str, Any] = {
        "id": f"p{n}",
        "event": "ping",
        "user_id": f"u{n}",
        "email": f"u{n}@example.com",
        "user": {"first_name": f"Name{n}"},
        "properties": {"note": f"note {n}"},
    }
    event.update(changes)
    return event


# The consumer group of the Redis end-to-end runs.
GROUP = "trigmail"


def serve_on(root: Path, fake: FakeSendGrid, redis_url: str, stream: str, consumer: str) -> Serve:
    source = {
        "redis": {
            "url": redis_url,
            "stream": stream,
            "group": GROUP,
            "consumer": consumer,
            "block": 0.2,
            "min_idle": 0.5,
        }
    }
    return serve_in(root, fake.url, fake.api_key, source, consumer)


def wait_sent(ledger: Path, keys: list[str]) -> dict[str, SendRecord]:
    def done() -> dict[str, SendRecord] | None:
        found = sends(ledger)
        return (
            found
            if all(found.get(k, None) and found[k].state is SendState.SENT for k in keys)
            else None
        )

    return wait_for(done, f"{keys} to be sent")
