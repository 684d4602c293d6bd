"""`trigmail explain`: one user's timeline read from a real ledger (SQLite file, PostgreSQL).

The ledgers are written by the real pipeline on a virtual clock from the sample rules, then
read by the real command (in this process, tests/cli_runner.py); its JSON lines are checked
against what `simulate` prints for the same events, and its words against the issue's examples.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from tests.cli_runner import run_trigmail_here
from tests.serve_harness import REPO_ROOT, Serve, append_events, clean_env, wait_for
from trigmail.evidence import DeliveryEvent, DeliveryEventType
from trigmail.ledger import open_ledger
from trigmail.rules.loader import load_rule_set
from trigmail.simulate import Simulation

RULES = REPO_ROOT / "rules.d"


def _event(n: int, name: str, ts: str, **extra: Any) -> dict[str, Any]:
    base = {"id": f"e{n}", "event": name, "user_id": "ana", "email": "ana@example.com"}
    return {**base, "ts": ts, **extra}


_CART = {"cart_value": 50, "cart_url": "https://shop.example/c/1"}
_ANA = {"first_name": "Ana"}
# Ana signs up, abandons a cart and orders 30 minutes later (no reminder); two days later a
# cart reminder goes out, a second one the same day is held back by the cooldown; a second
# sign-up finds the welcome already sent; the weekly cap then drops the onboarding tips.
EVENTS = [
    _event(1, "user_signup", "2026-03-02T09:00:00Z", user={"first_name": "Ana", "plan": "free"}),
    _event(2, "cart_abandoned", user=_ANA, ts="2026-03-02T10:05:00Z", properties=_CART),
    _event(3, "order_completed", "2026-03-02T10:35:00Z", properties={"order_id": "o1", "total": 5}),
    _event(4, "cart_abandoned", user=_ANA, ts="2026-03-04T10:05:00Z", properties=_CART),
    _event(5, "cart_abandoned", user=_ANA, ts="2026-03-04T12:05:00Z", properties=_CART),
    _event(6, "user_signup", "2026-03-04T13:00:00Z", user={"first_name": "Ana", "plan": "free"}),
    _event(7, "page_viewed", "2026-03-04T13:01:00Z"),
    {**_event(8, "user_signup", "2026-03-04T14:00:00Z"), "user_id": "bob"},
]
LINES = [json.dumps(e).encode() for e in EVENTS]


def replay(target: str) -> None:
    """Decide the events with the sample rules into the ledger ``target``, as serve would."""
    rules = load_rule_set(RULES)
    simulation = Simulation(
        rules, lambda entry: None, ledger=lambda clock: open_ledger(target, clock=clock)
    )
    try:
        simulation.run(LINES)
    finally:
        simulation.ledger.close()


def config_for(tmp_path: Path, target: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"rules_dir": str(RULES), "ledger": target}))
    return path


def trigmail(*args: str | Path, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return run_trigmail_here(*args, cwd=cwd)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A real ledger holding the events' history: a SQLite file or a PostgreSQL database."""
    if request.param == "sqlite":
        found = str(tmp_path / "ledger.db")
    else:
        found = request.getfixturevalue("postgres_dsn")
    replay(found)
    yield found


def test_json_lines_are_simulates_plus_the_send(target: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, target)
    done = trigmail("explain", "ana", "--config", config, "--format", "json")
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(LINES) + b"\n")
    simulated = trigmail("simulate", events, "--rules", RULES, "--user", "ana", "--format", "json")
    assert simulated.returncode == 0, simulated.stderr
    # `line` (where a dead letter is in the file) is simulate's own
    expected = [{k: v for k, v in x.items() if k != "line"} for x in json_lines(simulated.stdout)]
    fields = list(expected[0])
    # Same decisions, same order (simulate's is virtual time; the log's is its time and id).
    assert [{k: line[k] for k in fields} for line in lines] == expected
    assert all(line["user_id"] == "ana" for line in lines)
    by_key = {(line["key"], line["outcome"]): line for line in lines}
    welcome = by_key["welcome:ana", "sent"]
    assert (welcome["state"], welcome["attempts"]) == ("sent", 1)
    assert welcome["message_id"]
    assert welcome["delivery"] is None
    assert by_key["cart-recovery:e2", "scheduled"]["state"] == "cancelled"
    no_rule = [line for line in lines if line["rule"] is None]
    assert [(line["state"], line["text"]) for line in no_rule] == [
        (None, "event e7: no rule starts on it")
    ]


def test_a_sends_delivery_event_from_the_webhook_is_shown(target: str, tmp_path: Path) -> None:
    with closing(open_ledger(target)) as ledger, ledger.transaction() as txn:
        at = datetime(2026, 11, 27, 9, 5, tzinfo=UTC)
        bounce = DeliveryEvent(
            "sg-1", "welcome:ana", "welcome", DeliveryEventType.BOUNCE, at, "m-1", "550", at
        )
        assert txn.add_delivery_events([bounce]) == [bounce]
    done = trigmail("explain", "ana", "--config", config_for(tmp_path, target), "--format", "json")
    assert done.returncode == 0, done.stderr
    sent = [
        x for x in json_lines(done.stdout) if (x["key"], x["outcome"]) == ("welcome:ana", "sent")
    ]
    assert sent and sent[0]["delivery"]["event"] == "bounce"
    table = trigmail("explain", "ana", "--config", config_for(tmp_path, target))
    assert "bounce" in table.stdout


def test_reasons_in_words(target: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, target)
    done = trigmail("explain", "ana", "--config", config, "--format", "json")
    texts = [line["text"] for line in json_lines(done.stdout)]
    assert "cart-recovery: cancelled 10:35 by order_completed e3" in texts
    assert "cart-recovery: skipped, cooldown until 2026-03-05 11:05" in texts
    assert "welcome: skipped, already scheduled or sent once under key welcome:ana" in texts
    # The cap counts welcome, onboarding and cart-recovery together (rules.d/caps.yaml).
    full = (
        "onboarding step 2: cap marketing-weekly full: sent welcome 2026-03-02 09:00, "
        "onboarding step 1 2026-03-03 09:00, cart-recovery 2026-03-04 11:05"
    )
    assert full in texts
    assert "onboarding step 1: scheduled by e1, due 2026-03-03 09:00" in texts


def test_filters_by_rule_and_since_and_limit(target: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, target)

    def keys(*args: str) -> list[tuple[str, str]]:
        done = trigmail("explain", "ana", "--config", config, "--format", "json", *args)
        assert done.returncode == 0, done.stderr
        return [(line["at"], line["outcome"]) for line in json_lines(done.stdout)]

    rule = trigmail("explain", "ana", "--config", config, "--format", "json", "--rule", "receipt")
    assert [(x["rule"], x["outcome"]) for x in json_lines(rule.stdout)] == [
        ("receipt", "scheduled"),
        ("receipt", "sent"),
    ]
    everything = keys()
    since = keys("--since", "2026-03-04T13:00:00Z")
    assert since == [k for k in everything if k[0] >= "2026-03-04T13:00:00Z"]
    assert 0 < len(since) < len(everything)
    assert keys("--limit", "3") == everything[-3:]
    # A duration counts back from now: these decisions are in 2026-03, long before it.
    assert keys("--since", "1h") == []


def test_table_for_people(target: str, tmp_path: Path) -> None:
    config = config_for(tmp_path, target)
    done = trigmail("explain", "ana", "--config", config)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "cancelled 10:35 by order_completed e3" in out
    assert "cooldown until 2026-03-05 11:05" in out
    assert "sends" in out
    # a send's state, attempts and message id beside its decision
    assert "sent · 1 attempt · " in out
    assert "bob" not in out
    nobody = trigmail("explain", "carol", "--config", config)
    assert nobody.returncode == 0
    assert "no decisions about carol" in nobody.stdout


def test_no_ledger_is_exit_one_and_creates_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.db"
    done = trigmail("explain", "ana", "--ledger", missing, cwd=tmp_path)
    assert done.returncode == 1
    assert "no ledger at" in done.stderr
    assert not missing.exists()
    other = tmp_path / "other.db"
    with closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE t (x)")
    done = trigmail("explain", "ana", "--ledger", other, cwd=tmp_path)
    assert done.returncode == 1
    assert "not a trigmail ledger" in done.stderr


def test_bad_since_is_a_usage_error(tmp_path: Path) -> None:
    done = trigmail("explain", "ana", "--ledger", tmp_path / "x.db", "--since", "yesterday")
    assert done.returncode == 2
    assert "neither a duration" in done.stderr


def test_an_older_sqlite_ledger_is_read_and_never_migrated(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    replay(str(path))
    # As a ledger written before the (user_id, at) index: explain reads it, slower, as it is.
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP INDEX decision_log_by_user_at")
        conn.execute("UPDATE meta SET value = '3' WHERE name = 'schema_version'")
        conn.commit()
    done = trigmail("explain", "ana", "--ledger", path, "--format", "json")
    assert done.returncode == 0, done.stderr
    assert len(json_lines(done.stdout)) > 10
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchall() == [
            ("3",)
        ]
        names = {name for (name,) in conn.execute("SELECT name FROM sqlite_master")}
    assert "decision_log_by_user_at" not in names


def test_an_empty_postgres_database_is_not_a_ledger_and_stays_empty(postgres_dsn: str) -> None:
    done = trigmail("explain", "ana", "--ledger", postgres_dsn)
    assert done.returncode == 1
    assert "not a trigmail ledger" in done.stderr
    with psycopg.connect(postgres_dsn) as conn:
        tables = conn.execute(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert tables == (0,)


def test_beside_a_running_serve(tmp_path: Path) -> None:
    shutil.copytree(RULES, tmp_path / "rules.d")
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    signup = {
        "id": "s1",
        "event": "user_signup",
        "user_id": "u_1",
        "email": "ana@example.com",
        "user": {"first_name": "Ana", "plan": "free"},
    }

    def welcome_sent() -> dict[str, Any] | None:
        done = trigmail("explain", "u_1", "--format", "json", cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        sent = [
            x for x in json_lines(done.stdout) if (x["rule"], x["outcome"]) == ("welcome", "sent")
        ]
        return sent[0] if sent else None

    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        append_events(tmp_path / "events.jsonl", [signup])
        line = wait_for(welcome_sent, "explain to show the welcome sent")
        assert line["state"] == "sent"
        assert line["event_id"] == "s1"
        # serve is still deciding and writing beside the reader
        append_events(tmp_path / "events.jsonl", [{**signup, "id": "s2"}])
        wait_for(
            lambda: (
                "already scheduled or sent once" in trigmail("explain", "u_1", cwd=tmp_path).stdout
            ),
            "the second sign-up in the timeline",
        )
        assert serve.stop() == 0
