"""Several workers: ``serve`` processes on one Redis stream group and one PostgreSQL ledger,
SIGKILLed at seeded moments (the victim drawn from the seed too) and each restarted under its
own stable name; then a drain and the checks of :mod:`tests.reliability.order`.

Each worker talks to a fake SendGrid of its own, with the same fault rates: the fake records
requests, not who made them, and the resend check must know which worker sent each acceptance
to tell whether that worker was killed after it. The checks count acceptances over all three
fakes, so a key accepted by two workers is a key accepted twice, as with one SendGrid.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Mapping
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg.rows import dict_row

from tests.fake_sendgrid import FakeSendGrid
from tests.reliability import checks, oracle, order, workload
from tests.reliability.feeds import RedisFeed
from tests.reliability.harness import (
    CANCEL_ON_KEYS,
    STATUS_LIMIT,
    STEADY_POINTS,
    Daemons,
    RunResult,
    RunSpec,
    nudge_figures,
    outages,
    sends_left,
    wait_drained,
)
from tests.serve_harness import status_json, write_config
from trigmail.faults import KillPoint

# Instance numbers of worker n start at n * INSTANCE_BLOCK, so one number names one process.
INSTANCE_BLOCK = 100_000


class Worker:
    """One worker slot: a stable consumer name, its own config and fake, its daemons."""

    def __init__(
        self, number: int, root: Path, fake: FakeSendGrid, config: Path, seed: int
    ) -> None:
        self.number = number
        self.name = f"worker-{number}"
        self.fake = fake
        # Each worker's kill points are drawn from the run's seed, apart from the others'.
        self.daemons = Daemons(root, config, fake.api_key, random.Random(seed * 10 + number))

    def instance(self, local: int) -> int:
        return self.number * INSTANCE_BLOCK + local


def worker_config(
    path: Path,
    fake: FakeSendGrid,
    feed: RedisFeed,
    rules: Path,
    dsn: str,
    *,
    redis: Mapping[str, Any] | None = None,
    delivery: Mapping[str, Any] | None = None,
) -> Path:
    """Write the config of worker ``path.stem`` (its consumer name) on ``feed`` and the
    ledger ``dsn``; ``redis`` overrides the source's settings, ``delivery`` adds to its own."""
    source = feed.source()
    source["redis"].update({"consumer": path.stem, **(redis or {})})
    write_config(
        path, fake_url=fake.url, source=source, rules_dir=rules, ledger=path, delivery=delivery
    )
    # write_config takes a file path; a DSN through Path would lose a slash of "//".
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    document["ledger"] = dsn
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    return path


class WorkersRun:
    """One run of ``spec`` with ``len(fakes)`` workers on ``feed`` and the ledger at ``dsn``."""

    def __init__(
        self, spec: RunSpec, root: Path, feed: RedisFeed, dsn: str, fakes: list[FakeSendGrid]
    ) -> None:
        assert not spec.rotate_every, "a stream does not rotate"
        self.spec = spec
        self.feed = feed
        self.dsn = dsn
        self.root = root
        self.rng = random.Random(spec.seed)
        self.workload = workload.build(spec.events, spec.seed)
        self.stamper = workload.Stamper()
        rules = root / "rules"
        rules.mkdir(parents=True, exist_ok=True)
        (rules / "rules.yaml").write_text(oracle.RULES_YAML)
        self.workers = [
            Worker(
                n,
                root,
                fake,
                worker_config(root / f"worker-{n}.yaml", fake, feed, rules, dsn),
                spec.seed,
            )
            for n, fake in enumerate(fakes, start=1)
        ]
        self.arm: tuple[KillPoint, ...] = STEADY_POINTS if spec.kill_points else ()
        self.status: dict[str, Any] = {}

    def execute(self) -> RunResult:
        started_s = time.monotonic()
        try:
            for worker in self.workers:
                worker.daemons.start(self.arm)
            self._feed_all()
            not_drained = self._drain()
            codes = [worker.daemons.stop() for worker in self.workers]
        finally:
            for worker in self.workers:
                worker.daemons.kill_if_running()
        expected = oracle.expect(self.workload, self.stamper.fed)
        observed, timed = self._observe(expected)
        violations = [
            self._with_timeline(v, observed) for v in order.check(expected, observed, timed)
        ]
        for worker, code in zip(self.workers, codes, strict=True):
            if code != 0:
                violations.append(checks.Violation("unclean_stop", worker.name, f"exit {code}"))
        if not_drained is not None:
            # First: what a drain left undone explains the violations that follow from it.
            violations.insert(0, not_drained)
        figures = self._figures(observed, time.monotonic() - started_s)
        figures.update(nudge_figures(expected))
        return RunResult(violations, figures)

    # -- feeding and killing ------------------------------------------------------------------
    def _feed_all(self) -> None:
        kill_at = sorted(self.rng.sample(range(1, len(self.workload.lines)), self.spec.kills))
        outage = outages(self.spec, self.rng, len(self.workload.lines))
        fed = 0
        pace_start_s = time.monotonic()
        for chunk in workload.chunks(self.workload, self.rng, self.spec.max_chunk):
            self.feed.write(self.stamper.stamp(chunk, time.time()))
            fed += len(chunk)
            if outage.ends():
                self._start_all()
            if not outage.down:
                self._restart_died()
            while kill_at and kill_at[0] <= fed and not outage.down:
                kill_at.pop(0)
                victim = self.rng.choice(self.workers).daemons
                victim.kill()
                victim.start(self.arm)
            if outage.begins(fed):
                for worker in self.workers:
                    worker.daemons.kill()
            # Pacing, not synchronisation: producers write in real time, not all at once.
            ahead_s = pace_start_s + fed / self.spec.lines_per_s - time.monotonic()
            if ahead_s > 0:
                time.sleep(ahead_s)
        if outage.ends(last=True):
            self._start_all()

    def _start_all(self) -> None:
        for worker in self.workers:
            worker.daemons.start(self.arm)

    def _restart_died(self) -> None:
        for worker in self.workers:
            if worker.daemons.died():
                worker.daemons.start(self.arm)

    def _drain(self) -> checks.Violation | None:
        """Swap armed workers for unarmed ones, then wait: all consumed, nothing pending."""
        for worker in self.workers:
            worker.daemons.restart_unarmed()

        def idle() -> bool:
            self._restart_died()
            return self.feed.consumed(self.root) and _pending_sends(self.dsn) == 0

        return wait_drained(idle, "the workers to drain", self.spec.drain_timeout_s, self._left)

    def _left(self) -> str:
        """What the drain left: the stream's backlog, the unfinished sends, each worker."""
        logs = self.root / "drain-logs"
        return "\n".join(
            [
                self.feed.backlog(self.root),
                _sends_left(self.dsn),
                *(w.daemons.describe(w.name, logs / f"{w.name}.log") for w in self.workers),
            ]
        )

    # -- observing ----------------------------------------------------------------------------
    def _observe(self, expected: oracle.Expected) -> tuple[checks.Observed, order.Timed]:
        observed = checks.Observed(replays=True)
        timed = order.Timed()
        for worker in self.workers:
            self._acceptances(worker, observed, timed)
            for instance in worker.daemons.instances:
                if not instance.end.startswith("stopped"):
                    observed.killed.add(worker.instance(instance.number))
                    timed.killed_at[worker.instance(instance.number)] = instance.ended_at
        with psycopg.connect(self.dsn) as conn:
            for key, state, user in conn.execute("SELECT key, state, user_id FROM sends"):
                observed.states[key] = state
                observed.users[key] = user
            log = conn.execute(
                "SELECT event_id, user_id, reason FROM decision_log WHERE event_id IS NOT NULL"
            ).fetchall()
            observed.cancel_on = {key for (key,) in conn.execute(CANCEL_ON_KEYS)}
        for event_id, user, reason in log:
            identity = event_id if event_id in expected.copies else f"user:{user}"
            observed.decided.add(identity)
            if reason == "duplicate_event":
                observed.duplicates[identity] += 1
        observed.in_doubt = {entry["key"] for entry in self._status()["in_doubt"]}
        observed.dead = self.feed.dead()
        return observed, timed

    def _with_timeline(
        self, violation: checks.Violation, observed: checks.Observed
    ) -> checks.Violation:
        """A nudge violation with its user's decisions, in the ledger's order: who decided
        what, when, is what tells a daemon's bug from the oracle's."""
        if violation.check not in ("cooldown_broken", "cancelled_trigger_sent"):
            return violation
        user = observed.users.get(violation.subject, violation.subject)
        with psycopg.connect(self.dsn) as conn:
            rows = conn.execute(
                "SELECT at, event_id, key, outcome, reason FROM decision_log"
                " WHERE user_id = %s ORDER BY id",
                (user,),
            ).fetchall()
        lines = [
            f"{at:%H:%M:%S.%f} {event} {key} {outcome} {reason}"
            for at, event, key, outcome, reason in rows
        ]
        return checks.Violation(
            violation.check, violation.subject, violation.detail + "\n    " + "\n    ".join(lines)
        )

    @staticmethod
    def _acceptances(worker: Worker, observed: checks.Observed, timed: order.Timed) -> None:
        for request in worker.fake.requests:
            if not request.accepted:
                observed.note_refused(request.body)
                continue
            at = request.received_at or 0.0
            instance = worker.instance(worker.daemons.instance_at(at))
            for personalization in request.body["personalizations"]:
                key = personalization["custom_args"]["trigmail_key"]
                acceptance = checks.Acceptance(key, instance, request.fault, request.late)
                observed.acceptances.append(acceptance)
                timed.accepted_at.append(at)

    def _status(self) -> dict[str, Any]:
        self.status = status_json(self.root, self.dsn, limit=STATUS_LIMIT, timeout_s=120)
        return self.status

    def _figures(self, observed: checks.Observed, elapsed_s: float) -> dict[str, Any]:
        instances = [i for worker in self.workers for i in worker.daemons.instances]
        ends = Counter(i.end.split(":")[0] for i in instances)
        points = Counter(i.end.split(":")[1] for i in instances if i.end.startswith("kill_point"))
        accepted = observed.accepted()
        resent = {k: n for k, n in accepted.items() if n > 1 and oracle.rule_of(k) == "receipt"}
        requests = [r for worker in self.workers for r in worker.fake.requests]
        faults = Counter(r.fault.value for r in requests if r.fault is not None)
        return {
            "seed": self.spec.seed,
            "workers": len(self.workers),
            "lines_fed": len(self.workload.lines),
            "lines_by_kind": dict(Counter(line.kind.value for line in self.workload.lines)),
            "kills": ends["killed"] + ends["kill_point"],
            "harness_sigkills": ends["killed"],
            "kills_by_worker": {
                w.name: sum(not i.end.startswith("stopped") for i in w.daemons.instances)
                for w in self.workers
            },
            "kill_points_hit": dict(points),
            "daemon_starts": len(instances),
            "requests": len(requests),
            "faults_injected": dict(sorted(faults.items())),
            "accepted_personalizations": sum(accepted.values()),
            "sends_by_state": {k: v for k, v in self.status["counts"].items() if v},
            "in_doubt": len(observed.in_doubt),
            "skip_keys_accepted_more_than_once": sum(
                n > 1 for k, n in accepted.items() if oracle.rule_of(k) in oracle.SKIP_RULES
            ),
            "resend_keys_accepted_more_than_once": len(resent),
            "dead_letters": sum(observed.dead.values()),
            "elapsed_s": round(elapsed_s, 1),
        }


def _pending_sends(dsn: str) -> int:
    try:
        with psycopg.connect(dsn, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*) FROM sends WHERE state IN ('scheduled', 'sending')"
            ).fetchone()
    except psycopg.Error:  # the schema is not there yet
        return 1
    return 1 if row is None else int(row[0])


def _sends_left(dsn: str) -> str:
    try:
        with psycopg.connect(dsn, connect_timeout=5, row_factory=dict_row) as conn:
            counts = {
                row["state"]: row["n"]
                for row in conn.execute("SELECT state, count(*) AS n FROM sends GROUP BY state")
            }
            unfinished = conn.execute(
                "SELECT key, state, user_id, due_at, attempts, last_error, lease_owner,"
                " lease_until FROM sends WHERE state IN ('scheduled', 'sending')"
                " ORDER BY due_at, key"
            ).fetchall()
    except psycopg.Error as exc:
        return f"ledger: {type(exc).__name__}: {exc}"
    return sends_left(counts, unfinished)


def run(spec: RunSpec, root: Path, feed: RedisFeed, dsn: str, workers: int = 3) -> RunResult:
    """Run ``spec`` with ``workers`` workers, each against a fresh fake of the same rates."""
    with ExitStack() as stack:
        fakes = [
            stack.enter_context(FakeSendGrid(rates=spec.rates, seed=spec.seed + n))
            for n in range(workers)
        ]
        return WorkersRun(spec, root, feed, dsn, fakes).execute()
