"""``simulate``: the daemon's pipeline on a virtual clock, an in-memory ledger and a recording
provider. Time is taken from the events' ``ts``; sends fire at their virtual due times.
"""

from __future__ import annotations

import gc
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trigmail.decisions import LogEntry
from trigmail.events import Event
from trigmail.ingest import RawItem, parse_item
from trigmail.ledger.base import Ledger
from trigmail.ledger.memory import MemoryLedger
from trigmail.ledger.semantics import Clock
from trigmail.pipeline import Pipeline
from trigmail.providers.recording import RecordingProvider
from trigmail.rules.model import RuleSet
from trigmail.scheduler import Scheduler

# Before the first event there is no virtual time yet; this stands in for it.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The whole simulated future fits in memory; the horizon only bounds refills.
_HORIZON_S = 10 * 365 * 86_400.0


@contextmanager
def _fewer_collections() -> Iterator[None]:
    """Run the cyclic garbage collector less often while a simulation runs.

    A simulation keeps every send and decision it makes in memory; with the default thresholds
    the collector rescans that growing heap again and again (about 30% of a 100,000-event run).
    Reference counting still frees everything at once; only cycles wait a little longer.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


class VirtualClock:
    """A clock that only moves when told to, and never backwards."""

    def __init__(self, start: datetime = _EPOCH) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, to: datetime) -> None:
        self.now = max(self.now, to)


@dataclass
class Summary:
    """Totals of a simulation: by outcome, and by rule and outcome."""

    events: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    by_rule: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def count(self, entry: LogEntry) -> None:
        self.outcomes[entry.outcome] += 1
        self.by_rule[entry.rule or "(no rule)"][entry.outcome] += 1


class Simulation:
    """Replays event lines through the real pipeline.

    Args:
        rules: the rule set to simulate.
        on_entry: called with every decision, in virtual-time order.
        ledger: makes the ledger from the virtual clock (default: an in-memory one).
    """

    def __init__(
        self,
        rules: RuleSet,
        on_entry: Callable[[LogEntry], None],
        ledger: Callable[[Clock], Ledger] | None = None,
    ) -> None:
        self.clock = VirtualClock()
        # Another ledger (a SQLite file, PostgreSQL) makes a real ledger of a virtual-time
        # history: what `explain` and its tests read.
        self.ledger: Ledger = (
            MemoryLedger(clock=self.clock) if ledger is None else ledger(self.clock)
        )
        self.provider = RecordingProvider()
        self.summary = Summary()

        def record(entries: Sequence[LogEntry]) -> None:
            for entry in entries:
                self.summary.count(entry)
                on_entry(entry)

        self.pipeline = Pipeline(
            self.ledger,
            lambda: rules,
            self.provider,
            self.clock,
            scheduler=Scheduler(horizon_s=_HORIZON_S),
            on_entries=record,
        )
        self._started = False

    def feed(
        self, lineno: int, line: bytes, source: str = "events", until: datetime | None = None
    ) -> bool:
        """Decide one event line, after firing every send due before its time.

        Returns ``False`` (and decides nothing) for an event later than ``until``.
        """
        if not line or line.isspace():
            return True
        item = RawItem(line, f"{source}:{lineno}")
        event = parse_item(item, self.clock.now)
        if isinstance(event, Event):
            if until is not None and event.ts > until:
                return False
            self.run_until(event.ts)
        self._start()
        self.summary.events += 1
        self.pipeline.ingest_parsed([(item, event)])
        return True

    def run_until(self, until: datetime | None) -> None:
        """Fire every send due up to ``until`` (all of them when ``None``) at its due time."""
        self._start()
        while (due_at := self._next_due_at(until)) is not None and (
            until is None or due_at <= until
        ):
            self.clock.advance(due_at)
            self.pipeline.deliver(self.pipeline.fire_due())
        if until is not None:
            self.clock.advance(until)

    def run(
        self, lines: Iterable[bytes], until: datetime | None = None, source: str = "events"
    ) -> Summary:
        """Feed the lines up to ``until``, then fire what is due by then (or everything).

        Args:
            lines: JSONL event lines, in file order.
            until: where the virtual clock stops: later events are not decided and later
                sends stay scheduled.
            source: the name bad lines are reported under (``events.jsonl:12``).
        """
        with _fewer_collections():
            for lineno, line in enumerate(lines, start=1):
                if not self.feed(lineno, line, source, until):
                    break
            self.run_until(until)
        return self.summary

    def _start(self) -> None:
        if not self._started:
            self._started = True
            self.pipeline.start()

    def _next_due_at(self, until: datetime | None) -> datetime | None:
        scheduler = self.pipeline.scheduler
        cached = scheduler.next_due_at()
        loaded_until = scheduler.loaded_until
        if loaded_until is not None and (cached is not None or until is not None):
            # Everything due by the horizon is cached; past it, the horizon's end is when to
            # look again (a refill), which spares a ledger query per event.
            if cached is not None and cached <= loaded_until:
                return cached
            if until is not None and until <= loaded_until:
                return None
        with self.ledger.transaction() as txn:
            stored = txn.next_due_at()
        if cached is None or stored is None:
            return cached or stored
        return min(cached, stored)
