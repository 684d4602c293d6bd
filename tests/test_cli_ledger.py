"""`trigmail ledger in-doubt` and `trigmail ledger resolve` end to end: the real CLI (run in this
process, tests/cli_runner.py), against a SQLite ledger prepared through the ledger API."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.cli_runner import cli
from tests.ledger_helpers import make_send, put_in_state
from trigmail.events import parse_ts
from trigmail.ledger import SqliteLedger
from trigmail.ledger.base import SendRecord, SendState

# Wide enough that no table cell folds, so rows can be matched whole.
ENV = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1", "COLUMNS": "250"}
TIMEOUT_ERROR = "InDoubtDeliveryError: read timeout"


def _run(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return cli("ledger", *args, cwd=cwd, env=ENV)


@pytest.fixture
def ledger_path(tmp_path: Path, t0: datetime) -> Path:
    """A ledger with two sends in doubt (k-doubt-1, k-doubt-2), one sent and one scheduled."""
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    try:
        for key, user, at in (
            ("k-doubt-1", "u1", t0),
            ("k-doubt-2", "u2", t0 + timedelta(minutes=5)),
        ):
            put_in_state(ledger, make_send(key, at, user=user), SendState.SCHEDULED, at)
            with ledger.transaction() as txn:
                assert txn.claim([key], at)
                txn.finish([key], SendState.IN_DOUBT, at, error=TIMEOUT_ERROR)
        put_in_state(ledger, make_send("k-sent", t0, user="u3"), SendState.SENT, t0)
        put_in_state(ledger, make_send("k-later", t0, user="u4"), SendState.SCHEDULED, t0)
    finally:
        ledger.close()
    return path


def _send(path: Path, key: str) -> SendRecord:
    ledger = SqliteLedger(path)
    try:
        found = ledger.get_send(key)
    finally:
        ledger.close()
    assert found is not None
    return found


def _states(path: Path) -> dict[str, SendState]:
    keys = ("k-doubt-1", "k-doubt-2", "k-sent", "k-later")
    return {key: _send(path, key).state for key in keys}


BEFORE = {
    "k-doubt-1": SendState.IN_DOUBT,
    "k-doubt-2": SendState.IN_DOUBT,
    "k-sent": SendState.SENT,
    "k-later": SendState.SCHEDULED,
}


# -- in-doubt ----------------------------------------------------------------------------------


def test_in_doubt_json_lists_every_send_in_doubt(tmp_path: Path, ledger_path: Path) -> None:
    result = _run("in-doubt", "--ledger", ledger_path, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    # Newest first: k-doubt-2 went in doubt five minutes after k-doubt-1.
    assert [s["key"] for s in listed] == ["k-doubt-2", "k-doubt-1"]
    first = listed[1]
    assert first == {
        "key": "k-doubt-1",
        "rule": "cart",
        "step": 0,
        "user_id": "u1",
        "email": "u1@example.com",
        "state": "in_doubt",
        "due_at": "2026-11-27T20:00:00Z",
        "since": "2026-11-27T20:00:00Z",
        "attempts": 1,
        "last_error": TIMEOUT_ERROR,
        # on_doubt: skip, no webhook event yet (docs/webhook.md)
        "evidence": "awaiting_evidence",
        "resend_at": None,
    }


def test_in_doubt_table_shows_each_send_and_the_total(tmp_path: Path, ledger_path: Path) -> None:
    result = _run("in-doubt", "--ledger", ledger_path, "--limit", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "in doubt: 2 (showing 1)" in result.stdout
    rows = [line for line in result.stdout.splitlines() if "k-doubt" in line]
    assert len(rows) == 1
    for cell in ("k-doubt-2", "cart", "u2", "u2@example.com", "2026-11-27T20:05:00Z", "1"):
        assert cell in rows[0]
    assert TIMEOUT_ERROR in rows[0]
    assert "trigmail ledger resolve KEY" in result.stdout
    assert "\x1b[" not in result.stdout


def test_in_doubt_reads_the_ledger_named_by_the_config(tmp_path: Path, ledger_path: Path) -> None:
    config = tmp_path / "trigmail.yaml"
    config.write_text(f"ledger: {ledger_path}\n", encoding="utf-8")
    result = _run("in-doubt", "--config", config, "--format", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert len(json.loads(result.stdout)) == 2


def test_in_doubt_of_an_empty_ledger_is_an_empty_list(tmp_path: Path) -> None:
    SqliteLedger(tmp_path / "empty.db").close()
    result = _run("in-doubt", "--ledger", tmp_path / "empty.db", "--format", "json", cwd=tmp_path)
    assert (result.returncode, json.loads(result.stdout)) == (0, [])


def test_missing_ledger_exits_1_without_creating_one(tmp_path: Path) -> None:
    result = _run("in-doubt", cwd=tmp_path)
    assert result.returncode == 1
    assert "no ledger at trigmail.db" in result.stderr
    assert not (tmp_path / "trigmail.db").exists()


# -- resolve -----------------------------------------------------------------------------------


def test_resolve_sent_marks_it_sent(tmp_path: Path, ledger_path: Path) -> None:
    result = _run("resolve", "k-doubt-1", "--sent", "--ledger", ledger_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "send k-doubt-1: marked sent\n"
    settled = _send(ledger_path, "k-doubt-1")
    assert settled.state is SendState.SENT
    assert settled.last_error == f"resolved as sent by operator (was: {TIMEOUT_ERROR})"
    assert _states(ledger_path) == {**BEFORE, "k-doubt-1": SendState.SENT}


def test_resolve_not_sent_schedules_it_again_now(tmp_path: Path, ledger_path: Path) -> None:
    before = datetime.now(UTC)
    result = _run(
        "resolve", "k-doubt-1", "--not-sent", "--ledger", ledger_path, "--format", "json",
        cwd=tmp_path,
    )  # fmt: skip
    after = datetime.now(UTC)
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert (printed["key"], printed["state"]) == ("k-doubt-1", "scheduled")
    settled = _send(ledger_path, "k-doubt-1")
    assert settled.state is SendState.SCHEDULED
    assert settled.claimed_at is None
    assert before <= settled.due_at <= after
    assert parse_ts(printed["due_at"]) == settled.due_at
    assert settled.last_error is not None
    assert settled.last_error.startswith("resolved as not sent by operator")
    assert _states(ledger_path) == {**BEFORE, "k-doubt-1": SendState.SCHEDULED}


def test_resolve_not_sent_says_when_serve_sends_it(tmp_path: Path, ledger_path: Path) -> None:
    result = _run("resolve", "k-doubt-2", "--not-sent", "--ledger", ledger_path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("send k-doubt-2: scheduled again, due ")
    assert "`trigmail serve` sends it within 5 minutes" in result.stdout


@pytest.mark.parametrize(
    ("key", "flag", "message"),
    [
        # already sent: nothing in doubt to settle
        ("k-sent", "--not-sent", "send 'k-sent' is sent, not in_doubt"),
        # still scheduled: the daemon will send it anyway
        ("k-later", "--sent", "send 'k-later' is scheduled, not in_doubt"),
        # a key the ledger never had (a typo)
        ("k-typo", "--sent", "no send with key 'k-typo' in the ledger"),
    ],
)
def test_resolve_refuses_what_is_not_in_doubt(
    tmp_path: Path, ledger_path: Path, key: str, flag: str, message: str
) -> None:
    result = _run("resolve", key, flag, "--ledger", ledger_path, cwd=tmp_path)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert _states(ledger_path) == BEFORE


def test_resolve_twice_is_refused_the_second_time(tmp_path: Path, ledger_path: Path) -> None:
    first = _run("resolve", "k-doubt-1", "--sent", "--ledger", ledger_path, cwd=tmp_path)
    second = _run("resolve", "k-doubt-1", "--not-sent", "--ledger", ledger_path, cwd=tmp_path)
    assert (first.returncode, second.returncode) == (0, 1)
    assert "is sent, not in_doubt" in second.stderr
    assert _send(ledger_path, "k-doubt-1").state is SendState.SENT


@pytest.mark.parametrize(
    "args",
    [
        ["resolve", "k-doubt-1"],  # neither --sent nor --not-sent
        ["resolve", "k-doubt-1", "--sent", "--not-sent"],  # both
        ["resolve", "--sent"],  # no key
        ["in-doubt", "--limit", "-1"],  # a negative limit
        ["in-doubt", "--format", "yaml"],  # an unknown format
    ],
)
def test_usage_errors_exit_2_and_change_nothing(
    tmp_path: Path, ledger_path: Path, args: list[str]
) -> None:
    result = _run(*args, "--ledger", ledger_path, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert re.search(r"Usage: .*trigmail ledger", result.stderr), result.stderr
    assert _states(ledger_path) == BEFORE


def _status_table(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """`trigmail status` as a table, wide and uncoloured, as a pipe reads it."""
    return cli("status", "--ledger", path, cwd=cwd, env=ENV)


def test_tables_print_bracketed_values_as_text(tmp_path: Path, t0: datetime) -> None:
    # Keys, user ids and errors come from events: read as rich markup, "[/u]" failed the
    # whole command and "[bold]" vanished into a style.
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    try:
        send = make_send("cart:[bold]1", t0, user="[/u]")
        put_in_state(ledger, send, SendState.SCHEDULED, t0)
        with ledger.transaction() as txn:
            assert txn.claim([send.key], t0)
            txn.finish([send.key], SendState.IN_DOUBT, t0, error="timeout [/x]")
    finally:
        ledger.close()
    in_doubt = _run("in-doubt", "--ledger", path, cwd=tmp_path)
    status = _status_table(path, tmp_path)
    for result in (in_doubt, status):
        assert result.returncode == 0, result.stderr
        row = next(line for line in result.stdout.splitlines() if "cart:" in line)
        for cell in ("cart:[bold]1", "[/u]", "timeout [/x]"):
            assert cell in row


def test_the_status_table_has_the_recent_section_help_promises(
    tmp_path: Path, t0: datetime
) -> None:
    path = tmp_path / "ledger.db"
    ledger = SqliteLedger(path)
    try:
        put_in_state(ledger, make_send("welcome:ana", t0, user="ana"), SendState.SENT, t0)
    finally:
        ledger.close()
    status = _status_table(path, tmp_path)
    assert status.returncode == 0, status.stderr
    recent = status.stdout[status.stdout.index("recent") :]
    assert "welcome:ana" in recent
