"""One contract, run against every source: the spool on tmp_path and a real Redis stream."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import pytest
import redis

from trigmail.sources import RedisStreamSource, Source, SourceItem, SpoolSource

WAIT_S = 5.0  # an upper bound only: reads return as soon as items are there
EMPTY_S = 0.1


class Harness(Protocol):
    """What the contract needs of a source: make one, feed it, and look at its dead letters."""

    def new_source(self) -> Source: ...

    def produce(self, data: bytes) -> None: ...

    def dead_letters(self) -> list[dict[str, str]]: ...


class SpoolHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "events.jsonl"
        self.sources: list[Source] = []

    def new_source(self) -> Source:
        source = SpoolSource(self.path, poll_s=0.01)
        self.sources.append(source)
        return source

    def produce(self, data: bytes) -> None:
        with self.path.open("ab") as spool:
            spool.write(data + b"\n")

    def dead_letters(self) -> list[dict[str, str]]:
        dead = self.path.with_name("events.dead.jsonl")
        lines = dead.read_text(encoding="utf-8").splitlines() if dead.exists() else []
        return [json.loads(line) for line in lines]


class RedisHarness:
    def __init__(self, url: str) -> None:
        self.url = url
        self.stream = f"test:{uuid.uuid4().hex}"
        self.client = redis.Redis.from_url(url, decode_responses=True)
        self.sources: list[Source] = []

    def new_source(self) -> Source:
        # One consumer name throughout: a restarted worker gets its own pending entries back.
        source = RedisStreamSource(self.url, self.stream, consumer="c1", block_s=0.05)
        self.sources.append(source)
        return source

    def produce(self, data: bytes) -> None:
        self.client.xadd(self.stream, {"data": data})

    def dead_letters(self) -> list[dict[str, str]]:
        entries = self.client.xrange(f"{self.stream}:dead") or []
        return [{str(k): str(v) for k, v in (fields or {}).items()} for _, fields in entries]


@pytest.fixture(params=["spool", "redis"])
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    made: SpoolHarness | RedisHarness
    if request.param == "spool":
        made = SpoolHarness(tmp_path)
    else:
        made = RedisHarness(request.getfixturevalue("redis_url"))
    yield made
    for source in made.sources:
        source.close()
    if isinstance(made, RedisHarness):
        made.client.close()


def started(harness: Harness, position: str | None = None) -> Source:
    source = harness.new_source()
    source.start(position)
    return source


def read_n(source: Source, count: int) -> list[SourceItem]:
    """Read until ``count`` items came, or a read timed out."""
    items: list[SourceItem] = []
    while len(items) < count:
        batch = source.read(count - len(items), WAIT_S)
        if not batch:
            break
        items += batch
    return items


def event(n: int) -> bytes:
    return json.dumps({"event": "e", "user_id": f"u{n}"}).encode()


def test_read_returns_items_in_order(harness: Harness) -> None:
    for n in range(5):
        harness.produce(event(n))
    source = started(harness)
    items = read_n(source, 5)
    assert [item.data for item in items] == [event(n) for n in range(5)]
    assert all(item.deliveries == 1 for item in items)
    assert len({item.ref for item in items}) == 5


def test_read_respects_max_items(harness: Harness) -> None:
    for n in range(3):
        harness.produce(event(n))
    source = started(harness)
    assert [item.data for item in source.read(2, WAIT_S)] == [event(0), event(1)]
    assert [item.data for item in source.read(2, WAIT_S)] == [event(2)]


def test_read_times_out_empty(harness: Harness) -> None:
    source = started(harness)
    assert source.read(10, EMPTY_S) == []
    harness.produce(event(1))
    assert [item.data for item in source.read(10, WAIT_S)] == [event(1)]
    assert source.read(10, EMPTY_S) == []


def test_read_waits_for_an_item_produced_meanwhile(harness: Harness) -> None:
    source = started(harness)
    producer = threading.Thread(target=harness.produce, args=(event(7),))
    producer.start()
    try:
        items = read_n(source, 1)
    finally:
        producer.join()
    assert [item.data for item in items] == [event(7)]


def test_committed_position_resumes_after_restart(harness: Harness) -> None:
    for n in range(3):
        harness.produce(event(n))
    source = started(harness)
    items = read_n(source, 3)
    # The daemon committed the first two items only, then stopped.
    committed = items[1].position
    source.ack(items[:2])
    source.close()
    harness.produce(event(3))

    again = started(harness, committed)
    items = read_n(again, 2)
    assert [item.data for item in items] == [event(2), event(3)]
    assert again.read(10, EMPTY_S) == []


def test_dead_letter_sets_the_item_aside_with_its_reason(harness: Harness) -> None:
    harness.produce(b"not json")
    harness.produce(event(1))
    source = started(harness)
    bad, good = read_n(source, 2)
    source.dead_letter(bad, "invalid_json", "not JSON: Expecting value")
    source.ack([good])

    letters = harness.dead_letters()
    assert len(letters) == 1
    assert letters[0]["reason"] == "invalid_json"
    assert letters[0]["detail"] == "not JSON: Expecting value"
    assert letters[0]["raw"] == "not json"
    assert letters[0]["ref"] == bad.ref
    assert letters[0]["at"].endswith("Z")


def test_start_without_position_reads_from_the_beginning(harness: Harness) -> None:
    harness.produce(event(1))
    harness.produce(event(2))
    source = started(harness, None)
    assert [item.data for item in read_n(source, 2)] == [event(1), event(2)]
