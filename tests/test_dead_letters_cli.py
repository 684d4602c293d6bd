"""Dead letters end to end: one owner (the ledger), `trigmail dead-letters list|show|replay`
against a real `trigmail serve`, and `status` and `/metrics` counting the same letters."""

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
    status_json,
    wait_for,
)
from trigmail.events import MAX_EVENT_BYTES
from trigmail.providers.outbox import key_filename

FIXED_RULE = """\
rules:
  - id: receipt
    on: order
    dedupe: "{rule}:{properties.order_id}"
    send:
      template: d-receipt
      data:
        order_id: "{{ properties.order_id }}"
        total: "{{ properties.TOTAL }}"
"""
# The same rule with a field the events lack: every order is a template_error.
BROKEN_RULE = FIXED_RULE.replace("properties.TOTAL", "properties.total")


def order(n: int) -> dict[str, Any]:
    return {
        "id": f"order-{n}",
        "event": "order",
        "user_id": f"u{n}",
        "email": f"u{n}@example.com",
        "properties": {"order_id": f"o{n}", "TOTAL": 5},
    }


def trigmail(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_trigmail(*args, cwd=cwd)


def dead_letters_metric(serve: Serve) -> float:
    _, text = serve.get("/metrics")
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("trigmail_dead_letters_total{")
    )


def test_dead_letters_are_listed_counted_alike_and_replayed_once(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    rule_file = rules / "receipt.yaml"
    rule_file.write_text(BROKEN_RULE)
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    spool = tmp_path / "events.jsonl"
    outbox = tmp_path / "outbox"
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        # A rule error, bad JSON, and a line the spool itself refuses (too long).
        append_events(spool, [order(1), "{not json", "x" * (MAX_EVENT_BYTES + 10)])
        wait_for(lambda: dead_letters_metric(serve) == 3, "three dead letters counted")
        assert status_json(tmp_path, tmp_path / "trigmail.db")["dead_letters"] == 3

        listed = trigmail(tmp_path, "dead-letters", "list", "--format", "json")
        assert listed.returncode == 0, listed.stderr
        letters = json.loads(listed.stdout)
        reasons = sorted(letter["reason"] for letter in letters)
        assert reasons == ["invalid_json", "line_too_long", "template_error"]
        # The spool's file holds copies of the same letters, written after the commit.
        copies = (tmp_path / "events.dead.jsonl").read_text().splitlines()
        assert sorted(json.loads(line)["reason"] for line in copies) == reasons

        [broken] = [letter for letter in letters if letter["reason"] == "template_error"]
        shown = trigmail(tmp_path, "dead-letters", "show", broken["id"][:8], "--format", "json")
        assert json.loads(json.loads(shown.stdout)["raw"])["id"] == "order-1"

        # Appending the event again is a duplicate: that is why replay exists.
        mark = serve.mark()
        rule_file.write_text(FIXED_RULE)
        serve.wait_line(r"rules: version \w+ in force", after=mark)

        dry = trigmail(
            tmp_path, "dead-letters", "replay", "--reason", "template_error", "--dry-run",
            "--format", "json",
        )  # fmt: skip
        assert dry.returncode == 0, dry.stderr
        outcomes = [json.loads(line)["outcome"] for line in dry.stdout.splitlines()]
        assert "sent" in outcomes
        assert not outcome_file(outbox).exists()  # a dry run replays nothing

        replayed = trigmail(tmp_path, "dead-letters", "replay", broken["id"], "--format", "json")
        assert replayed.returncode == 0, replayed.stderr
        assert json.loads(replayed.stdout) == [
            {"id": broken["id"], "event_id": "order-1", "replayed": True, "problem": None}
        ]
        wait_for(outcome_file(outbox).exists, "the replayed receipt in the outbox")

        # A second replay decides it again, but the key is kept: no second email.
        again = trigmail(tmp_path, "dead-letters", "replay", broken["id"])
        assert again.returncode == 0, again.stderr

        def skipped_twice() -> bool:
            entries = decisions(tmp_path / "trigmail.db")
            reasons = [e.reason.value for e in entries if e.event_id == "order-1"]
            return "duplicate_key" in reasons

        wait_for(skipped_twice, "the second replay skipped as duplicate_key")
        # Only replayed letters bypass duplicate_event: the same event appended is a duplicate.
        append_events(spool, [order(1)])
        wait_for(
            lambda: any(
                e.reason.value == "duplicate_event"
                for e in decisions(tmp_path / "trigmail.db")
                if e.event_id == "order-1"
            ),
            "the plain duplicate skipped",
        )
        assert serve.stop() == 0
    assert len(list(outbox.iterdir())) == 1


def outcome_file(outbox: Path) -> Path:
    return outbox / key_filename("receipt:o1")


def test_replay_refuses_a_letter_that_keeps_only_the_start_of_its_event(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        append_events(tmp_path / "events.jsonl", ["y" * (MAX_EVENT_BYTES + 1)])
        wait_for(lambda: dead_letters_metric(serve) == 1, "the letter")
        assert serve.stop() == 0
    result = trigmail(tmp_path, "dead-letters", "replay", "--reason", "line_too_long")
    assert result.returncode == 1
    assert "keeps only the start of the event" in result.stdout
    assert "usage" not in result.stderr.lower()
