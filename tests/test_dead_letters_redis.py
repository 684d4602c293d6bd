"""Dead letters of a Redis stream through a real `trigmail serve`: the entries the stream
refuses are in the ledger (counted alike by status and /metrics) and copied to `<stream>:dead`;
a replay adds the event to the stream again and it is decided once more."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import cast

import pytest
import redis

from tests.fake_sendgrid import FakeSendGrid
from tests.serve_harness import clean_env, ping, serve_on, status_json, wait_for
from trigmail.events import MAX_EVENT_BYTES

pytestmark = [pytest.mark.redis]


def dead_stream(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    dead = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrange(f"{stream}:dead"))
    return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in dead]


def test_stream_letters_have_one_owner_and_replay_through_the_stream(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str
) -> None:
    stream = f"trigmail-dl:{uuid.uuid4().hex[:12]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with serve_on(tmp_path, sendgrid_fake, redis_url, stream, "worker-a") as serve:
            serve.wait_ready()
            client.xadd(stream, {"data": "y" * (MAX_EVENT_BYTES + 1)})  # refused: too_large
            # The notify rule renders properties.note: without it, a template_error.
            client.xadd(stream, {"data": json.dumps(ping(5, properties={}))})

            def counted() -> bool:
                _, text = serve.get("/metrics")
                total = sum(
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("trigmail_dead_letters_total{")
                )
                return total == 2

            wait_for(counted, "two dead letters counted")
            wait_for(lambda: len(dead_stream(client, stream)) == 2, "two copies in :dead")
            ledger = tmp_path / "ledger.db"
            assert status_json(tmp_path, ledger)["dead_letters"] == 2
            reasons = sorted(d["reason"] for d in dead_stream(client, stream))
            assert reasons == ["template_error", "too_large"]

            replayed = subprocess.run(
                [sys.executable, "-m", "trigmail", "dead-letters", "replay",
                 "--config", str(tmp_path / "worker-a.yaml"), "--reason", "template_error"],
                cwd=tmp_path, env=clean_env(),  # an operator's shell: no API key, none needed
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert replayed.returncode == 0, replayed.stderr
            # Decided once more (still broken: set aside again), not skipped as a duplicate.
            wait_for(lambda: len(dead_stream(client, stream)) == 3, "the replay decided")
            assert status_json(tmp_path, ledger)["dead_letters"] == 3
            assert serve.stop() == 0
    finally:
        client.delete(stream, f"{stream}:dead")
        client.close()
