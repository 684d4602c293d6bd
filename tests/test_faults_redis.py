"""Redis restarted under a running daemon: it reconnects with back-off and loses nothing.

A private ``redis-server`` (tests/reliability/redis_server.py) is restarted, never the shared
one; the ``redis_url`` fixture still gates the test, so that CI, which must have Redis, fails
rather than skips when it is missing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import redis

from tests.fake_sendgrid import FakeSendGrid
from tests.faults_helpers import keys, make_rules, ping
from tests.reliability.redis_server import RedisServer
from tests.serve_harness import Serve, clean_env, sends, wait_for, write_config
from trigmail.ledger.base import SendState

pytestmark = [pytest.mark.slow, pytest.mark.redis]

STREAM = "trigmail:events"


def add(url: str, numbers: range) -> None:
    client = redis.Redis.from_url(url)
    try:
        for n in numbers:
            client.xadd(STREAM, {"data": json.dumps(ping(n))})
    finally:
        client.close()


def wait_sent(ledger: Path, expected: set[str]) -> None:
    def done() -> bool:
        found = sends(ledger)
        return all(k in found and found[k].state is SendState.SENT for k in expected)

    wait_for(done, f"{len(expected)} sends to be sent", 30)


def test_redis_restarted_under_serve_reconnects_and_loses_nothing(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str
) -> None:
    if not RedisServer.available():
        pytest.fail("redis-server is not installed: the Redis restart case cannot run")
    make_rules(tmp_path)
    ledger = tmp_path / "ledger.db"
    with RedisServer(tmp_path / "redis") as server:
        source = {"redis": {"url": server.url, "stream": STREAM, "block": 0.2}}
        config = write_config(
            tmp_path / "trigmail.yaml",
            fake_url=sendgrid_fake.url,
            source=source,
            rules_dir=tmp_path / "rules",
            ledger=ledger,
        )
        args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
        env = clean_env({"SENDGRID_API_KEY": sendgrid_fake.api_key})
        with Serve(tmp_path, args, env) as serve:
            serve.wait_ready()
            add(server.url, range(10))
            wait_sent(ledger, keys(range(10)))
            mark = serve.mark()
            # Entries added just before the crash may be read, and not yet acknowledged.
            add(server.url, range(10, 20))
            server.kill()
            serve.wait_line(r"source redis:\S+: .*retrying", after=mark)
            mark = serve.mark()
            server.start()
            serve.wait_line(r"source redis:\S+: connected to", after=mark, timeout_s=30)
            add(server.url, range(20, 30))
            wait_sent(ledger, keys(range(30)))
            assert serve.stop() == 0
        client = redis.Redis.from_url(server.url)
        try:
            assert client.xpending(STREAM, "trigmail")["pending"] == 0
        finally:
            client.close()
    assert Counter(sendgrid_fake.accepted_keys()) == Counter(keys(range(30)))
