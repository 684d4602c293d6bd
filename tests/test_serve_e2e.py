"""End to end: the real ``trigmail serve`` as a subprocess, on a spool, against the fake SendGrid.

Every outcome is read back from the two records that matter: the ledger (what trigmail believes)
and the fake (what the provider received).
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.fake_sendgrid import FakeSendGrid, Fault, FaultKind, FaultRates
from tests.serve_harness import (
    REPO_ROOT,
    Serve,
    append_events,
    clean_env,
    decisions,
    ledger_status,
    ping,
    sends,
    status_json,
    wait_for,
    write_config,
)
from trigmail.decisions import Outcome
from trigmail.ledger.base import SendRecord, SendState

pytestmark = pytest.mark.slow

RULES = Path(__file__).parent / "fixtures" / "serve" / "rules"
FINAL = frozenset({SendState.SENT, SendState.FAILED, SendState.IN_DOUBT, SendState.CANCELLED})


def order(n: int | str) -> dict[str, Any]:
    """An ``order`` event: the ``receipt`` rule (on_doubt: resend) sends key ``receipt:<n>``."""
    return {
        "id": f"o{n}",
        "event": "order",
        "user_id": f"u{n}",
        "email": f"u{n}@example.com",
        "properties": {"order_id": str(n)},
    }


def body_keys(body: Any) -> list[str]:
    return [p["custom_args"]["trigmail_key"] for p in body["personalizations"]]


@dataclass
class Site:
    """A working directory for one daemon: rules, spool, ledger, config."""

    root: Path
    fake_url: str
    api_key: str
    config_options: dict[str, Any] = field(default_factory=dict)

    @property
    def spool(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.db"

    @property
    def rules(self) -> Path:
        return self.root / "rules"

    def serve(self, api_key: str | None = None, **options: Any) -> Serve:
        config = write_config(
            self.root / "trigmail.yaml",
            fake_url=self.fake_url,
            source={"spool": str(self.spool)},
            rules_dir=self.rules,
            ledger=self.ledger,
            **{**self.config_options, **options},
        )
        args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
        env = clean_env({"SENDGRID_API_KEY": api_key or self.api_key})
        return Serve(self.root, args, env)

    def append(self, *events: Mapping[str, Any] | str) -> None:
        append_events(self.spool, events)

    def sends(self) -> dict[str, SendRecord]:
        return sends(self.ledger)

    def state(self, key: str) -> SendState | None:
        send = self.sends().get(key)
        return None if send is None else send.state

    def wait_final(self, *keys: str, timeout_s: float = 20.0) -> dict[str, SendRecord]:
        """Wait until every key is in a final state; return the sends."""

        def done() -> dict[str, SendRecord] | None:
            found = self.sends()
            if all(k in found and found[k].state in FINAL for k in keys):
                return found
            return None

        return wait_for(done, f"{keys} to reach a final state", timeout_s)


def make_site(root: Path, fake_url: str, api_key: str) -> Site:
    shutil.copytree(RULES, root / "rules")
    return Site(root, fake_url, api_key)


@pytest.fixture
def site(tmp_path: Path, sendgrid_fake: FakeSendGrid) -> Site:
    return make_site(tmp_path, sendgrid_fake.url, sendgrid_fake.api_key)


# -- 1. the happy path --------------------------------------------------------------------------


def test_spool_events_are_sent_once_each_with_their_payload(
    site: Site, sendgrid_fake: FakeSendGrid
) -> None:
    with site.serve() as serve:
        serve.wait_ready()
        # order 2 arrives twice under two event ids: its dedupe key makes it one receipt.
        site.append(ping(1), ping(2), order(1), order(2), {**order(2), "id": "o2-again"})
        site.append(ping(3))
        expected = ["notify:p1", "notify:p2", "notify:p3", "receipt:1", "receipt:2"]
        site.wait_final(*expected)
        assert serve.stop() == 0

    assert sorted(sendgrid_fake.accepted_keys()) == expected
    bodies = {key: body for body in sendgrid_fake.accepted for key in body_keys(body)}
    notify = bodies["notify:p1"]
    assert notify["template_id"] == "d-notify"
    assert notify["from"] == {"email": "hello@shop.example", "name": "Example Shop"}
    assert notify["categories"] == ["alerts"]
    assert notify["asm"] == {"group_id": 42}
    [personalization] = [
        p for p in notify["personalizations"] if p["custom_args"]["trigmail_key"] == "notify:p1"
    ]
    assert personalization["to"] == [{"email": "u1@example.com"}]
    assert personalization["dynamic_template_data"] == {"name": "Name1", "note": "note 1"}
    assert personalization["custom_args"] == {
        "trigmail_key": "notify:p1",
        "trigmail_rule": "notify",
    }
    receipt = bodies["receipt:2"]
    assert receipt["template_id"] == "d-receipt"
    assert "categories" not in receipt
    assert "asm" not in receipt

    status = status_json(site.root, site.ledger)
    assert status["counts"]["sent"] == 5
    assert status["by_rule"]["notify"]["sent"] == 3
    assert status["by_rule"]["receipt"]["sent"] == 2
    assert status["in_doubt"] == []
    assert status["dead_letters"] == 0
    # Each send records the X-Message-Id of the request that carried it (one per batch).
    carried = {
        k: r.message_id for r in sendgrid_fake.requests if r.accepted for k in body_keys(r.body)
    }
    assert {k: s.message_id for k, s in site.sends().items()} == carried


# -- 2. every fault class of docs/design.md §3 ------------------------------------------------


@dataclass(frozen=True)
class FaultCase:
    """One delivery fault and where docs/design.md §3 says the send must end."""

    faults: tuple[Fault, ...]
    resend: bool  # the receipt rule (on_doubt: resend), else notify (skip)
    state: SendState
    accepted: int  # how many times the fake accepted the key
    requests: int  # how many requests for the key reached the fake
    error: str = ""  # in the send's last_error
    min_retry_s: float | None = None  # the logged retry delay honours the provider's hint
    api_key: str | None = None


FAULT_CASES = {
    # 429 with X-RateLimit-* headers: refused, retried after the reset, sent once.
    "429": FaultCase(
        (Fault(FaultKind.RATE_LIMIT, reset_in_s=2.0),), False, SendState.SENT, 1, 2, "",
        min_retry_s=1.0,
    ),
    # 503 with Retry-After: refused, retried after it, sent once.
    "503": FaultCase(
        (Fault(FaultKind.UNAVAILABLE, retry_after_s=1.0),), False, SendState.SENT, 1, 2, "",
        min_retry_s=1.0,
    ),
    # 500: may have been processed: in doubt and never resent under skip.
    "500-skip": FaultCase(
        (Fault(FaultKind.SERVER_ERROR),), False, SendState.IN_DOUBT, 0, 1, "HTTP 500"
    ),
    # 500 under resend: sent again.
    "500-resend": FaultCase((Fault(FaultKind.SERVER_ERROR),), True, SendState.SENT, 1, 2),
    # Accepted, then no answer: the read timeout leaves it in doubt; skip never resends.
    "hang-skip": FaultCase(
        (Fault(FaultKind.HANG_AFTER_ACCEPT),), False, SendState.IN_DOUBT, 1, 1, "ReadTimeout"
    ),
    # The same under resend: sent again, so the provider accepted it twice (the opt-in).
    "hang-resend": FaultCase((Fault(FaultKind.HANG_AFTER_ACCEPT),), True, SendState.SENT, 2, 2),
    # Accepted, then a reset: in doubt.
    "reset-after-accept-skip": FaultCase(
        (Fault(FaultKind.RESET_AFTER_ACCEPT),), False, SendState.IN_DOUBT, 1, 1, "went out"
    ),
    # A reset before the fake read the body: the request bytes had left, so classify.py
    # counts it in doubt (the conservative reading: nothing proves it was not processed).
    "reset-before-read-skip": FaultCase(
        (Fault(FaultKind.RESET_BEFORE_READ),), False, SendState.IN_DOUBT, 0, 1, "went out"
    ),
    # The same under resend: sent on the second attempt.
    "reset-before-read-resend": FaultCase(
        (Fault(FaultKind.RESET_BEFORE_READ),), True, SendState.SENT, 1, 2
    ),
    # 400: refused as invalid: failed at once, SendGrid's message kept.
    "400-bad-request": FaultCase(
        (Fault(FaultKind.BAD_REQUEST),), False, SendState.FAILED, 0, 1, "request is invalid",
    ),
    # 401: wrong key: failed, no retry.
    "401-wrong-key": FaultCase(
        (), False, SendState.FAILED, 0, 1, "authorization grant is invalid",
        api_key="SG.not-the-right-key",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", FAULT_CASES.values(), ids=FAULT_CASES.keys())
def test_delivery_fault_ends_in_the_state_design_names(
    site: Site, sendgrid_fake: FakeSendGrid, case: FaultCase
) -> None:
    event, key = (order(1), "receipt:1") if case.resend else (ping(1), "notify:p1")
    sendgrid_fake.inject(*case.faults)
    with site.serve(api_key=case.api_key) as serve:
        serve.wait_ready()
        site.append(event)
        send = site.wait_final(key)[key]
        # A later event is delivered normally: whatever was to happen to the key has happened.
        barrier = "notify:p2" if case.state is not SendState.FAILED else None
        if barrier is not None:
            site.append(ping(2))
            assert site.wait_final(barrier)[barrier].state is SendState.SENT
        assert serve.stop() == 0

    assert send.state is case.state, send
    assert case.error in (send.last_error or "")
    assert Counter(sendgrid_fake.accepted_keys())[key] == case.accepted
    # A request refused before its body was read (401, a reset) carries no key to match.
    for_key = [r for r in sendgrid_fake.requests if r.body is None or key in body_keys(r.body)]
    assert len(for_key) == case.requests
    assert site.sends()[key].state is case.state  # nothing changed it after the barrier
    if case.min_retry_s is not None:
        match = serve.wait_line(rf"send {key}: retry in ([\d.]+)s", 0)
        assert float(match.group(1)) >= case.min_retry_s
    status = ledger_status(site.ledger)
    expected = Counter([case.state.value] + ([] if barrier is None else ["sent"]))
    assert {k: v for k, v in status["counts"].items() if v} == +expected
    in_doubt = [entry["key"] for entry in status["in_doubt"]]
    assert in_doubt == ([key] if case.state is SendState.IN_DOUBT else [])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_connection_refused_is_retried_until_the_provider_is_back(tmp_path: Path) -> None:
    port = _free_port()
    down = FakeSendGrid(port=port)  # not started: the port refuses connections
    site = make_site(tmp_path, f"http://127.0.0.1:{port}", down.api_key)
    with site.serve() as serve:
        serve.wait_ready()
        site.append(ping(1))

        def retried() -> bool:
            send = site.sends().get("notify:p1")
            return send is not None and send.attempts >= 2

        wait_for(retried, "a second attempt on the refused connection")
        send = site.sends()["notify:p1"]
        assert send.state in (SendState.SCHEDULED, SendState.SENDING)
        assert "never sent" in (send.last_error or "")
        with down:
            assert site.wait_final("notify:p1")["notify:p1"].state is SendState.SENT
            assert serve.stop() == 0
            assert down.accepted_keys() == ["notify:p1"]


# -- 3. hot reload ------------------------------------------------------------------------------

_VERSION_IN_FORCE = r"rules: version \w+ in force"


def _template_of(fake: FakeSendGrid, key: str) -> str:
    [template] = [b["template_id"] for b in fake.accepted if key in body_keys(b)]
    return str(template)


def test_rule_edits_take_effect_and_an_invalid_edit_keeps_the_old_rules(
    site: Site, sendgrid_fake: FakeSendGrid
) -> None:
    rule_file = site.rules / "notify.yaml"
    original = rule_file.read_text()
    with site.serve() as serve:
        serve.wait_ready()
        site.append(ping(1))
        site.wait_final("notify:p1")

        # A valid edit, picked up by the file watcher.
        mark = serve.mark()
        rule_file.write_text(original.replace("d-notify", "d-notify-v2"))
        serve.wait_line(_VERSION_IN_FORCE, after=mark)
        site.append(ping(2))
        site.wait_final("notify:p2")
        assert serve.metric("trigmail_rules_last_reload_successful") == 1

        # An invalid edit: logged with file:line:col, rejected, the v2 rules stay.
        mark = serve.mark()
        rule_file.write_text(original.replace("on: ping", "on: [ping"))
        serve.wait_line(r"rules: reload rejected", after=mark)
        problem = serve.wait_line(r"notify\.yaml:(\d+):(\d+): ", after=mark)
        assert int(problem.group(1)) >= 1
        assert serve.metric("trigmail_rules_last_reload_successful") == 0
        site.append(ping(3))
        site.wait_final("notify:p3")

        # SIGHUP reloads too: still invalid, so still rejected.
        mark = serve.mark()
        serve.signal(signal.SIGHUP)
        serve.wait_line(r"SIGHUP received", after=mark)
        serve.wait_line(r"rules: reload rejected", after=mark)

        # Fixed on disk, then SIGHUP: a new version is in force.
        rule_file.write_text(original.replace("d-notify", "d-notify-v3"))
        serve.wait_line(_VERSION_IN_FORCE, after=mark)
        mark = serve.mark()
        serve.signal(signal.SIGHUP)
        serve.wait_line(r"SIGHUP received", after=mark)
        serve.wait_line(_VERSION_IN_FORCE, after=mark)
        assert serve.metric("trigmail_rules_last_reload_successful") == 1
        site.append(ping(4))
        site.wait_final("notify:p4")
        assert serve.stop() == 0

    templates = [_template_of(sendgrid_fake, f"notify:p{n}") for n in range(1, 5)]
    assert templates == ["d-notify", "d-notify-v2", "d-notify-v2", "d-notify-v3"]


# -- 4. SIGTERM with sends in flight ------------------------------------------------------------


def test_sigterm_lets_in_flight_sends_finish_and_loses_nothing(tmp_path: Path) -> None:
    with FakeSendGrid(rates=FaultRates(latency_s=3.0)) as fake:
        site = make_site(tmp_path, fake.url, fake.api_key)
        site.config_options = {"sendgrid": {"timeout": 10}}
        first = [ping(n) for n in range(10)] + [order(n) for n in range(10)]
        with site.serve() as serve:
            serve.wait_ready()
            site.append(*first)

            def all_claimed() -> bool:
                # Each claimed, some still in flight: a busy machine may claim the last ones
                # after the provider answered the first.
                states = [s.state for s in site.sends().values()]
                return (
                    len(states) == 20
                    and SendState.SCHEDULED not in states
                    and SendState.SENDING in states
                )

            wait_for(all_claimed, "all 20 sends claimed, some in flight")
            in_flight = serve.metric("trigmail_provider_requests_in_flight")
            assert in_flight is not None
            assert in_flight >= 1
            later = [ping(n) for n in range(10, 15)]
            site.append(*later)
            serve.signal(signal.SIGTERM)
            assert serve.wait_exit() == 0
            serve.wait_line(r"serve: stopping: waiting for \d+ requests in flight")

        after_stop = site.sends()
        first_keys = {f"notify:p{n}" for n in range(10)} | {f"receipt:{n}" for n in range(10)}
        assert {k for k, s in after_stop.items() if s.state is SendState.SENT} >= first_keys
        assert sorted(fake.accepted_keys()) == sorted(
            k for k, s in after_stop.items() if s.state is SendState.SENT
        )

        with site.serve() as serve:
            serve.wait_ready()
            every = first_keys | {f"notify:p{n}" for n in range(10, 15)}
            found = site.wait_final(*every)
            assert serve.stop() == 0
        assert {k: s.state for k, s in found.items()} == dict.fromkeys(every, SendState.SENT)
        assert sorted(fake.accepted_keys()) == sorted(every)


# -- 5. bad events ------------------------------------------------------------------------------

# Each bad line and the reason it is set aside with.
BAD_EVENTS = [
    ("this is not json", "invalid_json"),
    ("[1, 2, 3]", "not_object"),
    (json.dumps({"event": "ping", "email": "a@example.com"}), "missing_field"),
    (json.dumps(ping("ts", ts="yesterday at noon")), "bad_ts"),
    (json.dumps(ping("mail", email="not an address")), "bad_email"),
    (json.dumps(ping("tpl", user={})), "template_error"),
]


def test_bad_events_are_set_aside_with_reasons_and_the_daemon_goes_on(
    site: Site, sendgrid_fake: FakeSendGrid
) -> None:
    with site.serve() as serve:
        serve.wait_ready()
        for line, _ in BAD_EVENTS:
            site.append(line, ping(len(line)))
        good = [f"notify:p{len(line)}" for line, _ in BAD_EVENTS]
        site.wait_final(*good)
        assert serve.stop() == 0

    dead_path = site.root / "events.dead.jsonl"
    letters = [json.loads(line) for line in dead_path.read_text().splitlines()]
    assert [(letter["raw"], letter["reason"]) for letter in letters] == BAD_EVENTS
    assert all(letter["detail"] for letter in letters)
    # Each names its place in the spool: the good event between them shifts the line number.
    assert [letter["ref"] for letter in letters] == [
        f"events.jsonl:{2 * n + 1}" for n in range(len(BAD_EVENTS))
    ]
    assert sorted(sendgrid_fake.accepted_keys()) == sorted(good)
    assert status_json(site.root, site.ledger)["dead_letters"] == len(BAD_EVENTS)


# -- 6. restart after SIGKILL -------------------------------------------------------------------


def test_a_killed_daemon_resumes_without_deciding_or_sending_twice(
    site: Site, sendgrid_fake: FakeSendGrid
) -> None:
    with site.serve() as serve:
        serve.wait_ready()
        site.append(*(ping(n) for n in range(10)))
        site.wait_final(*(f"notify:p{n}" for n in range(10)))
        # More events arrive, and the daemon dies while (maybe) deciding or sending them.
        site.append(*(ping(n) for n in range(10, 20)))
        serve.signal(signal.SIGKILL)
        assert serve.wait_exit() == -signal.SIGKILL

    site.append(*(ping(n) for n in range(20, 25)))
    keys = [f"notify:p{n}" for n in range(25)]
    with site.serve() as serve:
        serve.wait_ready()
        found = site.wait_final(*keys)
        assert serve.stop() == 0

    accepted = Counter(sendgrid_fake.accepted_keys())
    assert max(accepted.values()) == 1
    assert set(found) == set(keys)
    for key, send in found.items():
        # A send caught in flight by the kill is in doubt (notify: skip), never sent twice.
        assert send.state in (SendState.SENT, SendState.IN_DOUBT), send
        assert accepted[key] == (1 if send.state is SendState.SENT else accepted[key])
    # The spool position resumed: no event was decided a second time.
    entries = decisions(site.ledger)
    scheduled = Counter(e.event_id for e in entries if e.outcome is Outcome.SCHEDULED)
    assert set(scheduled) == {f"p{n}" for n in range(25)}
    assert max(scheduled.values()) == 1
    assert [e for e in entries if e.reason.value in ("duplicate_event", "duplicate_key")] == []


# -- 8. the README's first command: the embedded defaults ---------------------------------------


def test_serve_on_embedded_defaults_writes_to_the_outbox(tmp_path: Path) -> None:
    shutil.copytree(REPO_ROOT / "rules.d", tmp_path / "rules.d")
    # No config and no API key; only the metrics port is moved off the default, which a
    # parallel run (or a real trigmail) may hold.
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    outbox = tmp_path / "outbox"
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        assert "emails are written to outbox/ and NOT sent" in serve.stderr
        signup = {
            "event": "user_signup",
            "user_id": "u_1",
            "email": "ana@example.com",
            "user": {"first_name": "Ana", "plan": "free"},
        }
        appended_s = time.monotonic()
        append_events(tmp_path / "events.jsonl", [signup])
        # The outbox writes a hidden temporary file, then renames it: only the result counts.
        [written] = wait_for(
            lambda: [p for p in outbox.glob("*.json") if not p.name.startswith(".")],
            "an email in outbox/",
        )
        # Recorded, not asserted (shown with -rP or -s): the issue says "within a second".
        print(f"outbox: email written {time.monotonic() - appended_s:.3f}s after the append")
        assert serve.stop() == 0
    email = json.loads(written.read_text())
    assert "d-welcome" in json.dumps(email)
    assert "ana@example.com" in json.dumps(email)
    assert (tmp_path / "trigmail.db").exists()
