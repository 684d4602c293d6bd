"""A seeded stream of event lines for the reliability runs, each line tagged with what it is.

The outcomes the oracle predicts depend on the order the lines were written and on when, never
on how fast the daemon reads or when it is killed. A ``cancel`` travels in the same write as the
``browse`` it cancels, or in a later write (still well inside the nudge's delay, unless the
feeding stalls): either way it entered the source before the nudge fell due, so the nudge must
be cancelled (docs/design.md §3, event order). Lines are stamped with the producer's ``ts``
when they are written (:class:`Stamper`); a share of the pings carry none. Redeliveries copy
lines fed earlier, byte for byte, and each malformed line carries a nonce so its dead letter
can be matched.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a line is, and so which rule (if any) it feeds."""

    PING = "ping"  # rule notify (on_doubt: skip), key notify:<id>
    PING_NO_ID = "ping_no_id"  # rule notify without an id: one email to its own user
    ORDER = "order"  # rule receipt (on_doubt: resend), key receipt:<order id>
    ORDER_AGAIN = "order_again"  # the same order under another event id: no second receipt
    BROWSE = "browse"  # rule nudge (delayed, cancellable, cooldown per user)
    CANCEL = "cancel"  # cancels its user's pending nudge
    MALFORMED = "malformed"  # set aside with a known reason
    REDELIVERY = "redelivery"  # an exact copy of an earlier valid line


@dataclass(frozen=True)
class Line:
    """One line fed: its text and what the oracle needs to know about it.

    ``identity`` names the event for the lost/processed-twice checks: its id, or for an event
    without one its (unique) user. A redelivery has the identity of the line it copies.
    """

    text: str
    kind: Kind
    identity: str | None = None
    user_id: str | None = None
    key: str | None = None  # the idempotency key this line's first delivery schedules
    reason: str | None = None  # the dead-letter reason of a malformed line
    cancelled: bool = False  # a browse followed by its cancel
    ts: bool = False  # stamped with the producer's ``ts`` when written


@dataclass
class Workload:
    """The lines in feeding order, cut into groups that are always written together."""

    lines: list[Line] = field(default_factory=list)
    groups: list[list[Line]] = field(default_factory=list)

    def add(self, *lines: Line) -> None:
        self.lines.extend(lines)
        self.groups.append(list(lines))


@dataclass(frozen=True)
class Mix:
    """The chance that one slot of the stream is each kind (the rest are plain pings)."""

    ping_no_id: float = 0.08
    order: float = 0.18
    order_again: float = 0.3  # chance that an order is later repeated under another id
    nudge_user: float = 0.06  # a new nudge user: browse+cancel now, two browses later
    malformed: float = 0.04
    redelivery: float = 0.08
    cancel_later: float = 0.5  # chance that a cancel comes in a later write than its browse
    cancel_gap_lines: int = 150  # the most lines between a browse and a later cancel
    ping_ts: float = 0.5  # chance that a ping carries a ``ts`` (id-less pings never do)


def _event(event_id: str | None, name: str, user: str, **properties: Any) -> str:
    document: dict[str, Any] = {"event": name, "user_id": user, "email": f"{user}@example.com"}
    if event_id is not None:
        document["id"] = event_id
    if properties:
        document["properties"] = properties
    return json.dumps(document, separators=(",", ":"))


def _malformed(n: int, rng: random.Random) -> Line:
    """One bad line of a random kind, with the reason it must be set aside with."""
    tag = f"m{n}"
    email = f"{tag}@example.com"
    variants = [
        ("invalid_json", '{"event": "ping", "user_id": "' + tag),
        ("not_object", json.dumps([tag])),
        ("missing_field", json.dumps({"id": tag, "event": "ping", "email": email})),
        (
            "bad_ts",
            json.dumps({"id": tag, "event": "ping", "user_id": tag, "email": email, "ts": tag}),
        ),
        ("bad_email", json.dumps({"id": tag, "event": "ping", "user_id": tag, "email": tag})),
    ]
    reason, text = rng.choice(variants)
    return Line(text, Kind.MALFORMED, reason=reason)


class _Builder:
    """Builds a workload slot by slot; deferred lines wait in a heap keyed by slot number."""

    def __init__(self, rng: random.Random, mix: Mix) -> None:
        self.rng = rng
        self.mix = mix
        self.workload = Workload()
        self.valid: list[Line] = []
        self.later: list[tuple[int, int, Line]] = []
        self.n = 0

    def build(self, events: int) -> Workload:
        while len(self.workload.lines) < events:
            self.n += 1
            while self.later and self.later[0][0] <= self.n:
                self._emit(heapq.heappop(self.later)[2])
            self._slot()
        for _, _, line in sorted(self.later):
            self._emit(line)
        return self.workload

    def _emit(self, *lines: Line) -> None:
        self.workload.add(*lines)
        self.valid.extend(line for line in lines if line.kind is not Kind.MALFORMED)

    def _defer(self, gap: int, line: Line) -> None:
        heapq.heappush(self.later, (self.n + gap, self.n * 4 + len(self.later), line))

    def _slot(self) -> None:
        point = self.rng.random()
        for chance, make in (
            (self.mix.ping_no_id, self._ping_no_id),
            (self.mix.order, self._order),
            (self.mix.nudge_user, self._nudge_user),
            (self.mix.malformed, self._malformed),
            (self.mix.redelivery, self._redelivery),
        ):
            point -= chance
            if point < 0:
                make()
                return
        self._ping()

    def _ping(self) -> None:
        event_id, user = f"p{self.n}", f"u{self.n}"
        text = _event(event_id, "ping", user, note=f"note {self.n}")
        ts = self.rng.random() < self.mix.ping_ts
        self._emit(Line(text, Kind.PING, event_id, user, f"notify:{event_id}", ts=ts))

    def _ping_no_id(self) -> None:
        user = f"x{self.n}"
        text = _event(None, "ping", user, note=f"no id {self.n}")
        self._emit(Line(text, Kind.PING_NO_ID, f"user:{user}", user))

    def _order(self) -> None:
        order, user = str(self.n), f"c{self.n}"
        key = f"receipt:{order}"
        self._emit(
            Line(
                _event(f"o{order}", "order", user, order_id=order),
                Kind.ORDER,
                f"o{order}",
                user,
                key,
                ts=True,
            )
        )
        if self.rng.random() < self.mix.order_again:
            again = _event(f"o{order}-again", "order", user, order_id=order)
            line = Line(again, Kind.ORDER_AGAIN, f"o{order}-again", user, ts=True)
            self._defer(self.rng.randint(1, 300), line)

    def _nudge_user(self) -> None:
        user = f"n{self.n}"
        first = f"b{self.n}a"
        browse = Line(
            _event(first, "browse", user),
            Kind.BROWSE,
            first,
            user,
            f"nudge:{first}",
            cancelled=True,
            ts=True,
        )
        cancel = Line(
            _event(f"k{self.n}", "cancel", user), Kind.CANCEL, f"k{self.n}", user, ts=True
        )
        # The cancel comes with its browse or a little later: before the nudge falls due
        # either way, unless the daemon (or the feeding) is behind, which is the point.
        cancel_gap = 0
        if self.rng.random() < self.mix.cancel_later:
            cancel_gap = self.rng.randint(1, self.mix.cancel_gap_lines)
            self._emit(browse)
            self._defer(cancel_gap, cancel)
        else:
            self._emit(browse, cancel)
        # Two more triggers later, after the cancel: the cooldown lets the first of them out.
        gap = cancel_gap + self.rng.randint(20, 400)
        for suffix in ("b", "c"):
            event_id = f"b{self.n}{suffix}"
            text = _event(event_id, "browse", user)
            self._defer(gap, Line(text, Kind.BROWSE, event_id, user, f"nudge:{event_id}", ts=True))
            gap += self.rng.randint(1, 400)

    def _malformed(self) -> None:
        self._emit(_malformed(self.n, self.rng))

    def _redelivery(self) -> None:
        if not self.valid:
            self._ping()
            return
        original = self.rng.choice(self.valid)
        copy = Line(original.text, Kind.REDELIVERY, original.identity, original.user_id)
        self._emit(copy)


def build(events: int, seed: int, mix: Mix | None = None) -> Workload:
    """Return about ``events`` lines (a few more: deferred lines are flushed at the end)."""
    return _Builder(random.Random(seed), mix or Mix()).build(events)


def chunks(workload: Workload, rng: random.Random, max_lines: int) -> Iterator[list[Line]]:
    """Cut the groups into writes of 1..max_lines lines, never splitting a group."""
    chunk: list[Line] = []
    target = rng.randint(1, max_lines)
    for group in workload.groups:
        chunk.extend(group)
        if len(chunk) >= target:
            yield chunk
            chunk = []
            target = rng.randint(1, max_lines)
    if chunk:
        yield chunk


@dataclass(frozen=True)
class Fed:
    """One line as it was written: the line, its text (with its ``ts``, if stamped) and when
    (epoch seconds; the ``ts`` itself, for a stamped line)."""

    line: Line
    text: str
    at: float


def format_ts(at: float) -> str:
    return datetime.fromtimestamp(at, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Stamper:
    """Writes lines as a producer would at the moment of the write, and remembers each one.

    A stamped line gets ``ts``: now. A redelivery is the very text of the line it copies, its
    ``ts`` included: a producer that delivers again sends the same event.
    """

    def __init__(self) -> None:
        self.fed: list[Fed] = []
        self._texts: dict[str, str] = {}

    def stamp(self, lines: list[Line], at: float) -> list[str]:
        texts = []
        for line in lines:
            text = line.text
            if line.kind is Kind.REDELIVERY and line.identity in self._texts:
                text = self._texts[line.identity]
            elif line.ts:
                text = text[:-1] + f',"ts":"{format_ts(at)}"}}'
            if line.identity is not None and line.kind is not Kind.REDELIVERY:
                self._texts.setdefault(line.identity, text)
            self.fed.append(Fed(line, text, at))
            texts.append(text)
        return texts
