"""The short, CI-sized fault runs: real ``trigmail serve`` processes on a spool and on a Redis
stream, SIGKILLed at seeded moments and at each kill point, against a faulty fake SendGrid.

Each run is checked by ``tests/reliability/checks.py`` against the oracle; a run is green only
with zero violations. The long run is ``python -m bench.reliability`` (docs/reliability.md).
"""

from __future__ import annotations

import random
import uuid
from pathlib import Path

import pytest

from tests.fake_sendgrid import FaultRates
from tests.reliability.ci import CI_FAULTS, assert_green
from tests.reliability.feeds import RedisFeed, SpoolFeed
from tests.reliability.harness import RunSpec, run
from trigmail.faults import KillPoint

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def spool_feed(root: Path, seed: int, half_lines: bool = True) -> SpoolFeed:
    return SpoolFeed(root / "events.jsonl", random.Random(seed), half_lines)


def test_spool_survives_random_kills_rotation_and_half_written_lines(tmp_path: Path) -> None:
    # 20 SIGKILLs at seeded moments, kill points armed on some restarts, a rotation (rename,
    # then truncate) every 300 lines, a third of the writes ending in half a line.
    spec = RunSpec(
        seed=20261127,
        events=1500,
        kills=20,
        kill_points=True,
        rates=CI_FAULTS,
        rotate_every=300,
        lines_per_s=300,
        max_chunk=8,
    )
    result = run(spec, tmp_path, spool_feed(tmp_path, spec.seed))
    print(result.figures)  # shown with -rP: the figures of the CI run
    assert_green(result)
    assert result.figures["kills"] >= 20
    assert result.figures["rotations"] == {"rename": 3, "truncate": 2}
    assert result.figures["requests"] > 0


def test_redis_stream_survives_random_kills(tmp_path: Path, redis_url: str) -> None:
    # Each restart is the same consumer: it reads what it had not acknowledged first.
    spec = RunSpec(seed=7, events=600, kills=6, rates=CI_FAULTS, lines_per_s=300, max_chunk=8)
    feed = RedisFeed(redis_url, f"trigmail-reliability:{uuid.uuid4().hex[:12]}")
    try:
        result = run(spec, tmp_path, feed)
    finally:
        feed.close()
    print(result.figures)
    assert_green(result)
    assert result.figures["kills"] >= 6


def test_spool_backlog_after_an_outage_is_decided_in_feed_order(tmp_path: Path) -> None:
    # serve is down for 12 s, longer than the nudge's delay, while the producer goes on: it
    # starts on a backlog whose nudges fell due while their cancels waited unread behind them.
    spec = RunSpec(
        seed=11,
        events=750,
        kills=0,
        rates=CI_FAULTS,
        lines_per_s=100,
        max_chunk=8,
        outages=1,
        outage_s=12,
    )
    result = run(spec, tmp_path, spool_feed(tmp_path, spec.seed))
    print(result.figures)
    assert_green(result)
    assert result.figures["nudges_that_must_be_cancelled"] > 20


# Each kill point, reached deliberately by the first daemon; the count picks a moment with
# work on both sides of it (the n-th time the point is reached).
KILL_POINTS = {
    "after_read": (KillPoint.AFTER_READ, 3),
    "after_commit": (KillPoint.AFTER_COMMIT, 3),
    "after_claim": (KillPoint.AFTER_CLAIM, 2),
    "after_accept": (KillPoint.AFTER_ACCEPT, 2),
    "during_rotation": (KillPoint.DURING_ROTATION, 1),
}


@pytest.mark.parametrize("case", KILL_POINTS.values(), ids=KILL_POINTS.keys())
def test_spool_kill_point_is_reached_and_nothing_is_lost_or_doubled(
    tmp_path: Path, case: tuple[KillPoint, int]
) -> None:
    point, count = case
    spec = RunSpec(
        seed=31,
        events=300,
        kills=0,
        rates=FaultRates(),
        rotate_every=100 if point is KillPoint.DURING_ROTATION else 0,
        lines_per_s=300,
        max_chunk=8,
        first_kill_at=f"{point.value}:{count}",
    )
    result = run(spec, tmp_path, spool_feed(tmp_path, spec.seed))
    assert_green(result)
    assert result.figures["kill_points_hit"] == {point.value: 1}


def test_redis_kill_after_commit_before_ack_redelivers_and_decides_nothing_twice(
    tmp_path: Path, redis_url: str
) -> None:
    spec = RunSpec(
        seed=32,
        events=300,
        kills=0,
        rates=FaultRates(),
        lines_per_s=300,
        max_chunk=8,
        first_kill_at=f"{KillPoint.AFTER_COMMIT.value}:3",
    )
    feed = RedisFeed(redis_url, f"trigmail-reliability:{uuid.uuid4().hex[:12]}")
    try:
        result = run(spec, tmp_path, feed)
    finally:
        feed.close()
    assert_green(result)
    assert result.figures["kill_points_hit"] == {"after_commit": 1}
    # The committed, unacknowledged entries came again and were recognised as duplicates.
    assert result.figures["replays_recognised"] >= 1
