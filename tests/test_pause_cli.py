"""`trigmail pause|resume|pauses` against a real `trigmail serve`: a pause reaches the worker
through the ledger, holds (or drops) the rule's due sends, and shows in status and /metrics."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from tests.serve_harness import (
    Serve,
    append_events,
    clean_env,
    decisions,
    run_trigmail,
    sends,
    wait_for,
)
from trigmail.ledger.base import SendState
from trigmail.providers.outbox import key_filename

RULE = """\
rules:
  - id: nudge
    on: ping
    send: {template: d-nudge}
"""


def ping(user: str) -> dict[str, Any]:
    return {"id": f"ping-{user}", "event": "ping", "user_id": user, "email": f"{user}@example.com"}


def trigmail(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_trigmail(*args, cwd=cwd)


def test_a_paused_rule_holds_its_sends_until_resumed_and_drops_them_under_drop(
    tmp_path: Path,
) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "nudge.yaml").write_text(RULE)
    ledger = tmp_path / "trigmail.db"
    outbox = tmp_path / "outbox"
    spool = tmp_path / "events.jsonl"
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        mark = serve.mark()
        paused = trigmail(tmp_path, "pause", "nudge", "--reason", "template broken")
        assert paused.returncode == 0, paused.stderr
        assert "paused nudge until resumed; its due sends are held" in paused.stdout
        serve.wait_line(r"rule nudge: paused until resumed, due sends held: template broken",
                        after=mark)  # fmt: skip

        # The trigger is recorded; its send is held (deferred), not sent and not dropped.
        append_events(spool, [ping("ana")])
        key = "nudge:ping-ana"

        def held() -> bool:
            send = sends(ledger).get(key)
            created = None if send is None else send.created_at
            return send is not None and created is not None and send.due_at > created

        wait_for(held, "the send held")
        assert sends(ledger)[key].state is SendState.SCHEDULED
        assert not (outbox / key_filename(key)).exists()

        status = json.loads(trigmail(tmp_path, "status", "--format", "json").stdout)
        assert [(p["rule"], p["reason"], p["drop"]) for p in status["pauses"]] == [
            ("nudge", "template broken", False)
        ]
        _, metrics = serve.get("/metrics")
        assert 'trigmail_rule_paused{drop="false",rule="nudge"} 1.0' in metrics
        listed = json.loads(trigmail(tmp_path, "pauses", "--format", "json").stdout)
        assert [p["rule"] for p in listed] == ["nudge"]

        # Resumed: the held send goes out.
        resumed = trigmail(tmp_path, "resume", "nudge", "--format", "json")
        assert json.loads(resumed.stdout) == {"rule": "nudge", "resumed": True}
        wait_for((outbox / key_filename(key)).exists, "the held send sent after resume")

        # Paused with --drop: a due send is dropped with reason paused.
        mark = serve.mark()
        assert trigmail(tmp_path, "pause", "nudge", "--drop").returncode == 0
        # Obeyed within a second of the command: the worker says when it is.
        serve.wait_line(r"rule nudge: paused until resumed, due sends dropped", after=mark)
        append_events(spool, [ping("bob")])

        def dropped() -> bool:
            return any(
                e.key == "nudge:ping-bob" and e.reason.value == "paused" for e in decisions(ledger)
            )

        wait_for(dropped, "the send dropped as paused")
        assert sends(ledger)["nudge:ping-bob"].state is SendState.CANCELLED
        assert serve.stop() == 0
    assert sorted(p.name for p in outbox.iterdir()) == [key_filename(key)]


def test_pause_until_takes_a_duration_and_expires(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "nudge.yaml").write_text(RULE)
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        assert serve.stop() == 0
    done = trigmail(tmp_path, "pause", "nudge", "--until", "2026-01-01T00:00:00Z")
    assert done.returncode == 0, done.stderr
    # Already past: not in force.
    assert json.loads(trigmail(tmp_path, "pauses", "--format", "json").stdout) == []
    assert trigmail(tmp_path, "pause", "nudge", "--until", "2h").returncode == 0
    [pause] = json.loads(trigmail(tmp_path, "pauses", "--format", "json").stdout)
    assert pause["until"] is not None
    bad = trigmail(tmp_path, "pause", "nudge", "--until", "soon")
    assert bad.returncode == 2
    unknown = trigmail(tmp_path, "pause", "no-such-rule")
    assert "warning: no rule 'no-such-rule'" in unknown.stderr


def test_operator_commands_need_no_api_key(tmp_path: Path) -> None:
    # The service's credential is not in an operator's shell; pausing sends nothing.
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "nudge.yaml").write_text(RULE)
    config = tmp_path / "config.yaml"
    config.write_text("provider: {sendgrid: {}}\nfrom: {email: shop@example.com}\n")
    serve_args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
    with Serve(tmp_path, serve_args, clean_env({"SENDGRID_API_KEY": "SG.x"})) as s:
        s.wait_ready()
        assert s.stop() == 0
    for args in (["pause", "nudge"], ["pauses"], ["status"], ["dead-letters", "list"]):
        done = trigmail(tmp_path, *args, "--config", str(config))
        assert done.returncode == 0, (args, done.stderr)
    # Serving does need it.
    assert trigmail(tmp_path, "check", "--config", str(config)).returncode == 1
