"""`trigmail simulate` end to end: the real CLI, run in this process (tests/cli_runner.py) but
where a terminal is what is tested."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench.events import event_lines
from tests.cli_runner import cli

FIXTURES = Path(__file__).parent / "fixtures" / "simulate"
RULES = FIXTURES / "rules"
EVENTS = FIXTURES / "events.jsonl"
REPO = Path(__file__).parent.parent
FIELDS = {"at", "event_id", "user_id", "rule", "step", "key", "outcome", "reason", "due_at"}
OUTCOMES = {"scheduled", "sent", "cancelled", "skipped", "dropped", "dead_letter"}


def simulate(
    *args: str | Path, cwd: Path = REPO, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    return cli("simulate", *args, cwd=cwd, env=os.environ, stdin=stdin)


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def brief(lines: list[dict[str, Any]]) -> list[tuple[str, str, str | None]]:
    return [(line["outcome"], line["reason"], line["key"]) for line in lines]


def test_json_output_for_the_fixture_events() -> None:
    done = simulate(EVENTS, "--rules", RULES, "--format", "json")
    # line 3 is not JSON: reported with its line, and the run completed, so exit 0
    assert done.returncode == 0
    assert "1 line was set aside" in done.stderr
    lines = json_lines(done.stdout)
    assert all(line.keys() >= FIELDS for line in lines)
    assert {line["outcome"] for line in lines} <= OUTCOMES
    assert brief(lines) == [
        ("scheduled", "immediate", "welcome:u1"),
        ("sent", "delivered", "welcome:u1"),
        ("scheduled", "delay", "cart:e2"),
        ("dead_letter", "invalid_json", None),
        ("scheduled", "delay", "cart:e3"),
        ("cancelled", "cancel_on", "cart:e3"),
        ("skipped", "duplicate_event", None),
        ("skipped", "condition_false", None),
        ("sent", "delivered", "cart:e2"),
    ]
    # sends go out at their virtual due times, an hour after the cart was left
    sent = [line for line in lines if line["outcome"] == "sent"]
    assert [(s["at"], s["due_at"]) for s in sent] == [
        ("2026-11-27T10:00:00Z", "2026-11-27T10:00:00Z"),
        ("2026-11-27T11:05:00Z", "2026-11-27T11:05:00Z"),
    ]
    dead = next(line for line in lines if line["outcome"] == "dead_letter")
    assert dead["detail"].startswith("events.jsonl:3:")
    assert dead["rule"] is None
    assert dead["line"] == 3
    assert next(line for line in lines if line["key"] == "cart:e2")["user_id"] == "u1"


def test_table_output() -> None:
    done = simulate(EVENTS, "--rules", RULES)
    assert done.returncode == 0
    out = done.stdout
    assert "7 events" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("2026-")]
    assert [row[1:3] for row in rows] == [
        ["scheduled", "welcome"],
        ["sent", "welcome"],
        ["scheduled", "cart"],
        ["dead_letter", "-"],
        ["scheduled", "cart"],
        ["cancelled", "cart"],
        ["skipped", "-"],
        ["skipped", "cart"],
        ["sent", "cart"],
    ]
    assert "due 2026-11-27T11:05:00Z" in out
    assert "events.jsonl:3" in out
    total = next(line for line in out.splitlines() if "total" in line)
    # scheduled, sent, cancelled, skipped, dropped, dead_letter
    assert [cell for cell in total.replace("│", " ").split() if cell.isdigit()] == [
        "3",
        "2",
        "1",
        "2",
        "0",
        "1",
    ]


def test_standard_input_all_good_lines_exit_zero() -> None:
    good = [line for line in EVENTS.read_text().splitlines() if line.startswith('{"')]
    done = simulate("-", "--rules", RULES, "--format", "json", stdin="\n".join(good) + "\n\n")
    assert done.returncode == 0, done.stderr
    outcomes = Counter(line["outcome"] for line in json_lines(done.stdout))
    assert outcomes == {"scheduled": 3, "sent": 2, "cancelled": 1, "skipped": 2}


@pytest.mark.parametrize(
    ("until", "sent_keys"),
    [
        # before the cart reminder's due time (11:05): it stays pending, never sent
        ("2026-11-27T11:04:59Z", ["welcome:u1"]),
        # exactly at it: sent
        ("2026-11-27T11:05:00Z", ["welcome:u1", "cart:e2"]),
    ],
)
def test_until_stops_firing(until: str, sent_keys: list[str]) -> None:
    done = simulate(EVENTS, "--rules", RULES, "--format", "json", "--until", until)
    lines = json_lines(done.stdout)
    assert [line["key"] for line in lines if line["outcome"] == "sent"] == sent_keys
    assert max(line["at"] for line in lines) <= until


def test_invalid_rules_exit_one_with_location() -> None:
    done = simulate(EVENTS, "--rules", FIXTURES / "bad_rules")
    assert done.returncode == 1
    assert done.stdout == ""
    problem = done.stderr.strip().splitlines()
    assert len(problem) == 1
    assert problem[0].startswith(f"{FIXTURES / 'bad_rules' / 'broken.yaml'}:4:12: error: ")
    assert "not a duration" in problem[0]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        # a missing events file: exit 1
        (["nope.jsonl", "--rules", str(RULES)], 1, "cannot read"),
        # a missing rules directory: exit 1
        ([str(EVENTS), "--rules", "no-such-dir"], 1, "no such directory"),
        # --until that is not a time: usage error
        ([str(EVENTS), "--rules", str(RULES), "--until", "soon"], 2, "RFC 3339"),
        # an unknown format: usage error
        ([str(EVENTS), "--rules", str(RULES), "--format", "xml"], 2, "xml"),
    ],
)
def test_errors_and_usage(args: list[str], code: int, message: str) -> None:
    done = simulate(*args)
    assert done.returncode == code
    assert message in done.stderr


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hundred_thousand_events_totals(tmp_path: Path) -> None:
    count, bad_every = 100_000, 1000
    raw = list(event_lines(count, bad_every=bad_every))
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(raw) + b"\n")
    # an independent reading of the file: what the rules in rules.d must make of it
    events = [json.loads(line) for line in raw if line.startswith(b'{"')]
    names = Counter(event["event"] for event in events)
    bad_lines = count - len(events)

    done = simulate(path, "--rules", REPO / "rules.d", "--format", "json", "--strict")
    assert done.returncode == 1  # the bad lines, under --strict
    lines = json_lines(done.stdout)
    by_outcome = Counter(line["outcome"] for line in lines)
    reasons = Counter((line["outcome"], line["reason"]) for line in lines)

    assert bad_lines == count // bad_every
    assert reasons[("dead_letter", "invalid_json")] == bad_lines
    assert by_outcome["dead_letter"] == bad_lines
    # every order gets its receipt: one per order id, each id distinct here
    receipt = Counter(line["outcome"] for line in lines if line["rule"] == "receipt")
    assert receipt["scheduled"] == names["order_completed"] == receipt["sent"]
    # page_viewed triggers and cancels nothing
    assert reasons[("skipped", "no_rule")] == names["page_viewed"]
    # welcome is once per user: one scheduled-or-duplicate per sign-up
    welcome = Counter(line["outcome"] for line in lines if line["rule"] == "welcome")
    signups_per_user = Counter(e["user_id"] for e in events if e["event"] == "user_signup")
    assert welcome["scheduled"] == len(signups_per_user)
    assert welcome["skipped"] == names["user_signup"] - len(signups_per_user)
    # cart-recovery decides once per abandoned cart (scheduled or skipped)
    cart = Counter(line["outcome"] for line in lines if line["rule"] == "cart-recovery")
    cart_decided = sum(
        1
        for line in lines
        if line["rule"] == "cart-recovery"
        and line["event_id"] is not None
        and line["outcome"] in ("scheduled", "skipped")
    )
    assert cart_decided == names["cart_abandoned"]
    assert cart["scheduled"] == cart["sent"] + cart["cancelled"] + cart["dropped"]

    # every scheduled key ends exactly once: sent, cancelled or dropped (nothing pending)
    scheduled = {line["key"] for line in lines if line["outcome"] == "scheduled"}
    assert len(scheduled) == by_outcome["scheduled"]
    ends = Counter(
        line["key"] for line in lines if line["outcome"] in ("sent", "cancelled", "dropped")
    )
    assert set(ends) == scheduled
    assert max(ends.values()) == 1
    assert by_outcome["scheduled"] == (
        by_outcome["sent"] + by_outcome["cancelled"] + by_outcome["dropped"]
    )
    # nothing fires after a send window of its rule would allow it (all sent at or after due)
    assert all(line["at"] >= line["due_at"] for line in lines if line["outcome"] == "sent")


def test_until_leaves_sends_pending_and_counts_add_up(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    raw = list(event_lines(2000, users=300, bad_every=100))
    path.write_bytes(b"\n".join(raw) + b"\n")
    lines = json_lines(simulate(path, "--rules", REPO / "rules.d", "--format", "json").stdout)
    # stop the clock after the last event (about 17 minutes in), before the next day
    until = "2026-11-01T02:00:00Z"
    assert max(json.loads(line)["ts"] for line in raw if line.startswith(b'{"')) < until
    cut = json_lines(
        simulate(path, "--rules", REPO / "rules.d", "--format", "json", "--until", until).stdout
    )
    assert all(line["at"] <= until for line in cut)
    outcomes = Counter(line["outcome"] for line in cut)
    ended = {line["key"] for line in cut if line["outcome"] in ("sent", "cancelled", "dropped")}
    pending = {line["key"] for line in cut if line["outcome"] == "scheduled"} - ended
    # onboarding's steps (1 and 3 days) are still pending at the cut...
    assert pending
    assert all(line["due_at"] > until for line in cut if line["key"] in pending)
    assert outcomes["scheduled"] == (
        outcomes["sent"] + outcomes["cancelled"] + outcomes["dropped"] + len(pending)
    )
    # ...and the full run sends them later: the cut only stopped the clock
    full_sent = {line["key"] for line in lines if line["outcome"] == "sent"}
    assert pending & full_sent
    assert Counter(line["outcome"] for line in lines)["dead_letter"] == outcomes["dead_letter"]


def test_until_before_the_last_event_leaves_later_events_undecided(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    raw = list(event_lines(200, users=50))
    path.write_bytes(b"\n".join(raw) + b"\n")
    times = sorted(json.loads(line)["ts"] for line in raw)
    until = times[99]
    lines = json_lines(
        simulate(path, "--rules", REPO / "rules.d", "--format", "json", "--until", until).stdout
    )
    decided = {line["event_id"] for line in lines if line["event_id"] is not None}
    later = {json.loads(line)["id"] for line in raw if json.loads(line)["ts"] > until}
    assert later and not decided & later
    assert all(line["at"] <= until for line in lines)


MARKUP_LIKE = (
    b'{"event": "user_signup", "user_id": "[/oops]", "email": "a@example.com",'
    b' "ts": "2026-11-27T10:00:00Z", "user": {"first_name": "[bold]Ana"}}\n'
)


@pytest.mark.parametrize("terminal", [False, True])
def test_table_lines_print_brackets_as_text(tmp_path: Path, terminal: bool) -> None:
    # Rich markup would have read "[/oops]" as a closing tag and failed the whole report.
    events = tmp_path / "events.jsonl"
    events.write_bytes(MARKUP_LIKE)
    env_args = ["env", "FORCE_COLOR=1", "TTY_COMPATIBLE=1"] if terminal else ["env"]
    done = subprocess.run(
        [*env_args, sys.executable, "-m", "trigmail", "simulate", str(events), "--rules", RULES],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    welcome = [line for line in done.stdout.splitlines() if line.startswith("2026-")]
    assert len(welcome) == 2
    assert all("[/oops]" in line for line in welcome)
    assert ("\x1b[" in done.stdout) is terminal


def test_strict_makes_a_bad_line_exit_one() -> None:
    done = simulate(EVENTS, "--rules", RULES, "--strict", "--format", "json")
    assert done.returncode == 1
    assert [line["line"] for line in json_lines(done.stdout) if "line" in line] == [3]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        # one user's decisions only
        (["--user", "u2"], {("u2", "cart")}),
        # one rule's decisions only
        (["--rule", "welcome"], {("u1", "welcome")}),
        # one outcome only, repeatable
        (
            ["--outcome", "sent", "--outcome", "cancelled"],
            {("u1", "welcome"), ("u1", "cart"), ("u2", "cart")},
        ),
    ],
)
def test_filters(args: list[str], expected: set[tuple[str, str]]) -> None:
    done = simulate(EVENTS, "--rules", RULES, "--format", "json", *args)
    assert done.returncode == 0, done.stderr
    lines = json_lines(done.stdout)
    assert {(line["user_id"], line["rule"]) for line in lines} == expected
    if "--outcome" in args:
        assert {line["outcome"] for line in lines} == {"sent", "cancelled"}


def test_summary_counts_only() -> None:
    done = simulate(EVENTS, "--rules", RULES, "--format", "json", "--summary", "--rule", "cart")
    assert done.returncode == 0, done.stderr
    [summary] = json_lines(done.stdout)
    assert summary["events"] == 7
    assert summary["by_rule"] == {"cart": {"scheduled": 2, "cancelled": 1, "skipped": 1, "sent": 1}}


def test_compare_with_an_older_rules_directory(tmp_path: Path) -> None:
    new = tmp_path / "new"
    shutil.copytree(RULES, new)
    for path in new.iterdir():
        path.write_text(path.read_text().replace("delay: 1h", "delay: 2h"))
    done = simulate(EVENTS, "--rules", new, "--compare", RULES, "--format", "json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["rules"]
    # the reminder moved an hour later; the welcome email is untouched
    assert report["cart"]["moved"] == 1
    assert report["cart"]["samples"]["moved"] == [
        {
            "user_id": "u1",
            "step": 0,
            "event_id": "e2",
            "old_at": "2026-11-27T11:05:00Z",
            "new_at": "2026-11-27T12:05:00Z",
        }
    ]
    assert (report["welcome"]["unchanged"], report["welcome"]["added"]) == (1, 0)


def test_compare_with_rules_from_git(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(RULES, repo / "rules.d")
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "rules"], check=True)
    # the working copy drops the welcome rule's file
    for path in (repo / "rules.d").iterdir():
        if "welcome" in path.read_text():
            path.write_text(path.read_text().replace("on: user_signup", "on: never_sent"))
    done = simulate(EVENTS, "--compare", "git:HEAD", "--format", "json", cwd=repo)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["rules"]
    assert report["welcome"]["removed"] == 1


def test_compare_with_an_unknown_git_ref_exits_one(tmp_path: Path) -> None:
    done = simulate(EVENTS, "--rules", RULES, "--compare", "git:no-such-ref")
    assert done.returncode == 1
    assert "cannot read rules.d at no-such-ref from git" in done.stderr
