"""The CI-sized several-worker crash run: three ``trigmail serve`` processes on one Redis stream
group and one PostgreSQL ledger, SIGKILLed at random (seeded) and restarted under their names,
against fakes injecting every fault class. The long run is ``python -m bench.reliability
--workers 3`` (docs/reliability.md, *Several workers*).
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.reliability.ci import CI_FAULTS, assert_green
from tests.reliability.feeds import RedisFeed
from tests.reliability.harness import RunSpec
from tests.reliability.workers import run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_three_workers_survive_random_kills(
    tmp_path: Path, redis_url: str, postgres_dsn: str
) -> None:
    # 30 SIGKILLs spread over the three workers, kill points armed on some restarts.
    spec = RunSpec(
        seed=20261128,
        events=1500,
        kills=30,
        kill_points=True,
        rates=CI_FAULTS,
        lines_per_s=300,
        max_chunk=8,
    )
    feed = RedisFeed(redis_url, f"trigmail-reliability:{uuid.uuid4().hex[:12]}")
    try:
        result = run(spec, tmp_path, feed, postgres_dsn)
    finally:
        feed.close()
    print(result.figures)  # shown with -rP: the figures of the CI run
    assert_green(result)
    assert result.figures["harness_sigkills"] >= 30
    assert all(kills > 0 for kills in result.figures["kills_by_worker"].values())


def test_three_workers_on_a_backlog_decide_in_feed_order(
    tmp_path: Path, redis_url: str, postgres_dsn: str
) -> None:
    # Every worker down for 12 s while the producer goes on, then SIGKILLs: the three start on
    # one backlog and split each user's entries between them.
    spec = RunSpec(
        seed=12,
        events=750,
        kills=6,
        rates=CI_FAULTS,
        lines_per_s=100,
        max_chunk=8,
        outages=1,
        outage_s=12,
    )
    feed = RedisFeed(redis_url, f"trigmail-reliability:{uuid.uuid4().hex[:12]}")
    try:
        result = run(spec, tmp_path, feed, postgres_dsn)
    finally:
        feed.close()
    print(result.figures)
    assert_green(result)
    assert result.figures["nudges_that_must_be_cancelled"] > 20
