"""Where the harness writes events, as a producer would: a spool file or a Redis stream.

Each feed also reads back its dead-letter place and says whether the daemon has consumed
everything written so far (the harness's drain and rotation wait on that, by polling).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import redis

# The share of writes whose last line is left without its tail until the next write.
HALF_LINE_CHANCE = 0.3
# The most pending entries a drain failure lists (their count is whole).
LEFT_SHOWN = 20


@dataclass
class Outages:
    """Seeded outages: at each moment (lines fed) every daemon is stopped for ``length_s``
    while the feeding goes on, so the daemons start on a backlog, as after a real outage."""

    at: list[int]
    length_s: float
    down_until: float | None = None

    @property
    def down(self) -> bool:
        return self.down_until is not None

    def begins(self, fed: int) -> bool:
        """Whether an outage begins now (the caller stops the daemons)."""
        if self.down or not self.at or self.at[0] > fed:
            return False
        self.at.pop(0)
        self.down_until = time.monotonic() + self.length_s
        return True

    def ends(self, last: bool = False) -> bool:
        """Whether the outage under way is over (the caller starts the daemons). After the
        ``last`` write, it lasts out its length first: the backlog is its whole length's."""
        if self.down_until is None:
            return False
        left_s = self.down_until - time.monotonic()
        if left_s > 0 and not last:
            return False
        if left_s > 0:
            time.sleep(left_s)  # the outage's length, not a synchronisation
        self.down_until = None
        return True


class Feed(Protocol):
    """A place events are written to, and read back from by the checks."""

    replays: bool  # whether the source may deliver an entry again after a kill

    def source(self) -> dict[str, Any]: ...
    def write(self, lines: list[str]) -> None: ...
    def settle(self) -> None: ...
    def consumed(self, ledger: Path) -> bool: ...
    def backlog(self, ledger: Path) -> str: ...
    def dead(self) -> Counter[tuple[str, str]]: ...


class SpoolFeed:
    """Appends to a spool; may leave a line half-written; rotates by rename or truncation.

    Args:
        path: the spool.
        rng: decides which writes leave a half line, and where it is cut.
        half_lines: whether to leave half-written lines at all.
    """

    replays = False

    def __init__(self, path: Path, rng: random.Random, half_lines: bool = True) -> None:
        self.path = path
        self.rng = rng
        self.half_lines = half_lines
        self.rotations = 0
        self._tail = b""

    def source(self) -> dict[str, Any]:
        return {"spool": str(self.path)}

    def write(self, lines: list[str]) -> None:
        data = self._tail + "".join(line + "\n" for line in lines).encode()
        self._tail = b""
        if self.half_lines and self.rng.random() < HALF_LINE_CHANCE:
            last = len(lines[-1].encode()) + 1
            cut = len(data) - self.rng.randint(1, last)
            data, self._tail = data[:cut], data[cut:]
        self._append(data)

    def settle(self) -> None:
        """Finish the half-written line, if any."""
        if self._tail:
            self._append(self._tail)
            self._tail = b""

    def _append(self, data: bytes) -> None:
        with self.path.open("ab") as file:
            file.write(data)

    def consumed(self, ledger: Path) -> bool:
        """Whether the committed position is the end of the file (or the file is empty)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return True
        if stat.st_size == 0:
            return True
        position = _spool_position(ledger, f"spool:{self.path.absolute()}")
        return position is not None and (position["inode"], position["offset"]) == (
            stat.st_ino,
            stat.st_size,
        )

    def backlog(self, ledger: Path) -> str:
        """What is left to consume, for a drain failure: the file against the position."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return f"spool {self.path}: missing"
        position = _spool_position(ledger, f"spool:{self.path.absolute()}")
        return f"spool {self.path}: inode {stat.st_ino}, {stat.st_size} bytes; committed {position}"

    def rotate(self, how: str) -> None:
        """Rotate as logrotate would: ``rename`` (then create) or ``truncate`` (copytruncate).

        Call only once the daemon consumed the file: lines it had not read would be lost to it
        by truncation, and by a rename too if it were killed before draining the old file.
        """
        self.settle()
        self.rotations += 1
        rotated = self.path.with_name(f"{self.path.name}.{self.rotations}")
        if how == "rename":
            self.path.rename(rotated)
            self.path.touch()
        else:
            shutil.copyfile(self.path, rotated)
            os.truncate(self.path, 0)

    def dead(self) -> Counter[tuple[str, str]]:
        dead_path = self.path.with_name(f"{self.path.stem}.dead.jsonl")
        if not dead_path.exists():
            return Counter()
        letters = [json.loads(line) for line in dead_path.read_text().splitlines()]
        return Counter((letter["raw"], letter["reason"]) for letter in letters)


def _spool_position(ledger: Path, source: str) -> dict[str, Any] | None:
    if not ledger.exists():
        return None
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT position FROM positions WHERE source = ?", (source,)).fetchone()
    except sqlite3.OperationalError:  # the daemon has not created the schema yet
        return None
    finally:
        conn.close()
    return None if row is None else cast(dict[str, Any], json.loads(row[0]))


class RedisFeed:
    """``XADD``s each line as the ``data`` field of one entry of a stream.

    Args:
        url: the Redis server.
        stream: the stream (unique per run: the server may be shared).
        group: the daemon's consumer group.
    """

    replays = True

    def __init__(self, url: str, stream: str, group: str = "trigmail") -> None:
        self.url = url
        self.stream = stream
        self.group = group
        self.client = redis.Redis.from_url(url)

    def source(self) -> dict[str, Any]:
        # consumer: a stable name, as docs/scaling.md asks, so a restarted daemon reads the
        # entries it had not acknowledged first, in order (under a new name they would wait
        # min_idle and be decided after later ones: a cancel could overtake its trigger).
        # min_idle: a killed consumer's entries are claimed soon; max_deliveries: a run kills
        # often, and an entry caught by several kills must not be set aside for it.
        return {
            "redis": {
                "url": self.url,
                "stream": self.stream,
                "group": self.group,
                "consumer": "reliability-worker",
                "block": 0.2,
                "min_idle": 1.0,
                "max_deliveries": 1000,
            }
        }

    def write(self, lines: list[str]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for line in lines:
            pipe.xadd(self.stream, {"data": line})
        pipe.execute()

    def settle(self) -> None:
        """Nothing is ever half-written to a stream."""

    def consumed(self, ledger: Path) -> bool:
        """Whether the group has been handed every entry and acknowledged all of them."""
        try:
            groups = self.client.xinfo_groups(self.stream)
            last = self.client.xinfo_stream(self.stream)["last-generated-id"]
        except redis.RedisError:
            return False
        for group in groups:
            if group["name"].decode() == self.group:
                return bool(group["pending"] == 0 and group["last-delivered-id"] == last)
        return False

    def backlog(self, ledger: Path) -> str:
        """What is left to consume, for a drain failure: the group's delivery point against
        the stream's end, each consumer's pending count, and the first pending entries."""
        try:
            stream = self.client.xinfo_stream(self.stream)
            groups = self.client.xinfo_groups(self.stream)
            consumers = self.client.xinfo_consumers(self.stream, self.group)
            pending = self.client.xpending_range(
                self.stream, self.group, min="-", max="+", count=LEFT_SHOWN
            )
        except redis.RedisError as exc:
            return f"stream {self.stream}: {type(exc).__name__}: {exc}"
        last = _text(stream["last-generated-id"])
        lines = [f"stream {self.stream}: {stream['length']} entries, the last {last}"]
        for group in groups:
            lines.append(
                f"  group {_text(group['name'])}: pending {group['pending']},"
                f" last delivered {_text(group['last-delivered-id'])}, lag {group.get('lag')}"
            )
        for consumer in consumers:
            lines.append(
                f"  consumer {_text(consumer['name'])}: pending {consumer['pending']},"
                f" idle {consumer['idle']}ms"
            )
        for entry in pending:
            lines.append(
                f"  pending {_text(entry['message_id'])} with {_text(entry['consumer'])}:"
                f" idle {_text(entry['time_since_delivered'])}ms,"
                f" delivered {_text(entry['times_delivered'])} times"
            )
        return "\n".join(lines)

    def dead(self) -> Counter[tuple[str, str]]:
        entries = cast(
            list[tuple[bytes, dict[bytes, bytes]]], self.client.xrange(f"{self.stream}:dead")
        )
        return Counter(
            (fields[b"raw"].decode(), fields[b"reason"].decode()) for _, fields in entries
        )

    def close(self) -> None:
        self.client.close()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
