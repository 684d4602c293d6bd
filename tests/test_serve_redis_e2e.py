"""End to end: the real ``trigmail serve`` on a real Redis stream, against the fake SendGrid."""

from __future__ import annotations

import json
import signal
import sqlite3
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.typing import EncodableT, FieldT

from tests.fake_sendgrid import FakeSendGrid
from tests.serve_harness import GROUP, ping, serve_on, wait_for, wait_sent

pytestmark = [pytest.mark.slow, pytest.mark.redis]


def entry_id(reply: bytes | str) -> str:
    return reply.decode() if isinstance(reply, bytes) else reply


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        conn.close()


@pytest.fixture
def stream() -> str:
    return f"trigmail-e2e:{uuid.uuid4().hex[:12]}"


def test_stream_entries_are_sent_and_bad_ones_set_aside(
    tmp_path: Path,
    sendgrid_fake: FakeSendGrid,
    redis_url: str,
    client: redis.Redis,
    stream: str,
) -> None:
    flat: dict[FieldT, EncodableT] = {
        "id": "p2",
        "event": "ping",
        "user_id": "u2",
        "email": "u2@example.com",
        "user.first_name": "Flat",
        "properties.note": "from flat fields",
    }
    client.xadd(stream, {"data": json.dumps(ping(1))})
    client.xadd(stream, flat)
    bad: dict[FieldT, EncodableT] = {"data": "not json"}
    bad_id = entry_id(client.xadd(stream, bad))
    missing_id = entry_id(client.xadd(stream, {"event": "ping", "email": "x@example.com"}))
    with serve_on(tmp_path, sendgrid_fake, redis_url, stream, "worker-a") as serve:
        serve.wait_ready()
        wait_sent(tmp_path / "ledger.db", ["notify:p1", "notify:p2"])
        client.xadd(stream, {"data": json.dumps(ping(3))})
        wait_sent(tmp_path / "ledger.db", ["notify:p3"])
        assert serve.stop() == 0

    assert sorted(sendgrid_fake.accepted_keys()) == ["notify:p1", "notify:p2", "notify:p3"]
    [flat_data] = [
        p["dynamic_template_data"]
        for body in sendgrid_fake.accepted
        for p in body["personalizations"]
        if p["custom_args"]["trigmail_key"] == "notify:p2"
    ]
    assert flat_data == {"name": "Flat", "note": "from flat fields"}

    dead = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(f"{stream}:dead"))
    letters = [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in dead]
    assert [(d["ref"], d["reason"]) for d in letters] == [
        (f"{stream} {bad_id}", "invalid_json"),
        (f"{stream} {missing_id}", "missing_field"),
    ]
    assert letters[0]["raw"] == "not json"
    assert all(d["detail"] for d in letters)
    # Everything was acknowledged: nothing stays pending in the group.
    assert client.xpending(stream, GROUP)["pending"] == 0


def test_a_killed_consumers_pending_entries_are_claimed_by_another(
    tmp_path: Path,
    sendgrid_fake: FakeSendGrid,
    redis_url: str,
    client: redis.Redis,
    stream: str,
) -> None:
    ledger = tmp_path / "ledger.db"
    keys = [f"notify:p{n}" for n in range(5)]
    with serve_on(tmp_path, sendgrid_fake, redis_url, stream, "worker-a") as first:
        first.wait_ready()
        # Hold the ledger's write lock: worker-a reads the entries but cannot commit them,
        # so they stay pending with it when it is killed.
        lock = sqlite3.connect(ledger, isolation_level=None)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            # Added atomically, so that worker-a reads all five in one XREADGROUP.
            adding = client.pipeline(transaction=True)
            for n in range(5):
                adding.xadd(stream, {"data": json.dumps(ping(n))})
            adding.execute()

            def pending_with_a() -> bool:
                consumers = client.xpending(stream, GROUP)["consumers"]
                return {c["name"]: c["pending"] for c in consumers} == {b"worker-a": 5}

            wait_for(pending_with_a, "5 entries pending with worker-a")
            first.signal(signal.SIGKILL)
            assert first.wait_exit() == -signal.SIGKILL
        finally:
            lock.execute("ROLLBACK")
            lock.close()
    assert sendgrid_fake.requests == []

    with serve_on(tmp_path, sendgrid_fake, redis_url, stream, "worker-b") as second:
        second.wait_ready()
        found = wait_sent(ledger, keys)
        second.wait_line(r"claimed 5 idle entries")
        assert second.stop() == 0

    assert set(found) == set(keys)
    assert Counter(sendgrid_fake.accepted_keys()) == Counter(keys)
    assert client.xpending(stream, GROUP)["pending"] == 0
