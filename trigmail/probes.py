"""``trigmail check --connect``: reach the ledger, Redis and SendGrid cheaply, changing nothing.

Each probe returns a :class:`Verdict` instead of raising: an operator wants every verdict of
one run, like the config's problems.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from trigmail.config import Config, RedisConfig
from trigmail.errors import ConfigError
from trigmail.logs import redact
from trigmail.providers.credentials import SendGridAccount, resolve_provider
from trigmail.rules.quoting import cut
from trigmail.secrets import redact_url

PROBE_TIMEOUT_S: Final = 5.0


@dataclass(frozen=True)
class Verdict:
    """What one probe found: ``ok``, and a sentence saying what was reached or why not."""

    target: str
    ok: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "ok": self.ok, "detail": self.detail}


def _failure(target: str, exc: BaseException) -> Verdict:
    # A driver's message may quote a URL with its password.
    return Verdict(target, False, redact_url(redact(f"{type(exc).__name__}: {cut(str(exc))}")))


def probe_ledger(target: str) -> Verdict:
    """Connect to the ledger without creating or migrating it."""
    name = f"ledger {redact_url(target)}"
    if target in (":memory:", "memory"):
        return Verdict(name, True, "in memory: nothing to reach")
    if target.startswith(("postgresql://", "postgres://")):
        return _probe_postgres(name, target)
    path = Path(target)
    if not path.exists():
        return Verdict(name, True, "no ledger yet: serve creates it")
    try:
        # Read-only, so a probe can never create, lock for writing or migrate the file.
        with sqlite3.connect(f"file:{path.absolute()}?mode=ro", uri=True) as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        return _failure(name, exc)
    return Verdict(name, True, f"SQLite file readable (schema version {version})")


def _probe_postgres(name: str, dsn: str) -> Verdict:
    import psycopg

    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=int(PROBE_TIMEOUT_S)) as conn:
            server = conn.info.server_version
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return _failure(name, exc)
    return Verdict(name, True, f"PostgreSQL reachable (server {server})")


def probe_redis(source: RedisConfig) -> Verdict:
    """Ping Redis and say whether the stream and its consumer group exist yet."""
    import redis

    name = f"redis {redact_url(source.url)}"
    client = redis.Redis.from_url(
        source.url, socket_timeout=PROBE_TIMEOUT_S, socket_connect_timeout=PROBE_TIMEOUT_S
    )
    try:
        client.ping()
        exists = bool(client.exists(source.stream))
    except redis.RedisError as exc:
        return _failure(name, exc)
    finally:
        client.close()
    stream = "exists" if exists else "does not exist yet (serve creates it)"
    return Verdict(name, True, f"reachable; stream {source.stream!r} {stream}")


def probe_sendgrid(account: SendGridAccount) -> Verdict:
    """An authenticated request that sends nothing: the key's scopes."""
    import httpx

    host = account.settings.host
    name = f"sendgrid {host}"
    try:
        response = httpx.get(
            host.rstrip("/") + "/v3/scopes",
            headers={"Authorization": f"Bearer {account.api_key.reveal()}"},
            timeout=PROBE_TIMEOUT_S,
        )
    except httpx.HTTPError as exc:
        return _failure(name, exc)
    if response.status_code == 200:
        return Verdict(name, True, "the API key is accepted")
    if response.status_code in (401, 403):
        return Verdict(name, False, f"the API key is refused (HTTP {response.status_code})")
    return Verdict(name, False, f"unexpected answer: HTTP {response.status_code}")


def probe_all(config: Config) -> list[Verdict]:
    """Every dependency of ``config``, in the order serve reaches them."""
    verdicts = [probe_ledger(config.ledger)]
    if isinstance(config.source, RedisConfig):
        verdicts.append(probe_redis(config.source))
    try:
        provider = resolve_provider(config)
    except ConfigError as exc:
        return [*verdicts, Verdict("sendgrid", False, str(exc))]
    if isinstance(provider, SendGridAccount):
        verdicts.append(probe_sendgrid(provider))
    return verdicts
