"""A/B variants and holdouts: stable, balanced assignment; what the engine, validate, simulate,
the rule tests and the SendGrid body make of them."""

from __future__ import annotations

import json
import logging
import textwrap
from collections import Counter
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trigmail.assign import choose_variant, in_holdout
from trigmail.cli.simulate import _line_parts
from trigmail.decisions import LogEntry, Outcome, Reason, Schedule, Skip
from trigmail.engine import decide
from trigmail.events import event_from_object, format_ts
from trigmail.ledger.memory import MemoryLedger
from trigmail.metrics import Metrics
from trigmail.observe import DecisionObserver
from trigmail.providers.base import Email
from trigmail.providers.bodies import build_body
from trigmail.rules.loader import parse_rules
from trigmail.rules.model import Address, RuleSet
from trigmail.simulate import Simulation

T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)
USERS = 100_000


@dataclass(frozen=True)
class Arm:
    id: str
    weight: float


ids = st.lists(st.sampled_from("abcdefgh"), min_size=1, max_size=5, unique=True)
weights = st.integers(min_value=1, max_value=100)
arms = ids.flatmap(
    lambda names: st.lists(weights, min_size=len(names), max_size=len(names)).map(
        lambda ws: [Arm(name, w) for name, w in zip(names, ws, strict=True)]
    )
)


@given(arms=arms, rule=st.text(max_size=10), user=st.text(max_size=20), data=st.data())
def test_the_choice_is_stable_and_ignores_the_order_variants_are_written_in(
    arms: list[Arm], rule: str, user: str, data: st.DataObject
) -> None:
    chosen = choose_variant(rule, user, arms)
    assert choose_variant(rule, user, arms) == chosen
    shuffled = data.draw(st.permutations(arms))
    assert choose_variant(rule, user, shuffled) == chosen


@settings(max_examples=4, deadline=None)
@given(arms=arms, rule=st.sampled_from(["cart", "promo-b", "onboarding"]))
def test_assignment_is_balanced_within_two_percent_at_100000_users(
    arms: list[Arm], rule: str
) -> None:
    counts = Counter(choose_variant(rule, f"u_{n}", arms).id for n in range(USERS))
    total = sum(arm.weight for arm in arms)
    for arm in arms:
        assert abs(counts[arm.id] / USERS - arm.weight / total) <= 0.02, (arm, counts)


@settings(max_examples=20, deadline=None)
@given(arms=arms, changed=st.integers(min_value=0, max_value=4), weight=weights)
def test_a_weight_change_moves_users_only_into_or_out_of_that_variant(
    arms: list[Arm], changed: int, weight: int
) -> None:
    index = changed % len(arms)
    after = [Arm(a.id, weight) if i == index else a for i, a in enumerate(arms)]
    target = arms[index].id
    for n in range(2_000):
        was = choose_variant("r", f"u_{n}", arms).id
        now = choose_variant("r", f"u_{n}", after).id
        assert was == now or target in (was, now)


def test_holdout_is_stable_sized_and_grows_without_reshuffling() -> None:
    ten = {n for n in range(USERS) if in_holdout("cart", f"u_{n}", 0.10)}
    fifteen = {n for n in range(USERS) if in_holdout("cart", f"u_{n}", 0.15)}
    assert abs(len(ten) / USERS - 0.10) <= 0.02
    assert abs(len(fifteen) / USERS - 0.15) <= 0.02
    assert ten <= fifteen  # raising the share only adds users to the control group
    assert not any(in_holdout("cart", f"u_{n}", 0.0) for n in range(1_000))


RULES = """
rules:
  - id: promo
    on: price_dropped
    holdout: 10%
    send:
      category: promo
      data: {title: "{{ properties.title }}"}
      variants:
        - {id: a, weight: 50, template: d-aaa}
        - {id: b, weight: 50, template: d-bbb, data: {headline: "Now {{ properties.price }}"}}
"""


@pytest.fixture
def rules() -> RuleSet:
    return parse_rules(textwrap.dedent(RULES)).rule_set()


def event_obj(user: str, n: int = 1) -> dict[str, object]:
    return {
        "id": f"e_{user}_{n}",
        "event": "price_dropped",
        "user_id": user,
        "email": f"{user}@example.com",
        "ts": format_ts(T0),
        "properties": {"title": "Shoes", "price": 30},
    }


def decide_for(rules: RuleSet, user: str) -> Schedule | Skip:
    with MemoryLedger(clock=lambda: T0).transaction() as txn:
        (decision,) = decide(event_from_object(event_obj(user), T0), rules, txn, T0)
    assert isinstance(decision, Schedule | Skip)
    return decision


def test_the_engine_records_the_variant_and_its_template_and_data(rules: RuleSet) -> None:
    seen: dict[str, Schedule] = {}
    for n in range(200):
        decision = decide_for(rules, f"u_{n}")
        if isinstance(decision, Schedule):
            assert decision.payload.variant is not None
            seen.setdefault(decision.payload.variant, decision)
    assert set(seen) == {"a", "b"}
    assert seen["a"].payload.template == "d-aaa"
    assert dict(seen["a"].payload.data) == {"title": "Shoes"}  # the send's data
    assert seen["b"].payload.template == "d-bbb"
    assert dict(seen["b"].payload.data) == {"headline": "Now 30"}  # the variant's own
    # the payload keeps the variant through the ledger's JSON
    assert json.loads(json.dumps(seen["b"].payload.to_json()))["variant"] == "b"


def test_a_held_out_user_gets_a_recorded_skip_and_no_email(rules: RuleSet) -> None:
    decisions = [decide_for(rules, f"u_{n}") for n in range(300)]
    held = [d for d in decisions if isinstance(d, Skip)]
    assert held and all(d.reason is Reason.HOLDOUT for d in held)
    assert all("10% holdout" in d.detail for d in held)
    # the same users every time
    again = [decide_for(rules, f"u_{n}") for n in range(300)]
    assert [isinstance(d, Skip) for d in again] == [isinstance(d, Skip) for d in decisions]


def test_simulate_json_shows_the_variant_and_the_holdout(rules: RuleSet) -> None:
    lines = []
    sim = Simulation(rules, lambda entry: lines.append(entry.to_json()))
    sim.run(json.dumps(event_obj(f"u_{n}")).encode() for n in range(60))
    sent = [line for line in lines if line["outcome"] == "sent"]
    scheduled = [line for line in lines if line["outcome"] == "scheduled"]
    assert sent and {line["variant"] for line in sent} == {"a", "b"}
    assert {line["variant"] for line in scheduled} == {"a", "b"}
    held = [line for line in lines if line["reason"] == "holdout"]
    assert held and all("variant" not in line and line["outcome"] == "skipped" for line in held)
    assert sim.provider.sent  # the recording provider saw the variants' templates
    templates = {email.payload.template for email in sim.provider.sent}
    assert templates == {"d-aaa", "d-bbb"}


def test_the_sendgrid_body_carries_the_variant_in_custom_args(rules: RuleSet) -> None:
    decision = next(
        d
        for n in range(50)
        if isinstance(d := decide_for(rules, f"u_{n}"), Schedule) and d.payload.variant == "b"
    )
    email = Email(decision.key, "promo", decision.email, decision.payload)
    body = build_body([email], Address("shop@example.com"))
    assert body["template_id"] == "d-bbb"
    assert body["personalizations"][0]["custom_args"] == {
        "trigmail_key": decision.key,
        "trigmail_rule": "promo",
        "trigmail_variant": "b",
    }


# (the send, where the problem is reported, a piece of the message)
BAD = [
    # two variants with one id
    (
        "{variants: [{id: a, weight: 1, template: d-a}, {id: a, weight: 1, template: d-b}]}",
        "variant id 'a' is used twice",
    ),
    # a weight of 0
    ("{variants: [{id: a, weight: 0, template: d-a}]}", "weight must be more than 0"),
    # a variant without a template
    ("{variants: [{id: a, weight: 1}]}", "missing required key 'template'"),
    # a variant's data with broken Jinja
    (
        "{variants: [{id: a, weight: 1, template: d-a, data: {x: '{{ user. }}'}}]}",
        "Jinja syntax error",
    ),
    # both a template and variants
    ("{template: d-x, variants: [{id: a, weight: 1, template: d-a}]}", "not both"),
    # neither
    ("{category: promo}", "missing required key 'template' (or 'variants'"),
    # an id that is not [a-z0-9-]
    ("{variants: [{id: A B, weight: 1, template: d-a}]}", "is not a valid id"),
]


@pytest.mark.parametrize(("send", "message"), BAD)
def test_validate_checks_variants(send: str, message: str) -> None:
    text = f"rules:\n  - id: r\n    on: e\n    send: {send}\n"
    problems = [str(p) for p in parse_rules(text).problems]
    assert any(message in p for p in problems), problems


@pytest.mark.parametrize("holdout", ["100%", "ten", "10", "-5%"])
def test_validate_checks_the_holdout(holdout: str) -> None:
    text = f"rules:\n  - id: r\n    on: e\n    holdout: '{holdout}'\n    send: {{template: d}}\n"
    problems = [str(p) for p in parse_rules(text).problems]
    assert any("holdout" in p for p in problems), problems


def test_simulate_table_lines_name_the_variant() -> None:
    entry = LogEntry(T0, "e1", "ana", "promo", 0, "promo:e1", Outcome.SENT, Reason.DELIVERED)
    assert "promo [b]" in _line_parts(replace(entry, variant="b"))[2]
    assert "[" not in _line_parts(entry)[2]


def test_serve_counts_and_logs_a_sent_variant(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics(process=False)
    observe = DecisionObserver(metrics, lambda: T0)
    entry = LogEntry(T0, "e1", "ana", "promo", 0, "promo:e1", Outcome.SENT, Reason.DELIVERED)
    with caplog.at_level(logging.INFO, logger="trigmail.daemon"):
        observe(replace(entry, variant="b", due_at=T0))
    [record] = [r for r in caplog.records if r.getMessage().startswith("send promo:e1: sent")]
    assert (record.__dict__["variant"], record.__dict__["user_id"]) == ("b", "ana")
    labels = {"rule": "promo", "variant": "b", "state": "sent"}
    assert metrics.registry.get_sample_value("trigmail_variant_sends_total", labels) == 1
