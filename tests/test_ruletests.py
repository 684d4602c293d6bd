"""The pure part of rule tests: parsing a test file and comparing what happened."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from trigmail.rules.loader import parse_rules
from trigmail.rules.model import RuleSet
from trigmail.ruletests import DEFAULT_START, RuleTest, parse_tests, run_test

RULES = """
rules:
  - id: nudge
    on: cart_abandoned
    delay: 1h
    cancel_on: [order_completed]
    send: {template: d-nudge, data: {value: "{{ properties.cart_value }}"}}
"""


@pytest.fixture
def rules() -> RuleSet:
    result = parse_rules(RULES, "rules.yaml")
    assert result.rules is not None, result.problems
    return result.rules


def one_test(text: str) -> RuleTest:
    tests, problems = parse_tests(text, "t.yaml")
    assert problems == []
    [test] = tests
    return test


def test_events_get_ids_emails_and_times_in_order() -> None:
    tests, problems = parse_tests(
        "tests:\n"
        "  - name: n\n"
        "    events:\n"
        "      - {at: 10m, event: b, user_id: u}\n"
        "      - {at: 0m, event: a, user_id: u, email: x@shop.example}\n",
        "t.yaml",
    )
    assert problems == []
    [test] = tests
    assert test.start == DEFAULT_START
    # listed out of order: run in time order; each gets an id, and an email when absent
    assert [dict(e) for e in test.events] == [
        {
            "event": "a",
            "user_id": "u",
            "email": "x@shop.example",
            "ts": "2026-03-02T09:00:00Z",
            "id": "evt_2",
        },
        {
            "event": "b",
            "user_id": "u",
            "ts": "2026-03-02T09:10:00Z",
            "id": "evt_1",
            "email": "u@example.com",
        },
    ]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        # no tests list at all
        ("rules: []\n", (1, 1), "a test file holds a list 'tests:'"),
        # an unknown key, with a suggestion
        (
            "tests:\n  - {name: n, events: [{at: 0m}], expct: []}\n",
            (2, 35),
            "did you mean 'expect'",
        ),
        # a required expectation field missing
        (
            "tests:\n  - {name: n, events: [{at: 0m}], expect: [{rule: r, outcome: sent}]}\n",
            (2, 44),
            "'user_id' is required",
        ),
        # a YAML syntax error
        ("tests: [\n", (2, 1), "YAML syntax error"),
    ],
)
def test_problems_carry_positions(text: str, where: tuple[int, int], message: str) -> None:
    tests, problems = parse_tests(text, "t.yaml")
    assert tests == []
    assert [(p.line, p.col) for p in problems][:1] == [where]
    assert message in problems[0].message


def test_a_met_expectation_passes(rules: RuleSet) -> None:
    test = one_test(
        "tests:\n"
        "  - name: n\n"
        "    events: [{at: 0m, event: cart_abandoned, user_id: u, properties: {cart_value: 9}}]\n"
        "    expect: [{rule: nudge, user_id: u, outcome: sent, at: 1h, data: {value: 9}}]\n"
        "    only: true\n"
    )
    result = run_test(test, rules)
    assert result.failures == []
    assert result.passed


def test_a_missed_expectation_says_what_happened(rules: RuleSet) -> None:
    test = one_test(
        "tests:\n"
        "  - name: n\n"
        "    events:\n"
        "      - {at: 0m, event: cart_abandoned, user_id: u, properties: {cart_value: 9}}\n"
        "      - {at: 30m, event: order_completed, user_id: u}\n"
        "    expect: [{rule: nudge, user_id: u, outcome: sent}]\n"
    )
    [failure] = run_test(test, rules).failures
    assert failure.startswith("line 6: expected nudge sent for u\n")
    assert "nudge cancelled for u at +30m because of cancel_on" in failure


def test_only_fails_an_unlisted_send_and_at_has_one_second_slack(rules: RuleSet) -> None:
    test = one_test(
        "tests:\n"
        "  - name: n\n"
        "    start: 2026-01-01T00:00:00Z\n"
        "    events:\n"
        "      - {at: 0m, event: cart_abandoned, user_id: u, properties: {cart_value: 1}}\n"
        "      - {at: 0m, event: cart_abandoned, user_id: v, properties: {cart_value: 2}}\n"
        "    expect: [{rule: nudge, user_id: u, outcome: sent, at: 2026-01-01T01:00:01Z}]\n"
        "    only: true\n"
    )
    assert test.start == datetime(2026, 1, 1, tzinfo=UTC)
    [failure] = run_test(test, rules).failures
    assert failure.startswith("not expected (only: true): nudge sent for v at +1h")


def test_an_unknown_rule_is_named(rules: RuleSet) -> None:
    test = one_test(
        "tests:\n"
        "  - name: n\n"
        "    events: [{at: 0m, event: x, user_id: u}]\n"
        "    expect: [{rule: nudg, user_id: u, outcome: sent}]\n"
    )
    assert run_test(test, rules).failures == [
        "line 4: there is no rule 'nudg' (did you mean 'nudge'?)"
    ]
