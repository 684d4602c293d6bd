"""`serve` on a PostgreSQL ledger: a spool has one reader, so a second worker refuses to start."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.serve_harness import REPO_ROOT, Serve, append_events, clean_env, wait_for
from trigmail.ledger import open_ledger
from trigmail.ledger.base import SendState

pytestmark = pytest.mark.postgres


def test_a_second_worker_on_one_spool_refuses_to_start(tmp_path: Path, postgres_dsn: str) -> None:
    shutil.copytree(REPO_ROOT / "rules.d", tmp_path / "rules.d")
    args = ["--ledger", postgres_dsn, "--metrics-listen", "127.0.0.1:0"]
    with Serve(tmp_path, args, clean_env()) as first:
        first.wait_ready()
        with Serve(tmp_path, args, clean_env()) as second:
            assert second.wait_exit() == 1
            assert "a spool has one worker only" in second.stderr
        # The first worker is unaffected and still delivers (to the outbox: no API key).
        append_events(
            tmp_path / "events.jsonl",
            [
                {
                    "event": "user_signup",
                    "user_id": "u1",
                    "email": "ana@example.com",
                    "user": {"first_name": "Ana"},
                }
            ],
        )
        ledger = open_ledger(postgres_dsn)
        try:
            wait_for(
                lambda: (send := ledger.get_send("welcome:u1")) and send.state is SendState.SENT,
                "the welcome email to be sent",
            )
        finally:
            ledger.close()
        assert first.stop() == 0
