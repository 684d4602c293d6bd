"""Synthetic event streams for benchmarks: a realistic mix, reproducible from a seed."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

START = datetime(2026, 11, 1, tzinfo=UTC)
NAMES = ("cart_abandoned", "user_signup", "order_completed", "page_viewed")
WEIGHTS = (30, 10, 20, 40)


def event_lines(
    count: int,
    users: int = 20_000,
    seed: int = 7,
    bad_every: int = 0,
    step_s: float = 0.5,
    *,
    start: datetime = START,
    steady: bool = False,
) -> Iterator[bytes]:
    """Yield ``count`` JSONL lines, time-ordered, ``step_s`` apart on average.

    Args:
        count: how many lines.
        users: how many distinct users the events spread over.
        seed: the random seed.
        bad_every: every n-th line is not JSON (0: none).
        step_s: mean virtual seconds between events.
        start: the time the stream starts at.
        steady: exactly ``step_s`` apart, rather than at random (Poisson) intervals.
    """
    rng = random.Random(seed)
    ts = start
    for n in range(1, count + 1):
        if bad_every and n % bad_every == 0:
            yield b"{not json"
            continue
        ts += timedelta(seconds=step_s if steady else rng.expovariate(1 / step_s))
        user = rng.randrange(users)
        event = {
            "id": f"evt_{n}",
            "event": rng.choices(NAMES, WEIGHTS)[0],
            "user_id": f"u_{user}",
            "email": f"user{user}@example.com",
            "ts": ts.strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "user": {"first_name": "Ana", "plan": rng.choice(("free", "pro"))},
            "properties": {
                "cart_value": round(rng.uniform(5, 200), 2),
                "cart_url": f"https://shop.example/c/{n}",
                "order_id": f"o_{n}",
                "total": round(rng.uniform(10, 300), 2),
            },
        }
        yield json.dumps(event).encode()
