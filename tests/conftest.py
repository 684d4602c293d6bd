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


@pytest.fixture
def postgres_dsn() -> Iterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test."""
    require_server("PostgreSQL", POSTGRES_HOST, POSTGRES_PORT)
    import uuid

    import psycopg

    admin = f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/postgres"
    name = f"trigmail_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://postgres@{POSTGRES_HOST}:{POSTGRES_PORT}/{name}"
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def t0() -> datetime:
    """A fixed instant tests count from."""
    return datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
