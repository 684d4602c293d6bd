"""`trigmail preview` and `trigmail send-test` end to end: the real CLI, the SendGrid fake."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.cli_runner import cli
from tests.fake_sendgrid import TEST_API_KEY, FakeSendGrid
from tests.serve_harness import REPO_ROOT as ROOT
from tests.serve_harness import clean_env, write_config

CART = {
    "event": "cart_abandoned",
    "user_id": "ana",
    "email": "ana@shop.example",
    "ts": "2026-03-02T10:00:00Z",
    "user": {"first_name": "Ana"},
    "properties": {"cart_value": 50, "cart_url": "https://shop.example/c/1"},
}


def trigmail(
    *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=ROOT, env=env or clean_env({"NO_COLOR": "1"}))


def test_preview_prints_the_request_body() -> None:
    done = trigmail("preview", "cart-recovery", "--event", json.dumps(CART), "--format", "json")
    assert done.returncode == 0, done.stderr
    [step] = [json.loads(line) for line in done.stdout.splitlines()]
    assert step["key"].startswith("cart-recovery:h_")
    assert step["due_at"] == "2026-03-02T11:00:00Z"
    body = step["request"]
    assert body["template_id"] == "d-cart-recovery"
    assert body["categories"] == ["cart-recovery"]
    assert body["asm"] == {"group_id": 1234}
    [person] = body["personalizations"]
    assert person["to"] == [{"email": "ana@shop.example"}]
    assert person["dynamic_template_data"] == {
        "first_name": "Ana",
        "cart_url": "https://shop.example/c/1",
        "cart_value": 50,
    }
    assert person["custom_args"]["trigmail_key"] == step["key"]


def test_preview_of_an_event_that_does_not_send_says_why(tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text(json.dumps({**CART, "properties": {"cart_value": 5}}))
    done = trigmail("preview", "cart-recovery", "--event", event)
    assert done.returncode == 1
    assert "would not send: condition_false (properties.cart_value gte 20 (was 5))" in done.stdout


def test_preview_of_an_unknown_rule_names_the_rules() -> None:
    done = trigmail("preview", "cart", "--event", json.dumps(CART))
    assert done.returncode == 1
    assert "no rule 'cart'" in done.stderr
    assert "cart-recovery" in done.stderr


def test_send_test_sends_through_sendgrid_in_sandbox(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    ledger = tmp_path / "ledger.db"
    config = write_config(
        tmp_path / "config.yaml",
        fake_url=sendgrid_fake.url,
        source={"spool": str(tmp_path / "events.jsonl")},
        rules_dir=ROOT / "rules.d",
        ledger=ledger,
    )
    env = clean_env({"NO_COLOR": "1", "SENDGRID_API_KEY": TEST_API_KEY})
    done = trigmail(
        "send-test",
        "welcome",
        "--to",
        "me@shop.example",
        "--sandbox",
        "--event",
        json.dumps({"event": "user_signup", "user_id": "ana", "user": {"first_name": "Ana"}}),
        "--config",
        config,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    [body] = sendgrid_fake.accepted
    assert body["mail_settings"] == {"sandbox_mode": {"enable": True}}
    assert body["personalizations"][0]["to"] == [{"email": "me@shop.example"}]
    assert body["personalizations"][0]["dynamic_template_data"] == {"first_name": "Ana"}
    # the key is never a ledger key, and no ledger was made
    assert sendgrid_fake.accepted_keys() == ["send-test:welcome:ana"]
    assert not ledger.exists()
    assert "sent send-test:welcome:ana to me@shop.example" in done.stdout
    assert TEST_API_KEY not in done.stdout + done.stderr
