"""A spool path's health (/healthz): real directories and files, a clock passed in."""

from __future__ import annotations

from pathlib import Path

from trigmail.spoolhealth import SpoolPathHealth


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


def test_a_missing_file_is_healthy_for_the_grace_then_says_so(tmp_path: Path) -> None:
    clock = Clock()
    spool = tmp_path / "events.jsonl"
    health = SpoolPathHealth(spool, grace_s=60, clock=clock)
    clock.now_s += 60
    assert health.problem() is None
    clock.now_s += 1
    assert health.problem() == (
        f"spool not read: no file at {spool} for 61s (do producers write it?)"
    )
    # The file appears: healthy, and the grace starts again if it goes.
    spool.write_text("")
    assert health.problem() is None
    spool.unlink()
    assert health.problem() is None
    clock.now_s += 61
    assert health.problem() is not None


def test_a_missing_directory_is_unhealthy_at_once(tmp_path: Path) -> None:
    spool = tmp_path / "typo" / "events.jsonl"
    health = SpoolPathHealth(spool, grace_s=60, clock=Clock())
    assert health.problem() == f"spool not read: its directory {spool.parent} does not exist"
