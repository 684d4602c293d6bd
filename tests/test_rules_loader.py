"""The rule loader: fixtures in, compiled rules or exact problems out."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.bench_validate import write_rules
from trigmail.errors import RulesError
from trigmail.events import event_from_object
from trigmail.rules.loader import (
    CompiledFiles,
    ParseResult,
    Severity,
    load_rule_set,
    load_rules,
    parse_rules,
)
from trigmail.rules.model import Address, CancelOn, OnDoubt, SendWindow

FIXTURES = Path(__file__).parent / "fixtures" / "rules"
T0 = datetime(2026, 11, 27, 20, 0, tzinfo=UTC)


def _parse(relative: str) -> list[str]:
    path = FIXTURES / relative
    return [str(p) for p in parse_rules(path.read_text(), relative).problems]


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # YAML syntax: where the parser stopped, and where the open brace was
        (
            "bad/yaml_syntax.yaml",
            "4:11: error: this '{' is not closed by '}' on its line (or a ',' is missing between "
            "two items)",
        ),
        # a duplicate key, at the second one, naming the first
        (
            "bad/duplicate_key.yaml",
            "5:5: error: duplicate key 'on' (first written at line 3, col 5); keep only one "
            "(at rules[0].on)",
        ),
        # an unknown key, with a suggestion
        (
            "bad/unknown_key.yaml",
            "4:5: error: unknown key 'cooldwn' (did you mean 'cooldown'?) (at rules[0].cooldwn)",
        ),
        # a wrong type
        (
            "bad/wrong_type.yaml",
            "4:22: error: expected text, got the number 12345; put it in quotes "
            "(at rules[0].send.template)",
        ),
        # a bad duration
        (
            "bad/bad_duration.yaml",
            "4:12: error: '1 hour' is not a duration (use 0, 30s, 45m, 1h30m, 2d or 1w) "
            "(at rules[0].delay)",
        ),
        # a bad operator, at the operator itself
        (
            "bad/bad_operator.yaml",
            "5:37: error: unknown operator 'gtee', did you mean 'gte'? "
            "(at rules[0].when.properties.cart_value.gtee)",
        ),
        # a bad regular expression in matches
        (
            "bad/bad_regex.yaml",
            "5:24: error: invalid regular expression '[a-z': missing ]: [a-z "
            "(at rules[0].when.email.matches)",
        ),
        # a Jinja syntax error in data
        (
            "bad/jinja_syntax.yaml",
            "7:14: error: a '{{' is closed by a single '}': write '}}' (at rules[0].send.data.url)",
        ),
        # an unknown placeholder in dedupe
        (
            "bad/dedupe_placeholder.yaml",
            "4:13: error: unknown placeholder '{user}' (use {rule}, {event}, {event_id}, "
            "{user_id}, {date} or {properties.NAME}) (at rules[0].dedupe)",
        ),
        # an unknown IANA timezone, with a suggestion
        (
            "bad/bad_timezone.yaml",
            "4:57: error: unknown timezone 'Europe/Lisbn' (did you mean 'Europe/Lisbon'?; or a "
            "path into the event starting with user. or properties.) "
            "(at rules[0].send_window.timezone)",
        ),
        # a send window that opens and closes at once
        (
            "bad/window_equal.yaml",
            "4:38: error: the window opens and closes at 09:00: give two different times "
            "(or remove send_window to send at any hour) (at rules[0].send_window.to)",
        ),
        # both send and steps
        (
            "bad/send_and_steps.yaml",
            "5:5: error: a rule has either 'send' (one email) or 'steps' (a sequence), not both "
            "(at rules[0].steps)",
        ),
        # neither send nor steps
        (
            "bad/no_send.yaml",
            "2:9: error: the rule sends nothing: give it 'send' (one email) or 'steps' "
            "(at rules[0].id)",
        ),
        # an empty file
        (
            "bad/empty.yaml",
            "1:1: error: the file is empty: it needs a 'rules:' list or a 'caps:' list",
        ),
        # a file that is a list, not a mapping
        (
            "bad/not_mapping.yaml",
            "1:1: error: a rule file is a mapping with 'rules:' and/or 'caps:', not a list",
        ),
    ],
)
def test_bad_fixture_reports_exact_position_and_message(fixture: str, expected: str) -> None:
    assert _parse(fixture) == [f"{fixture}:{expected}"]
    assert parse_rules((FIXTURES / fixture).read_text(), fixture).rules is None


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        # the same template on the same event twice
        (
            "warn/same_template.yaml",
            "7:22: warning: rule 'welcome' (at warn/same_template.yaml:2:9) also sends template "
            "'d-welcome' on 'user_signup': a user would get it twice (if intended, add "
            "acknowledge: [same_template] to the rule) (at rules[1].send.template)",
        ),
        # cancelled by its own trigger, and sent at once: the cancel never does anything
        (
            "warn/cancel_own_trigger.yaml",
            "4:17: warning: 'cart_abandoned' both triggers and cancels this rule, but every "
            "email goes at once: nothing is ever pending to cancel (if intended, add "
            "acknowledge: [self_cancel] to the rule) (at rules[0].cancel_on[0])",
        ),
        # cancelled by its own trigger with one key per user: nobody ever gets it
        (
            "warn/cancel_own_trigger_per_user.yaml",
            "5:17: warning: 'order_completed' both triggers and cancels this rule, and its "
            "dedupe key is one per user: a second 'order_completed' cancels the first email and "
            "its own is a duplicate of the cancelled key, so the user never gets it; put "
            "{event_id} in the key, or drop the cancel (if intended, add acknowledge: "
            "[self_cancel] to the rule) (at rules[0].cancel_on[0])",
        ),
        # a cooldown the ledger cannot remember
        (
            "warn/long_cooldown.yaml",
            "4:15: warning: cooldown 120d is longer than the ledger keeps sends (90d): it will "
            "act as 90d (if intended, add acknowledge: [long_cooldown] to the rule) "
            "(at rules[0].cooldown)",
        ),
        # a category no cap mentions, while caps exist
        (
            "warn/uncapped.yaml",
            "4:41: warning: no cap mentions 'promo', so caps never hold this email back "
            "(right for receipts, not for marketing) (if intended, add acknowledge: [uncapped] "
            "to the rule) (at rules[0].send.category)",
        ),
    ],
)
def test_warnings_keep_the_rules(fixture: str, expected: str) -> None:
    result = parse_rules((FIXTURES / fixture).read_text(), fixture)
    assert [str(p) for p in result.problems] == [f"{fixture}:{expected}"]
    assert result.rules is not None


def test_restart_the_timer_is_not_warned_about() -> None:
    # A win-back 30 days after the last order: each order cancels the pending one and
    # schedules its own. That is what the combination is for.
    text = """
rules:
  - id: win-back
    on: order_completed
    cancel_on: [order_completed]
    delay: 30d
    send: {template: d-win-back}
"""
    result = parse_rules(text, "win-back.yaml")
    assert result.problems == []
    assert result.rules is not None


def test_a_rule_acknowledges_a_warning_by_name() -> None:
    text = (FIXTURES / "warn/uncapped.yaml").read_text()
    acknowledged = text.replace("    send:", "    acknowledge: [uncapped]\n    send:", 1)
    assert "acknowledge" in acknowledged
    assert parse_rules(acknowledged, "u.yaml").problems == []
    # only that one: another warning's name leaves it shown
    other = text.replace("    send:", "    acknowledge: [self_cancel]\n    send:", 1)
    assert [p.message.split(",")[0] for p in parse_rules(other, "u.yaml").problems] == [
        "no cap mentions 'promo'"
    ]


def test_an_unknown_warning_name_is_an_error_with_a_suggestion() -> None:
    text = (FIXTURES / "warn/uncapped.yaml").read_text()
    typo = text.replace("    send:", "    acknowledge: [uncaped]\n    send:", 1)
    result = parse_rules(typo, "u.yaml")
    assert [(p.severity, p.message) for p in result.problems if p.severity == "error"] == [
        (Severity.ERROR, "no warning is called 'uncaped' (did you mean 'uncapped'?)")
    ]
    assert result.rules is None


def test_every_bad_operator_and_template_in_one_run() -> None:
    text = """
rules:
  - id: cart
    on: cart_abandoned
    when:
      properties.cart_value: {gtee: 20, lte: 100, ltt: 500}
      user.plan: {eqq: free}
      any:
        - {user.country: {inn: [PT]}}
        - {user.vip: true}
    send:
      template: d-x
      data:
        a: "{{ user.first_name | defualt('x') }}"
        b: "{{ user.last_name }"
        c: "{{ user.city"
        d: {e: "{{ x | upperr }}", f: "ok"}
"""
    result = parse_rules(text, "cart.yaml")
    found = [(p.line, p.path, p.message) for p in result.problems]
    assert found == [
        (
            6,
            "rules[0].when.properties.cart_value.gtee",
            "unknown operator 'gtee', did you mean 'gte'?",
        ),
        (
            6,
            "rules[0].when.properties.cart_value.ltt",
            "unknown operator 'ltt', did you mean 'lt'?",
        ),
        (7, "rules[0].when.user.plan.eqq", "unknown operator 'eqq', did you mean 'eq'?"),
        (9, "rules[0].when.any[0].user.country.inn", "unknown operator 'inn', did you mean 'in'?"),
        (
            14,
            "rules[0].send.data.a",
            "unknown filter 'defualt' in this template (did you mean 'default'?)",
        ),
        (15, "rules[0].send.data.b", "a '{{' is closed by a single '}': write '}}'"),
        (16, "rules[0].send.data.c", "a '{{' or '{%' is never closed: end it with '}}' or '%}'"),
        (
            17,
            "rules[0].send.data.d.e",
            "unknown filter 'upperr' in this template (did you mean 'upper'?)",
        ),
    ]


def test_an_email_key_beside_send_is_one_problem() -> None:
    text = """
rules:
  - id: welcome
    on: user_signup
    send:
    template: d-welcome
    data: {a: "b"}
"""
    result = parse_rules(text, "w.yaml")
    assert [str(p) for p in result.problems] == [
        "w.yaml:6:5: error: 'template' and 'data' are not indented under 'send:', so 'send' is "
        "empty: indent them two spaces further than 'send' (at rules[0].template)"
    ]


def test_retention_is_a_parameter() -> None:
    text = (FIXTURES / "warn/long_cooldown.yaml").read_text()
    assert parse_rules(text, retention_s=200 * 86_400).problems == []


def test_duplicate_rule_id_across_files_names_both_places() -> None:
    result = load_rules(FIXTURES / "duplicate_id")
    a, b = FIXTURES / "duplicate_id" / "a.yaml", FIXTURES / "duplicate_id" / "b.yaml"
    assert [str(p) for p in result.problems] == [
        f"{b}:3:9: error: rule id 'welcome' is already used at {a}:2:9 (at rules[0].id)"
    ]
    assert result.rules is None


def test_every_key_compiles_to_the_model() -> None:
    rules = load_rule_set(FIXTURES / "good" / "every_key.yaml")
    cart, onboarding = rules.rules
    assert cart.on == ("cart_abandoned",)
    assert [s.delay_s for s in cart.steps] == [3600]
    assert cart.steps[0].number == 0
    assert cart.cancel_on == (
        CancelOn("order_completed"),
        CancelOn("cart_emptied", "properties.cart_id"),
    )
    assert (cart.cooldown_s, cart.max_late_s) == (86_400, 21_600)
    assert cart.send_window == SendWindow(540, 1200, "user.timezone", timezone_is_path=True)
    assert (cart.on_doubt, cart.enabled) == (OnDoubt.RESEND, False)
    send = cart.steps[0].send
    assert (send.template, send.categories, send.asm_group) == (
        "d-2f6c",
        ("cart-recovery", "marketing"),
        1234,
    )
    assert send.from_ == Address("hello@example.com", "Example Shop")
    assert send.reply_to == Address("help@example.com")
    assert cart.location is not None and (cart.location.line, cart.location.col) == (3, 9)
    assert [(s.number, s.delay_s, s.send.template) for s in onboarding.steps] == [
        (1, 86_400, "d-tips"),
        (2, 259_200, "d-upgrade"),
    ]
    assert onboarding.steps[1].when is not None and onboarding.steps[0].when is None
    assert onboarding.send_window == SendWindow(1320, 450, "Europe/Lisbon")
    assert (onboarding.max_late_s, onboarding.cooldown_s) == (None, 0)
    assert [(c.id, c.max, c.per_s) for c in rules.caps] == [("marketing-weekly", 3, 604_800)]


def test_compiled_condition_and_templates_work_on_events() -> None:
    rules = load_rule_set(FIXTURES / "good" / "every_key.yaml")
    cart = rules.rules[0]
    event = event_from_object(
        {
            "id": "e1",
            "event": "cart_abandoned",
            "user_id": "u1",
            "properties": {"cart_value": 25, "cart_url": "https://x/c"},
            "user": {"country": "PT"},
        },
        T0,
    )
    assert cart.when is not None and cart.when.check(event) is None
    assert cart.dedupe.render(cart.id, event) == "cart-recovery:u1:2026-11-27"
    data = cart.steps[0].send.data
    assert data is not None and data.render(event) == {"cart_url": "https://x/c"}


def test_yaml_1_1_words_mean_what_they_say() -> None:
    rules = load_rule_set(FIXTURES / "good" / "yaml11.yaml")
    [rule] = rules.rules
    assert rule.on == ("order_completed",)
    event = event_from_object(
        {
            "event": "order_completed",
            "user_id": "u1",
            "user": {"country": "NO"},
            "properties": {"gift": "yes"},
        },
        T0,
    )
    assert rule.when is not None and rule.when.check(event) is None
    data = rule.steps[0].send.data
    assert data is not None
    assert data.render(event) == {
        "switch": "off",
        "answer": "yes",
        "time": "9:30",
        "day": "2026-01-01",
    }


def test_version_is_a_content_hash() -> None:
    text = (FIXTURES / "good" / "yaml11.yaml").read_text()
    first = parse_rules(text, "a.yaml").rule_set().version
    assert len(first) == 16
    assert parse_rules(text, "a.yaml").rule_set().version == first
    assert parse_rules(text + "\n# changed\n", "a.yaml").rule_set().version != first


def test_rule_set_raises_rules_error_with_every_problem() -> None:
    with pytest.raises(RulesError) as caught:
        load_rule_set(FIXTURES / "bad" / "no_send.yaml", FIXTURES / "bad" / "unknown_key.yaml")
    assert len(caught.value.problems) == 2


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        # an id marketing might write with capitals
        ("- {id: Cart, on: x, send: {template: t}}", "'Cart' is not a valid id"),
        # `on` missing
        ("- {id: a, send: {template: t}}", "missing required key 'on'"),
        # on must be a name or a list of names
        ("- {id: a, on: {x: 1}, send: {template: t}}", "expected text or a list, got a mapping"),
        # yes is not a boolean here, and says so
        ("- {id: a, on: x, enabled: yes, send: {template: t}}", "expected true or false"),
        # a bad time of day
        (
            "- {id: a, on: x, send_window: {from: '25:00', to: '08:00'}, send: {template: t}}",
            "'25:00' is not a time of day",
        ),
        # too many SendGrid categories
        (
            "- {id: a, on: x, send: {template: t, category: [a,b,c,d,e,f,g,h,i,j,k]}}",
            "has 11 items; at most 10 are allowed",
        ),
        # a rule-wide delay on a sequence
        (
            "- {id: a, on: x, delay: 1h, steps: [{send: {template: t}}]}",
            "a sequence has no rule-wide delay",
        ),
        # a cancel_on entry with a typo
        (
            "- {id: a, on: x, cancel_on: [{event: y, mach: z}], send: {template: t}}",
            "unknown key 'mach' (did you mean 'match'?)",
        ),
        # a sender that is not an email address
        ("- {id: a, on: x, send: {template: t, from: nobody}}", "'nobody': "),
    ],
)
def test_rule_errors(snippet: str, message: str) -> None:
    problems = parse_rules(f"rules:\n  {snippet}\n").problems
    assert [p.severity for p in problems] == [Severity.ERROR]
    assert message in problems[0].message


def test_duplicate_cap_id() -> None:
    text = (
        "caps:\n"
        "  - {id: c, max: 1, per: 1d, categories: [a]}\n"
        "  - {id: c, max: 2, per: 1d, categories: [b]}\n"
    )
    [problem] = parse_rules(text, "c.yaml").problems
    assert str(problem) == (
        "c.yaml:3:10: error: cap id 'c' is already used at c.yaml:2:10 (at caps[1].id)"
    )


def test_missing_directory_is_an_error(tmp_path: Path) -> None:
    result = load_rules(tmp_path / "nope")
    assert [p.message for p in result.problems] == ["no such directory"]
    assert result.rules is None


def test_directory_reads_yaml_and_yml_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text("rules:\n  - {id: b, on: x, send: {template: tb}}\n")
    (tmp_path / "a.yaml").write_text("rules:\n  - {id: a, on: x, send: {template: ta}}\n")
    (tmp_path / ".#a.yaml").write_text("not: [yaml")  # an editor's lock file is ignored
    (tmp_path / "notes.txt").write_text("ignored")
    result = load_rules(tmp_path)
    assert result.problems == []
    assert [r.id for r in result.rule_set().rules] == ["a", "b"]


@pytest.mark.parametrize("enabled", [True, False])
def test_loading_leaves_the_garbage_collector_as_it_found_it(enabled: bool) -> None:
    was = gc.isenabled()
    try:
        gc.enable() if enabled else gc.disable()
        parse_rules((FIXTURES / "good" / "every_key.yaml").read_text())
        assert gc.isenabled() is enabled
        parse_rules("rules: [")
        assert gc.isenabled() is enabled
    finally:
        gc.enable() if was else gc.disable()


@pytest.mark.parametrize("distinct", [False, True])
def test_bench_rules_load_clean(tmp_path: Path, distinct: bool) -> None:
    # The benchmark's rules must stay valid, or it would time the error path.
    write_rules(tmp_path, files=2, rules=3, distinct=distinct)
    result = load_rules(tmp_path)
    assert result.problems == []
    assert result.rules_written == 6


def _outcome(result: ParseResult) -> tuple[object, ...]:
    rules = result.rules
    ids = None if rules is None else [rule.id for rule in rules.rules]
    version = None if rules is None else rules.version
    return ids, version, [str(p) for p in result.problems], result.files, result.rules_written


def test_a_reload_compiles_only_the_files_that_changed(tmp_path: Path) -> None:
    write_rules(tmp_path, 3, 2)
    compiled = CompiledFiles()
    before = load_rules(tmp_path, compiled=compiled).rule_set()
    kept = {rule.id: rule for rule in before.rules}
    changed = tmp_path / "rules-0001.yaml"
    changed.write_text(changed.read_text().replace("rule-1-1", "rule-1-x"))
    result = load_rules(tmp_path, compiled=compiled)
    after = {rule.id: rule for rule in result.rule_set().rules}
    # The unchanged files' rules are the very objects of the last load; the changed file's
    # are compiled anew; the whole result is what a load from scratch gives.
    assert all(after[i] is kept[i] for i in ("rule-0-0", "rule-0-1", "rule-2-0", "rule-2-1"))
    assert after["rule-1-0"] is not kept["rule-1-0"]
    assert "rule-1-x" in after and "rule-1-1" not in after
    assert _outcome(result) == _outcome(load_rules(tmp_path))


def test_a_reused_file_still_meets_the_checks_across_files(tmp_path: Path) -> None:
    write_rules(tmp_path, 2, 2)
    compiled = CompiledFiles()
    assert load_rules(tmp_path, compiled=compiled).errors == 0
    # A new file repeats an id of an unchanged one; then it goes and the set is clean again.
    copy = tmp_path / "rules-0009.yaml"
    copy.write_text((tmp_path / "rules-0000.yaml").read_text())
    rejected = load_rules(tmp_path, compiled=compiled)
    assert rejected.rules is None
    assert _outcome(rejected) == _outcome(load_rules(tmp_path))
    assert any("is already used at" in str(p) for p in rejected.problems)
    copy.unlink()
    assert _outcome(load_rules(tmp_path, compiled=compiled)) == _outcome(load_rules(tmp_path))


def test_a_directory_given_twice_is_still_two_sets_of_duplicates(tmp_path: Path) -> None:
    write_rules(tmp_path, 1, 1)
    compiled = CompiledFiles()
    for _ in range(2):
        result = load_rules(tmp_path, tmp_path, compiled=compiled)
        assert _outcome(result) == _outcome(load_rules(tmp_path, tmp_path))
        assert result.rules is None
