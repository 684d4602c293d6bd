"""Dead letters for operators: list them from the ledger (their one owner), and replay them.

Every dead letter is in the ledger, whoever refused the event (the spool, the stream, the
parser, a rule): the spool's file and the stream's ``:dead`` copies are written after the
ledger's commit, for tools that read them. A letter is named by a short hash of where it was
read and why it was set aside, stable across runs.

A replay delivers the event again through the configured source (a line appended to the
spool, an entry added to the stream) and allows its id one more decision (trigmail/replays.py),
so a running ``serve`` decides it under the rules in force now; keys are kept, so nothing the
event already sent is sent twice.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from trigmail.config import Config, RedisConfig
from trigmail.decisions import Reason
from trigmail.errors import BadEventError
from trigmail.events import Event, format_ts, parse_event
from trigmail.files import open_regular
from trigmail.ledger.base import DeadLetter, Ledger
from trigmail.replays import allow_replay

# How many letters are read to find the ones asked for (the newest first).
SCAN_LIMIT: Final = 100_000

# A letter whose raw holds only the start of the event: replaying it cannot give the event back.
PARTIAL_RAW: Final = frozenset({Reason.LINE_TOO_LONG.value, Reason.TOO_LARGE.value})


@dataclass(frozen=True)
class Letter:
    """A dead letter with its id."""

    id: str
    letter: DeadLetter

    def to_json(self, *, raw: bool = False) -> dict[str, Any]:
        d = self.letter
        obj: dict[str, Any] = {
            "id": self.id,
            "at": format_ts(d.at),
            "source": d.source,
            "ref": d.position,
            "reason": d.reason,
            "detail": d.detail,
        }
        if raw:
            obj["raw"] = d.raw
        return obj


def letter_id(letter: DeadLetter) -> str:
    """A short id, the same on every run, for one letter."""
    text = "\0".join((letter.source, letter.position, letter.reason, format_ts(letter.at)))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def read_letters(ledger: Ledger, limit: int = SCAN_LIMIT) -> list[Letter]:
    """The ledger's letters, newest first."""
    return [Letter(letter_id(d), d) for d in ledger.dead_letters(limit)]


def select(
    letters: Iterable[Letter],
    ids: Sequence[str] = (),
    reason: str | None = None,
    since: datetime | None = None,
) -> list[Letter]:
    """The letters matching every filter given; an id may be abbreviated to a prefix."""
    chosen = []
    for letter in letters:
        if ids and not any(letter.id.startswith(i) for i in ids):
            continue
        if reason is not None and letter.letter.reason != reason:
            continue
        if since is not None and letter.letter.at < since:
            continue
        chosen.append(letter)
    return chosen


@dataclass(frozen=True)
class Replayed:
    """What a replay did with one letter: ``event_id`` once it was delivered again."""

    letter: Letter
    event_id: str | None
    problem: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.letter.id,
            "event_id": self.event_id,
            "replayed": self.problem is None,
            "problem": self.problem,
        }


def event_of(letter: Letter, now: datetime) -> Event | str:
    """The letter's event, or why it cannot be replayed."""
    if letter.letter.reason in PARTIAL_RAW:
        return f"{letter.letter.reason}: the letter keeps only the start of the event"
    try:
        return parse_event(letter.letter.raw.encode(), now)
    except BadEventError as exc:
        return f"still not an event: {exc.reason}: {exc.detail}"


def _deliver(config: Config, raws: Sequence[str]) -> None:
    """Deliver the events again through the configured source."""
    if isinstance(config.source, RedisConfig):
        _deliver_redis(config.source, raws)
        return
    # One write of whole lines: a producer appending at the same time cannot interleave.
    data = "".join(raw.rstrip("\n") + "\n" for raw in raws).encode()
    fd = open_regular(config.source.path, os.O_WRONLY | os.O_APPEND, create=True)
    with os.fdopen(fd, "ab") as spool:
        spool.write(data)
        spool.flush()
        os.fsync(spool.fileno())


def _deliver_redis(source: RedisConfig, raws: Sequence[str]) -> None:
    import redis

    from trigmail.sources import keys

    client = redis.Redis.from_url(source.url)
    try:
        pipe = client.pipeline(transaction=False)
        for raw in raws:
            pipe.xadd(source.stream, {keys.DATA_FIELD: raw.encode()})
        pipe.execute()
    finally:
        client.close()


def replay(
    config: Config, ledger: Ledger, letters: Sequence[Letter], now: datetime
) -> list[Replayed]:
    """Allow each letter's event one more decision, then deliver it again.

    The allowances are committed before the events are delivered: a serve reading one
    finds its allowance. A letter whose event cannot be had back is reported, not replayed.
    """
    results: list[Replayed] = []
    ready: list[tuple[Letter, Event]] = []
    for letter in letters:
        event = event_of(letter, now)
        if isinstance(event, str):
            results.append(Replayed(letter, None, event))
        else:
            ready.append((letter, event))
    with ledger.transaction() as txn:
        for letter, event in ready:
            # Only an event already decided needs one: a letter the source refused was not.
            if txn.seen_event(event.id):
                allow_replay(txn, event.id, letter.id, now)
    _deliver(config, [letter.letter.raw for letter, _ in ready])
    results.extend(Replayed(letter, event.id, None) for letter, event in ready)
    return results


def dry_run_lines(letters: Sequence[Letter]) -> list[bytes]:
    """The letters' raw events, oldest first, for ``simulate``."""
    ordered = sorted(letters, key=lambda letter: letter.letter.at)
    return [letter.letter.raw.encode() for letter in ordered]
