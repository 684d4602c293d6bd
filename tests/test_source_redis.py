"""The Redis stream source against a real Redis: groups, entry formats, reclaiming, dead letters
and reconnecting."""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import redis

from trigmail.errors import SourceError
from trigmail.sources import RedisStreamSource, SourceItem

WAIT_S = 5.0  # an upper bound only: reads return as soon as entries are there
EMPTY_S = 0.1

Opener = Callable[..., RedisStreamSource]


@pytest.fixture
def stream() -> str:
    return f"test:{uuid.uuid4().hex}"


@pytest.fixture
def admin(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client for producing entries and looking at the stream from outside."""
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def open_source(redis_url: str, stream: str) -> Iterator[Opener]:
    """Start sources on the test's stream; they are closed after the test."""
    made: list[RedisStreamSource] = []

    def start(consumer: str = "c1", **options: Any) -> RedisStreamSource:
        options.setdefault("block_s", 0.05)
        source = RedisStreamSource(redis_url, stream, consumer=consumer, **options)
        source.start(None)
        made.append(source)
        return source

    yield start
    for source in made:
        source.close()


def read_n(source: RedisStreamSource, count: int) -> list[SourceItem]:
    items: list[SourceItem] = []
    while len(items) < count:
        batch = source.read(count - len(items), WAIT_S)
        if not batch:
            break
        items += batch
    return items


def wait_for(condition: Callable[[], bool]) -> None:
    """Poll ``condition`` until it holds; the per-test timeout bounds the wait."""
    while not condition():
        time.sleep(0.01)


def event(n: int) -> str:
    return json.dumps({"event": "e", "user_id": f"u{n}"})


def dead_letters(admin: redis.Redis, stream: str) -> list[dict[str, str]]:
    entries = admin.xrange(f"{stream}:dead") or []
    return [{str(k): str(v) for k, v in (fields or {}).items()} for _, fields in entries]


def pending_count(admin: redis.Redis, stream: str) -> int:
    return int(admin.xpending(stream, "trigmail")["pending"])


def test_defaults_and_names() -> None:
    source = RedisStreamSource("redis://127.0.0.1:6379/15")
    assert source.consumer == f"{socket.gethostname()}-{os.getpid()}"
    assert source.name == "redis:trigmail:events"
    assert source.dead_stream == "trigmail:events:dead"
    assert source.group == "trigmail"


def test_start_creates_the_group_and_the_stream(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    assert not admin.exists(stream)
    open_source()
    open_source("c2")  # a second worker joins the existing group
    assert admin.exists(stream)
    assert [group["name"] for group in admin.xinfo_groups(stream)] == ["trigmail"]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # the data field holds the whole event
        ({"data": '{"event": "x", "n": 1}', "other": "ignored"}, {"event": "x", "n": 1}),
        # flat fields are the event, values stay strings
        ({"event": "x", "user_id": "u1", "n": "1"}, {"event": "x", "user_id": "u1", "n": "1"}),
        # dotted names build nested objects
        (
            {"event": "x", "user.first_name": "Ana", "properties.cart.value": "82.5"},
            {
                "event": "x",
                "user": {"first_name": "Ana"},
                "properties": {"cart": {"value": "82.5"}},
            },
        ),
        # colliding names are all kept flat
        ({"user": "u1", "user.name": "Ana"}, {"user": "u1", "user.name": "Ana"}),
        # an empty name part is not nested either
        ({"user.": "x"}, {"user.": "x"}),
    ],
)
def test_data_field_and_flat_fields(
    open_source: Opener, admin: redis.Redis, stream: str, fields: Any, expected: object
) -> None:
    entry_id = str(admin.xadd(stream, fields))
    (item,) = read_n(open_source(), 1)
    assert json.loads(item.data) == expected
    assert (item.position, item.ref) == (entry_id, f"{stream} {entry_id}")


def test_data_field_is_delivered_byte_for_byte(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    admin.xadd(stream, {"data": '{ "event" :"x" }'})
    assert [item.data for item in read_n(open_source(), 1)] == [b'{ "event" :"x" }']


def test_pending_entries_of_a_dead_consumer_are_claimed(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    admin.xadd(stream, {"data": event(1)})
    admin.xadd(stream, {"data": event(2)})
    dead = open_source("dead", min_idle_s=0.05)
    assert len(read_n(dead, 2)) == 2
    dead.close()  # killed before its commit: nothing acknowledged

    survivor = open_source("survivor", min_idle_s=0.05)
    items = read_n(survivor, 2)
    assert [item.data.decode() for item in items] == [event(1), event(2)]
    assert [item.deliveries for item in items] == [2, 2]
    owners = {p["consumer"] for p in admin.xpending_range(stream, "trigmail", "-", "+", 10)}
    assert owners == {"survivor"}
    survivor.ack(items)
    assert pending_count(admin, stream) == 0


def test_entry_delivered_too_often_goes_to_the_dead_stream(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    entry_id = str(admin.xadd(stream, {"data": "poison"}))
    for deliveries in (1, 2):
        worker = open_source(max_deliveries=2)
        (item,) = read_n(worker, 1)
        assert item.deliveries == deliveries
        worker.close()  # crashed while deciding it
    admin.xadd(stream, {"data": event(1)})

    worker = open_source(max_deliveries=2)
    refused, good = read_n(worker, 2)
    assert good.data.decode() == event(1)
    assert refused.refused is not None and refused.refused[0] == "too_many_deliveries"
    # Refused, not set aside: the daemon puts it in the ledger, then in the dead stream.
    assert dead_letters(admin, stream) == []
    worker.dead_letter(refused, *refused.refused)
    (letter,) = dead_letters(admin, stream)
    assert letter["reason"] == "too_many_deliveries"
    assert letter["raw"] == "poison"
    assert letter["ref"] == f"{stream} {entry_id}"
    assert letter["consumer"] == "c1"
    assert {"detail", "at"} <= letter.keys()
    assert pending_count(admin, stream) == 1  # only the good entry, not yet acknowledged


def test_entry_decided_by_two_workers_is_set_aside_once(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    # A slow worker still holds the entry when another claims it: both decide it bad.
    admin.xadd(stream, {"data": "not json"})
    slow = open_source("slow")
    (held,) = read_n(slow, 1)
    other = open_source("other", min_idle_s=0.05)
    (claimed,) = read_n(other, 1)
    other.dead_letter(claimed, "invalid_json", "claimed and decided first")
    slow.dead_letter(held, "invalid_json", "decided second")

    (letter,) = dead_letters(admin, stream)
    assert letter["consumer"] == "other"
    assert pending_count(admin, stream) == 0


def test_pending_entry_deleted_from_the_stream_is_acknowledged(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    entry_id = admin.xadd(stream, {"data": event(1)})
    worker = open_source()
    assert len(read_n(worker, 1)) == 1
    worker.close()
    admin.xdel(stream, entry_id)
    assert open_source().read(10, EMPTY_S) == []
    assert pending_count(admin, stream) == 0


def _blocked_client_id(admin: redis.Redis, consumer: str) -> str | None:
    for client in admin.client_list():
        # Blocked now ("b"), not only last seen running XREADGROUP: a read first asks for its
        # pending entries without blocking, and a kill between the two is reconnected silently.
        blocked = "b" in client["flags"]
        if client["name"] == f"trigmail:{consumer}" and client["cmd"] == "xreadgroup" and blocked:
            return str(client["id"])
    return None


def test_reconnects_after_its_connection_is_killed(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    # A name of its own: the client list is the whole server's, where other test processes
    # (and other suites) block reads of their own consumer "c1" too.
    consumer = f"c-{uuid.uuid4().hex[:12]}"
    # Long enough to be seen blocked on a loaded machine; the kill ends it.
    block_s = 60.0
    source = open_source(consumer, block_s=block_s)
    errors: list[SourceError] = []

    def blocked_read() -> None:
        try:
            source.read(10, block_s)
        except SourceError as exc:
            errors.append(exc)

    reader = threading.Thread(target=blocked_read)
    reader.start()
    wait_for(lambda: _blocked_client_id(admin, consumer) is not None)
    admin.client_kill_filter(_id=_blocked_client_id(admin, consumer))
    reader.join()
    assert len(errors) == 1
    assert "ConnectionError" in str(errors[0])

    admin.xadd(stream, {"data": event(1)})
    assert [item.data.decode() for item in read_n(source, 1)] == [event(1)]


@pytest.mark.parametrize(
    "url",
    [
        # nothing listens there
        "redis://:hunter2@127.0.0.1:1/0",
        # the real server refuses the user and password
        "redis://nobody:hunter2@127.0.0.1:6379/15",
    ],
)
def test_errors_and_logs_never_show_the_password(
    redis_url: str, url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    source = RedisStreamSource(url, consumer="c1")
    source.start(None)  # logged, not raised: the reads try again
    with pytest.raises(SourceError) as raised:
        source.read(1, WAIT_S)
    health = source.health()
    source.close()
    assert health is not None and health.startswith("redis unreachable since ")
    shown = "".join(traceback.format_exception(raised.value)) + caplog.text + health
    assert "hunter2" not in shown
    assert ":<secret>@127.0.0.1" in str(raised.value)


def test_recovers_after_the_stream_and_group_are_deleted(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    source = open_source()
    assert source.read(10, EMPTY_S) == []
    admin.delete(stream)
    with pytest.raises(SourceError, match="NOGROUP"):
        source.read(10, EMPTY_S)
    admin.xadd(stream, {"data": event(1)})  # the producer recreates the stream, not the group
    assert [item.data.decode() for item in read_n(source, 1)] == [event(1)]


def _entry_time(entry_id: str) -> datetime:
    return datetime.fromtimestamp(int(entry_id.split("-", maxsplit=1)[0]) / 1000, UTC)


def _server_now(admin: redis.Redis) -> datetime:
    seconds, micros = admin.time()
    return datetime.fromtimestamp(seconds + micros / 1e6, UTC)


def test_the_watermark_is_the_groups_oldest_entry_not_acknowledged_by_anyone(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    first, second = open_source("w1"), open_source("w2")
    before = _server_now(admin)
    assert first.watermark() is not None and first.watermark() >= before  # type: ignore[operator]
    # Explicit ids, a second apart, stand for entries added at those moments.
    base_ms = int(before.timestamp() * 1000) - 10_000
    ids = [f"{base_ms + 1000 * n}-0" for n in range(4)]
    for entry_id, n in zip(ids, range(4), strict=True):
        admin.xadd(stream, {"data": event(n)}, id=entry_id)
    # Nothing delivered yet: the first entry holds it, for every member of the group.
    assert first.watermark() == second.watermark() == _entry_time(ids[0])
    held_by_first = read_n(first, 1)
    taken_by_second = read_n(second, 2)
    assert [i.position for i in held_by_first + taken_by_second] == ids[:3]
    second.ack(taken_by_second)
    # w1 holds the oldest entry (it may have died holding it): the watermark stays there.
    assert second.watermark() == _entry_time(ids[0])
    first.ack(held_by_first)
    assert second.watermark() == _entry_time(ids[3])  # delivered to no one yet
    first.ack(read_n(first, 1))
    assert first.watermark() >= before  # type: ignore[operator]


def test_the_watermark_is_unknown_while_redis_is_unreachable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    source = RedisStreamSource(f"redis://127.0.0.1:{port}/0", "s", block_s=0.05)
    assert source.watermark() is None
    source.close()


def test_entries_carry_their_stream_order(
    open_source: Opener, admin: redis.Redis, stream: str
) -> None:
    source = open_source()
    admin.xadd(stream, {"data": event(1)}, id="9-1")
    admin.xadd(stream, {"data": event(2)}, id="10-0")
    orders = [item.order or "" for item in read_n(source, 2)]
    assert orders == sorted(orders) and all(orders)
