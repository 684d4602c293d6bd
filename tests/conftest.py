"""Shared fixtures. Real servers: skip when absent locally, fail when ``CI`` is set."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

# The SendGrid fake's fixture (`sendgrid_fake`) and the ledger fixtures (`ledger`, over every
# implementation, and its `clock`) for every test module.
pytest_plugins = ("tests.fake_sendgrid", "tests.ledger_helpers")

REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
POSTGRES_HOST, POSTGRES_PORT = "127.0.0.1", 5432
_POSTGRES_ADMIN = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_server(name: str, host: str, port: int) -> None:
    """Skip (locally) or fail (under CI) when a real server the test needs is not there."""
    if _reachable(host, port):
        return
    message = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run every test against a real {name}")
    pytest.skip(f"{message}; start it to run this test (CI fails instead of skipping)")


@pytest.fixture
def redis_url(worker_id: str) -> str:
    """A real Redis database of this test process's own (15, then 14, … per xdist worker).
    Tests name their keys uniquely instead of flushing it, so suites running side by side on
    one server do not wipe each other's streams either."""
    require_server("Redis", REDIS_HOST, REDIS_PORT)
    worker = int(worker_id.removeprefix("gw")) if worker_id.startswith("gw") else 0
    return f"redis://{REDIS_HOST}:{REDIS_PORT}/{15 - worker % 8}"


@pytest.fixture(scope="session")
def _postgres_database(worker_id: str) -> Iterator[str]:
    """This test process's own PostgreSQL database, created once and dropped at the end: a
    database takes ~0.1 s to create and drop on a quiet machine and much more beside other
    suites, where emptying its schema takes milliseconds."""
    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import uuid

    import psycopg

    name = f"trigmail_test_{worker_id}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with psycopg.connect(_POSTGRES_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def postgres_dsn(_postgres_database: str) -> str:
    """A fresh, empty PostgreSQL database: this process's own, emptied before the test (no
    connection left from an earlier test, no setting, an empty ``public`` schema)."""
    import psycopg

    name = _postgres_database
    with psycopg.connect(_POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        )
        conn.execute(f'ALTER DATABASE "{name}" RESET ALL')
    dsn = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return dsn


@pytest.fixture
def t0() -> datetime:
    """A fixed instant tests count from."""
    return datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def _start_rank(item: pytest.Item, default_timeout_s: float) -> int:
    """0 for the longest runs (those allowed more than the default timeout), 1 for the other
    ``slow`` ones, 2 for the rest."""
    timeout = item.get_closest_marker("timeout")
    if timeout is not None and timeout.args and timeout.args[0] > default_timeout_s:
        return 0
    return 1 if item.get_closest_marker("slow") else 2


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest first: the xdist workers (fed one test at a time, see the Makefile) then end
    together on short tests instead of one worker finishing a 30 s run alone."""
    default_timeout_s = float(config.getini("timeout"))
    items.sort(key=lambda item: _start_rank(item, default_timeout_s))
