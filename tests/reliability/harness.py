"""The run loop: feed a seeded workload to real ``trigmail serve`` processes, kill and restart
them at seeded moments, let the last one drain, then check everything against the oracle.

Reproducible in what it feeds: the workload, the sizes of the writes, the half-written lines,
the moments of the kills (counted in lines fed, not wall time) and the kill points armed all
come from one seed. What the daemon happens to be doing at each kill is not, and is the point.
"""

from __future__ import annotations

import bisect
import random
import re
import signal
import sqlite3
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.fake_sendgrid import FakeSendGrid, FaultKind, FaultRates
from tests.reliability import checks, oracle, workload
from tests.reliability.feeds import LEFT_SHOWN, Feed, Outages, SpoolFeed
from tests.serve_harness import Serve, clean_env, status_json, wait_for, write_config
from trigmail.faults import KILL_AT_ENV, KillPoint

# Enough for `trigmail status` to list every in-doubt send of a long run.
STATUS_LIMIT = 1_000_000

# Every fault class of the issue at once, at rates that leave most requests alone.
ALL_FAULTS = FaultRates(
    latency_s=0.002,
    rate_limit=0.02,
    server_error=0.01,
    unavailable=0.02,
    hang_after_accept=0.01,
    reset_before_read=0.01,
    reset_after_accept=0.01,
)
# The points an armed restart may die at by itself (rotation only where the spool rotates).
STEADY_POINTS = (
    KillPoint.AFTER_READ,
    KillPoint.AFTER_COMMIT,
    KillPoint.AFTER_CLAIM,
    KillPoint.AFTER_ACCEPT,
)
# The share of restarts armed with a kill point: enough to reach each point many times in a
# run, few enough that most kills stay at random moments.
ARM_CHANCE = 0.3
_KILL_POINT_LINE = re.compile(r"kill point (\w+) reached")
# What a drain failure lists of each live daemon's log: its last warnings and errors, then its
# last lines (and of the sends left, the first LEFT_SHOWN: their counts are whole).
LOG_WARNINGS_SHOWN = 12
LOG_TAIL_SHOWN = 4
_WARNING_LINE = re.compile(r"level=(warning|error|critical)")
# The sends the decision log says a cancel event cancelled.
CANCEL_ON_KEYS = "SELECT key FROM decision_log WHERE reason = 'cancel_on' AND key IS NOT NULL"


@dataclass(frozen=True)
class RunSpec:
    """One run.

    Args:
        events: lines to feed (a few more: deferred triggers are flushed at the end).
        kills: SIGKILLs sent by the harness at seeded moments.
        kill_points: also arm ``TRIGMAIL_KILL_AT`` at a random point on half the restarts.
        rates: the fake's faults.
        rotate_every: lines between spool rotations, alternately rename and truncate (0: none).
        max_chunk: the most lines one write holds.
        lines_per_s: the feeding pace.
        drain_timeout_s: how long the last daemon may take to finish everything.
        first_kill_at: ``point[:n]`` armed on the first daemon, to reach a point deliberately.
    """

    seed: int
    events: int
    kills: int
    kill_points: bool = False
    rates: FaultRates = ALL_FAULTS
    rotate_every: int = 0
    max_chunk: int = 40
    lines_per_s: float = 2000.0
    drain_timeout_s: float = 180.0
    first_kill_at: str | None = None  # TRIGMAIL_KILL_AT for the first daemon: a deliberate kill
    outages: int = 0  # times every daemon is stopped while the feeding goes on (a backlog)
    outage_s: float = 1.5 * oracle.NUDGE_DELAY_S  # long enough for nudges to fall due meanwhile


def nudge_figures(expected: oracle.Expected) -> dict[str, int]:
    """How many nudge users were judged in feed order, and how many of their cancels came
    before the nudge was due (must cancel) or after (either way, a late fire or a late cancel)."""
    plans = expected.nudges.values()
    return {
        "nudge_users_judged_in_feed_order": len(plans),
        "nudges_that_must_be_cancelled": sum(len(plan.must_cancel) for plan in plans),
        "nudge_users_with_a_cancel_after_due": sum(
            any(b.cancel == "may" for b in plan.browses) for plan in plans
        ),
    }


def outages(spec: RunSpec, rng: random.Random, lines: int) -> Outages:
    """The run's outages, each beginning in the first half of the feeding (so that lines are
    written all through it)."""
    return Outages(sorted(rng.sample(range(1, max(lines // 2, 2)), spec.outages)), spec.outage_s)


@dataclass
class Instance:
    """One daemon process of the run, numbered by start."""

    number: int
    started_at: float
    ended_at: float = float("inf")
    end: str = "running"  # killed | kill_point:<point> | stopped:<code>


@dataclass
class RunResult:
    """What a run found: its violations and the figures reported by ``bench.reliability``."""

    violations: list[checks.Violation]
    figures: dict[str, Any] = field(default_factory=dict)


def wait_drained(
    idle: Callable[[], bool], what: str, timeout_s: float, left: Callable[[], str]
) -> checks.Violation | None:
    """Wait until ``idle()``; at the deadline, the ``not_drained`` violation, saying what
    ``left()`` found undone then (printed at once too, before the stop changes it)."""
    try:
        wait_for(idle, what, timeout_s)
    except AssertionError as exc:  # the deadline, or a restart in ``idle`` that failed
        try:
            found = left()
        except Exception as error:  # the report must not hide the failure it reports
            found = f"(the report failed: {type(error).__name__}: {error})"
        detail = f"{exc}\n{found}"
        print(f"not_drained: {detail}", file=sys.stderr, flush=True)
        return checks.Violation("not_drained", "serve", detail)
    return None


def sends_left(counts: dict[str, int], unfinished: Iterable[dict[str, Any]]) -> str:
    """Describe a ledger's sends at a drain failure: the counts by state, then the first
    :data:`LEFT_SHOWN` sends still ``scheduled`` or ``sending`` (rows of the sends table, with
    ``due_at`` as a UTC datetime), each with its due time against now."""
    now = datetime.now(UTC)
    rows = list(unfinished)
    lines = [f"sends by state: {dict(sorted(counts.items()))}"]
    for row in rows[:LEFT_SHOWN]:
        due_s = (row["due_at"] - now).total_seconds()
        due = f"due in {due_s:.1f}s" if due_s > 0 else f"due {-due_s:.1f}s ago"
        lease = (
            f", lease {row['lease_owner']} until {row['lease_until']}"
            if row.get("lease_owner") is not None
            else ""
        )
        lines.append(
            f"  {row['state']} {row['key']} (user {row['user_id']}): {due},"
            f" attempts {row['attempts']}{lease}, last error {row['last_error']!r}"
        )
    if len(rows) > LEFT_SHOWN:
        lines.append(f"  ... and {len(rows) - LEFT_SHOWN} more")
    return "\n".join(lines)


class Daemons:
    """The run's daemon processes, one at a time, each started on the same config."""

    def __init__(self, root: Path, config: Path, api_key: str, rng: random.Random) -> None:
        self.root = root
        self.args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
        self.api_key = api_key
        self.rng = rng
        self.instances: list[Instance] = []
        self.serve: Serve | None = None
        self.armed = False

    def start(self, arm: tuple[KillPoint, ...] = (), kill_at: str | None = None) -> None:
        extra = {"SENDGRID_API_KEY": self.api_key}
        self.armed = kill_at is not None or (bool(arm) and self.rng.random() < ARM_CHANCE)
        if kill_at is None and self.armed:
            kill_at = f"{self.rng.choice(arm).value}:{self.rng.randint(1, 20)}"
        if kill_at is not None:
            extra[KILL_AT_ENV] = kill_at
        self.serve = Serve(self.root, self.args, clean_env(extra))
        self.instances.append(Instance(len(self.instances), time.time()))
        self.serve.start()
        # Not wait_ready: an armed daemon may die just after "ready", before /healthz answers.
        self.serve.wait_line(r"serve: ready", 60)

    def kill(self) -> None:
        if self.died():
            return  # an armed point was faster: that was the kill
        serve = self._running()
        serve.signal(signal.SIGKILL)
        serve.wait_exit(60)
        self._ended("killed")

    def died(self) -> bool:
        """Whether the daemon killed itself at an armed point (recorded when it did)."""
        serve = self._running()
        if serve.proc.poll() is None:
            return False
        serve.wait_exit(60)
        match = _KILL_POINT_LINE.search(serve.stderr)
        self._ended(f"kill_point:{match.group(1)}" if match else f"died:{serve.proc.returncode}")
        return True

    def restart_unarmed(self) -> None:
        """Before a drain: a dead daemon is started again, an armed one swapped for an unarmed
        one (it could die at any point of the drain)."""
        if self.died():
            self.start()
        elif self.armed:
            self.kill()
            self.start()

    def stop(self) -> int:
        code = self._running().stop(60)
        self._ended(f"stopped:{code}")
        return code

    def kill_if_running(self) -> None:
        if self.serve is not None:
            self.serve.kill()

    def describe(self, name: str, log: Path | None = None) -> str:
        """The daemon at a drain failure: alive or not, how its instances ended, and its
        log's last warnings and lines (all of it written to ``log``, if given)."""
        ends = dict(Counter(i.end.split(":")[0] for i in self.instances[:-1]))
        head = f"{name}: {len(self.instances)} starts, earlier ends {ends}"
        if self.serve is None:
            return f"{head}; none running"
        code = self.serve.proc.poll()
        alive = "running" if code is None else f"exited {code}"
        started_s = time.time() - self.instances[-1].started_at
        head += f"; last pid {self.serve.proc.pid} {alive}, started {started_s:.0f}s ago"
        head += f", armed {self.armed}"
        lines = self.serve.stderr.splitlines()
        if log is not None:
            log.parent.mkdir(parents=True, exist_ok=True)
            log.write_text("\n".join(lines) + "\n", encoding="utf-8")
            head += f" (its log: {log})"
        warnings = [line for line in lines if _WARNING_LINE.search(line)]
        shown = [f"    ! {line}" for line in warnings[-LOG_WARNINGS_SHOWN:]]
        shown += [f"    | {line}" for line in lines[-LOG_TAIL_SHOWN:]]
        return "\n".join([f"{head}; {len(warnings)} warnings, the last:", *shown])

    def _running(self) -> Serve:
        assert self.serve is not None, "no daemon started"
        return self.serve

    def _ended(self, how: str) -> None:
        self._running().kill()  # reaps it and closes its pipe (it has exited already)
        self.instances[-1].ended_at = time.time()
        self.instances[-1].end = how
        self.serve = None

    def instance_at(self, moment: float) -> int:
        """The instance alive at ``moment`` (instances never overlap)."""
        starts = [instance.started_at for instance in self.instances]
        return max(bisect.bisect_right(starts, moment) - 1, 0)


class Run:
    """One run of :class:`RunSpec` in ``root`` with ``feed``, against ``fake``."""

    def __init__(self, spec: RunSpec, root: Path, feed: Feed, fake: FakeSendGrid) -> None:
        self.spec = spec
        self.root = root
        self.feed = feed
        self.fake = fake
        self.rng = random.Random(spec.seed)
        self.workload = workload.build(spec.events, spec.seed)
        self.stamper = workload.Stamper()
        self.ledger = root / "ledger.db"
        rules = root / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        (rules / "rules.yaml").write_text(oracle.RULES_YAML)
        config = write_config(
            root / "trigmail.yaml",
            fake_url=fake.url,
            source=feed.source(),
            rules_dir=rules,
            ledger=self.ledger,
        )
        self.daemons = Daemons(root, config, fake.api_key, random.Random(spec.seed + 1))
        self.arm: tuple[KillPoint, ...] = ()
        if spec.kill_points:
            rotation = (KillPoint.DURING_ROTATION,) if spec.rotate_every else ()
            self.arm = STEADY_POINTS + rotation
        self.fed = 0
        self.rotations: Counter[str] = Counter()
        self.status: dict[str, Any] = {}

    def execute(self) -> RunResult:
        started_s = time.monotonic()
        try:
            self.daemons.start(self.arm, self.spec.first_kill_at)
            self._feed_all()
            not_drained = self._drain()
            code = self.daemons.stop()
        finally:
            self.daemons.kill_if_running()
        expected = oracle.expect(self.workload, self.stamper.fed)
        observed = self._observe()
        violations = checks.check(expected, observed)
        if code != 0:
            violations.append(checks.Violation("unclean_stop", "serve", f"exit code {code}"))
        if not_drained is not None:
            # First: what a drain left undone explains the violations that follow from it.
            violations.insert(0, not_drained)
        figures = self._figures(expected, observed, time.monotonic() - started_s)
        figures.update(nudge_figures(expected))
        return RunResult(violations, figures)

    # -- feeding ------------------------------------------------------------------------------
    def _feed_all(self) -> None:
        kill_at = sorted(self.rng.sample(range(1, len(self.workload.lines)), self.spec.kills))
        outage = outages(self.spec, self.rng, len(self.workload.lines))
        next_rotation = self.spec.rotate_every or None
        pace_start_s = time.monotonic()
        for chunk in workload.chunks(self.workload, self.rng, self.spec.max_chunk):
            self.feed.write(self.stamper.stamp(chunk, time.time()))
            self.fed += len(chunk)
            if outage.ends():
                self.daemons.start(self.arm)
            if not outage.down:
                self._restart_if_died()
            while kill_at and kill_at[0] <= self.fed and not outage.down:
                kill_at.pop(0)
                self.daemons.kill()
                self.daemons.start(self.arm)
            if outage.begins(self.fed):
                self.daemons.kill()
            if next_rotation is not None and self.fed >= next_rotation and not outage.down:
                self._rotate()
                next_rotation = self.fed + self.spec.rotate_every
            # Pacing, not synchronisation: producers write in real time, not all at once.
            ahead_s = pace_start_s + self.fed / self.spec.lines_per_s - time.monotonic()
            if ahead_s > 0:
                time.sleep(ahead_s)
        if outage.ends(last=True):
            self.daemons.start(self.arm)

    def _restart_if_died(self) -> None:
        if self.daemons.died():
            self.daemons.start(self.arm)

    def _rotate(self) -> None:
        assert isinstance(self.feed, SpoolFeed), "only a spool rotates"
        self.feed.settle()
        wait_for(self._consumed_alive, "the daemon to consume the spool before rotating", 120)
        how = "rename" if sum(self.rotations.values()) % 2 == 0 else "truncate"
        self.feed.rotate(how)
        self.rotations[how] += 1

    def _consumed_alive(self) -> bool:
        self._restart_if_died()
        return self.feed.consumed(self.ledger)

    # -- draining -----------------------------------------------------------------------------
    def _drain(self) -> checks.Violation | None:
        """Finish: no armed kill point, everything consumed, nothing scheduled or sending."""
        self.feed.settle()
        self.daemons.restart_unarmed()

        def idle() -> bool:
            self._restart_if_died()
            return self.feed.consumed(self.ledger) and _pending_sends(self.ledger) == 0

        return wait_drained(idle, "the daemon to drain", self.spec.drain_timeout_s, self._left)

    def _left(self) -> str:
        """What the drain left: the feed's backlog, the unfinished sends, the daemon."""
        return "\n".join(
            [
                self.feed.backlog(self.ledger),
                _sends_left(self.ledger),
                self.daemons.describe("serve", self.root / "drain-logs" / "serve.log"),
            ]
        )

    # -- observing ----------------------------------------------------------------------------
    def _observe(self) -> checks.Observed:
        observed = checks.Observed(replays=self.feed.replays)
        for request in self.fake.requests:
            if not request.accepted:
                observed.note_refused(request.body)
                continue
            instance = self.daemons.instance_at(request.received_at or 0.0)
            for personalization in request.body["personalizations"]:
                key = personalization["custom_args"]["trigmail_key"]
                acceptance = checks.Acceptance(key, instance, request.fault, request.late)
                observed.acceptances.append(acceptance)
        observed.killed = {
            i.number for i in self.daemons.instances if not i.end.startswith("stopped")
        }
        conn = sqlite3.connect(f"file:{self.ledger}?mode=ro", uri=True)
        try:
            for key, state, user in conn.execute("SELECT key, state, user_id FROM sends"):
                observed.states[key] = state
                observed.users[key] = user
            log = conn.execute(
                "SELECT event_id, user_id, reason FROM decision_log WHERE event_id IS NOT NULL"
            ).fetchall()
            observed.cancel_on = {key for (key,) in conn.execute(CANCEL_ON_KEYS)}
        finally:
            conn.close()
        copies = oracle.expect(self.workload, self.stamper.fed).copies
        for event_id, user, reason in log:
            identity = event_id if event_id in copies else f"user:{user}"
            observed.decided.add(identity)
            if reason == "duplicate_event":
                observed.duplicates[identity] += 1
        observed.in_doubt = {entry["key"] for entry in self._status()["in_doubt"]}
        observed.dead = self.feed.dead()
        return observed

    def _status(self) -> dict[str, Any]:
        """``trigmail status --format json``, the operator's view, with every in-doubt send."""
        self.status = status_json(self.root, self.ledger, limit=STATUS_LIMIT, timeout_s=120)
        return self.status

    def _figures(
        self, expected: oracle.Expected, observed: checks.Observed, elapsed_s: float
    ) -> dict[str, Any]:
        ends = Counter(i.end.split(":")[0] for i in self.daemons.instances)
        points = Counter(
            i.end.split(":")[1] for i in self.daemons.instances if i.end.startswith("kill_point")
        )
        accepted = observed.accepted()
        resent = {k: n for k, n in accepted.items() if n > 1 and oracle.rule_of(k) == "receipt"}
        faults = Counter(r.fault.value for r in self.fake.requests if r.fault is not None)
        return {
            "seed": self.spec.seed,
            "lines_fed": len(self.workload.lines),
            "lines_by_kind": dict(Counter(line.kind.value for line in self.workload.lines)),
            "kills": ends["killed"] + ends["kill_point"],
            "harness_sigkills": ends["killed"],
            "kill_points_hit": dict(points),
            "daemon_starts": len(self.daemons.instances),
            "rotations": dict(self.rotations),
            "requests": len(self.fake.requests),
            "faults_injected": dict(sorted(faults.items())),
            "accepted_personalizations": sum(accepted.values()),
            "sends_by_state": {k: v for k, v in self.status["counts"].items() if v},
            "in_doubt": len(observed.in_doubt),
            "resend_keys_accepted_more_than_once": len(resent),
            "dead_letters": sum(observed.dead.values()),
            "replays_recognised": sum(observed.duplicates.values())
            - sum(n - 1 for n in expected.copies.values()),
            "elapsed_s": round(elapsed_s, 1),
        }


def _pending_sends(ledger: Path) -> int:
    if not ledger.exists():
        return 1
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    try:
        row = conn.execute(
            "SELECT COUNT(*) FROM sends WHERE state IN ('scheduled', 'sending')"
        ).fetchone()
    finally:
        conn.close()
    return int(row[0])


def _sends_left(ledger: Path) -> str:
    if not ledger.exists():
        return f"no ledger at {ledger}"
    conn = sqlite3.connect(f"file:{ledger}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        counts = dict(conn.execute("SELECT state, COUNT(*) FROM sends GROUP BY state").fetchall())
        unfinished = [
            {**dict(row), "due_at": datetime.fromtimestamp(row["due_at"] / 1e6, UTC)}
            for row in conn.execute(
                "SELECT key, state, user_id, due_at, attempts, last_error FROM sends"
                " WHERE state IN ('scheduled', 'sending') ORDER BY due_at, key"
            )
        ]
    finally:
        conn.close()
    return sends_left(counts, unfinished)


def run(spec: RunSpec, root: Path, feed: Feed) -> RunResult:
    """Run ``spec`` against a fresh fake SendGrid, drawing its faults from the same seed."""
    with FakeSendGrid(rates=spec.rates, seed=spec.seed) as fake:
        return Run(spec, root, feed, fake).execute()


__all__ = ["ALL_FAULTS", "FaultKind", "RunResult", "RunSpec", "run"]
