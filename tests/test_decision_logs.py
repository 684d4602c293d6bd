"""Logs for operators, from a real `trigmail serve`: one structured record per decision with
real fields in json and key=value in text; routine decisions at debug unless
`log.decisions: info`; no Python reprs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.serve_harness import Serve, append_events, clean_env
from trigmail.providers.outbox import key_filename

RULES = """\
rules:
  - id: welcome
    on: signup
    send: {template: d-welcome}
  - id: receipt
    on: order
    send:
      template: d-receipt
      data: {total: "{{ properties.total }}"}
"""
FIELDS = ("event_id", "user_id", "rule", "step", "key", "outcome", "reason")


def event(name: str, n: int, **properties: Any) -> dict[str, Any]:
    return {
        "id": f"{name}-{n}",
        "event": name,
        "user_id": f"u{n}",
        "email": f"u{n}@example.com",
        "properties": properties,
    }


def run_serve(root: Path, config: str, log_format: str) -> list[str]:
    (root / "rules.d").mkdir()
    (root / "rules.d" / "rules.yaml").write_text(RULES)
    (root / "config.yaml").write_text(config)
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    with Serve(root, ["--config", "config.yaml", "--log-format", log_format], env) as serve:
        serve.wait_ready()
        # A send, and an order whose template needs a field the event lacks.
        append_events(root / "events.jsonl", [event("signup", 1), event("order", 2)])
        serve.wait_line(r"template_error")
        serve.wait_line(r"send welcome:signup-1: sent")
        assert (root / "outbox" / key_filename("welcome:signup-1")).exists()
        assert serve.stop() == 0
    return serve.lines


def test_json_records_carry_real_decision_fields(tmp_path: Path) -> None:
    records = [json.loads(line) for line in run_serve(tmp_path, "{}\n", "json")]
    decided = {r["outcome"]: r for r in records if "outcome" in r}
    # Scheduling is routine: not at info by default. The send and the dead letter are.
    assert set(decided) == {"sent", "dead_letter"}
    assert {k: decided["sent"][k] for k in FIELDS} == {
        "event_id": "signup-1",
        "user_id": "u1",
        "rule": "welcome",
        "step": 0,
        "key": "welcome:signup-1",
        "outcome": "sent",
        "reason": "delivered",
    }
    dead = decided["dead_letter"]
    assert (dead["level"], dead["user_id"], dead["rule"], dead["reason"]) == (
        "warning",
        "u2",
        "receipt",
        "template_error",
    )
    assert dead["key"] is None
    assert "properties.total is missing" in dead["detail"]
    assert "None" not in dead["msg"]
    start = next(r for r in records if r["msg"] == "serve: starting")
    assert start["source.spool"] == "events.jsonl"


@pytest.mark.parametrize("decisions", ["info", "debug"])
def test_log_decisions_info_logs_scheduling_in_key_value_text(
    tmp_path: Path, decisions: str
) -> None:
    lines = run_serve(tmp_path, f"log: {{decisions: {decisions}}}\n", "text")
    scheduled = [line for line in lines if "outcome=scheduled" in line]
    if decisions == "info":
        assert len(scheduled) == 1, lines
        assert "user_id=u1 rule=welcome step=0 key=welcome:signup-1" in scheduled[0]
    else:
        assert scheduled == []
    dead = next(line for line in lines if "outcome=dead_letter" in line)
    assert "level=warning" in dead and "reason=template_error" in dead
    for line in lines:
        assert "{'" not in line and "None" not in line, line
