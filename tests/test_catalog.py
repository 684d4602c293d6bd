"""The event catalogue: `trigmail catalog` drafts it from real events, `validate` checks rules
against it (errors), or guesses without it (warnings)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.cli_runner import run_trigmail_here
from tests.serve_harness import REPO_ROOT
from trigmail.rules.catalog import draft, draft_yaml, parse_catalog
from trigmail.rules.loader import load_rules, parse_rules
from trigmail.rules.problems import Severity

EVENTS: list[dict[str, object]] = [
    {"event": "user_signup", "user_id": "a", "user": {"first_name": "Ana", "plan": "free"}},
    {"event": "user_signup", "user_id": "b", "user": {"plan": "pro"}},
    {
        "event": "cart_abandoned",
        "user_id": "a",
        "user": {"first_name": "Ana"},
        "properties": {"cart_value": 50, "cart_url": "https://x/c", "items": [{"sku": "s"}]},
    },
    {"event": "order_completed", "user_id": "a", "properties": {"order_id": "o1", "total": 5}},
    {"event": "account_deleted", "user_id": "a"},
]
# What the sample rules (rules.d) also read: a price drop and a plan upgrade.
SAMPLE_EVENTS: list[dict[str, object]] = [
    *EVENTS,
    {
        "event": "price_dropped",
        "user_id": "a",
        "user": {"first_name": "Ana", "timezone": "Europe/Lisbon"},
        "properties": {"product": "Lamp", "price": 40, "discount_percent": 20},
    },
    {"event": "plan_upgraded", "user_id": "a", "properties": {"plan": "pro"}},
]


def trigmail(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_trigmail_here(*args, cwd=cwd)


def lines(events: list[dict[str, object]]) -> list[str]:
    return [json.dumps(e) for e in events]


def test_a_draft_names_every_event_field_and_type() -> None:
    result = draft([*lines(EVENTS), "not json", "[1]", ""])
    assert result.bad_lines == 2
    catalog, _, findings = parse_catalog(draft_yaml(result, "events.jsonl"))
    assert findings == []
    assert sorted(catalog.events) == [
        "account_deleted",
        "cart_abandoned",
        "order_completed",
        "user_signup",
    ]
    signup = catalog.events["user_signup"]
    assert dict(signup.fields) == {
        "user.first_name": frozenset({"string"}),
        "user.plan": frozenset({"string"}),
    }
    cart = catalog.events["cart_abandoned"]
    assert cart.types("properties.cart_value") == {"number"}
    assert cart.knows("properties.items")
    assert cart.knows("properties.items.0.sku")  # inside a list: not detailed
    assert cart.knows("user") and cart.knows("user_id")
    assert not cart.knows("properties.cart_vale")
    text = draft_yaml(result, "events.jsonl")
    assert "user.first_name: string  # in 1 of 2" in text


def test_catalog_command_writes_a_file_validate_then_uses(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    shutil.copytree(REPO_ROOT / "rules.d", rules)
    events = tmp_path / "events.jsonl"
    events.write_text("\n".join(lines(SAMPLE_EVENTS)) + "\n")
    done = trigmail("catalog", events, "-o", rules / "events.yaml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "6 event names from 7 events" in done.stderr
    # the samples agree with their events
    checked = trigmail("validate", "--strict", rules, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout
    # an existing catalogue is not overwritten by accident
    again = trigmail("catalog", events, "-o", rules / "events.yaml", cwd=tmp_path)
    assert again.returncode == 1
    assert "--force" in again.stderr
    # a typo in a trigger is now an error with a suggestion
    cart = rules / "cart-recovery.yaml"
    cart.write_text(cart.read_text().replace("on: cart_abandoned", "on: cart_abandonned"))
    broken = trigmail("validate", rules, cwd=tmp_path)
    assert broken.returncode == 1
    assert (
        "error: no event 'cart_abandonned' in the event catalogue (did you mean "
        "'cart_abandoned'?)" in broken.stdout
    )


_RULE = """
rules:
  - id: cart
    on: cart_abandoned
    cancel_on: [order_complete]
    when:
      properties.cart_vale: {gte: 20}
      properties.cart_value: {gte: "20"}
      user.first_name: {eq: 5}
    delay: 1h
    send:
      template: d-cart
      data:
        name: "{{ user.frist_name | default('there') }}"
        url: "{ properties.cart_url }"
        other: "{ nothing.here }"
"""


def test_with_a_catalogue_every_mismatch_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "events.yaml").write_text(draft_yaml(draft(lines(EVENTS)), "e"))
    (tmp_path / "cart.yaml").write_text(_RULE)
    result = load_rules(tmp_path)
    found = [(p.line, p.severity, p.message) for p in result.problems]
    assert found == [
        (
            5,
            Severity.ERROR,
            "no event 'order_complete' in the event catalogue (did you mean 'order_completed'?)",
        ),
        (
            7,
            Severity.ERROR,
            "the condition reads 'properties.cart_vale': no cart_abandoned "
            "event has it (did you mean 'properties.cart_value'?)",
        ),
        (
            8,
            Severity.ERROR,
            "properties.cart_value is a number in the event catalogue but "
            "'20' is text: it never matches; write the number without quotes",
        ),
        (
            9,
            Severity.ERROR,
            "user.first_name is text in the event catalogue but 5 is a "
            "number: it never matches; put it in quotes",
        ),
        (
            14,
            Severity.ERROR,
            "the template reads 'user.frist_name': no cart_abandoned event "
            "has it (did you mean 'user.first_name'?)",
        ),
        (
            15,
            Severity.ERROR,
            "'{ properties.cart_url }' has single braces, so it is sent as "
            "it is: write {{ properties.cart_url }}",
        ),
        (
            16,
            Severity.WARNING,
            "'{ nothing.here }' has single braces, so it is sent as it is: "
            "write {{ nothing.here }}",
        ),
    ]
    assert result.rules is None


def test_without_a_catalogue_the_guessable_mistakes_are_warnings() -> None:
    text = """
rules:
  - id: receipt
    on: order_completed
    send: {template: d-receipt}
  - id: cart
    on: cart_abandoned
    cancel_on: [order_complete]
    when:
      properties.cart_value: {gte: "20"}
      usr.plan: {eq: free}
    delay: 1h
    send:
      template: d-cart
      data:
        name: "{{ propertes.name }}"
        url: "{ properties.cart_url }"
"""
    result = parse_rules(text, "cart.yaml")
    assert [(p.line, p.severity, p.message) for p in result.problems] == [
        (
            8,
            Severity.WARNING,
            "'order_complete' is close to the event 'order_completed' other "
            "rules name: a typo? (an events.yaml catalogue makes this check sure)",
        ),
        (
            10,
            Severity.WARNING,
            "'20' is text, so gte compares text and never matches a "
            "number: write 20 without quotes if properties.cart_value is a number",
        ),
        (
            11,
            Severity.WARNING,
            "the condition reads 'usr.plan': events have no 'usr'; did you mean 'user'?",
        ),
        (
            16,
            Severity.WARNING,
            "the template reads 'propertes.name': events have no "
            "'propertes'; did you mean 'properties'?",
        ),
        (
            17,
            Severity.WARNING,
            "'{ properties.cart_url }' has single braces, so it is sent "
            "as it is: write {{ properties.cart_url }}",
        ),
    ]
    assert result.rules is not None


def test_a_bad_catalogue_is_reported_in_its_file(tmp_path: Path) -> None:
    (tmp_path / "events.yaml").write_text("events:\n  a:\n    x.y: strng\n")
    (tmp_path / "r.yaml").write_text("rules:\n  - id: r\n    on: a\n    send: {template: t}\n")
    result = load_rules(tmp_path)
    assert [str(p) for p in result.problems] == [
        f"{tmp_path / 'events.yaml'}:3:10: error: 'strng' is not a type: use string, number, "
        "boolean, list, object, null (at events.a.x.y)"
    ]
