"""Hostile rule files, templates, patterns and config files (issue 12): bounded, isolated, quiet.

Each attack of the issue is replayed twice: against the function that parses or renders, and
against the real processes (`trigmail validate`, `simulate` and a running `serve` that gets the
file dropped into its rules.d). The outcome asserted is always the same: the bad item is
refused with its position or set aside as a `template_error`, the rest carries on, nothing
outside rules.d is read into any output.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import resource
import subprocess
import sys
import textwrap
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench.bench_validate import write_rules
from tests.serve_harness import REPO_ROOT, Serve, append_events, clean_env, decisions, wait_for
from trigmail.configload import load_config
from trigmail.decisions import Reason, Schedule, SetAside
from trigmail.engine import decide
from trigmail.errors import ConfigError, SpecError, TemplateRenderError
from trigmail.events import Event, parse_event
from trigmail.ledger import MemoryLedger
from trigmail.rules import limits
from trigmail.rules.conditions import Leaf, compile_condition
from trigmail.rules.loader import Severity, load_rules, parse_rules
from trigmail.rules.model import RuleSet
from trigmail.rules.templating import compile_data
from trigmail.rules.yamlsource import MAX_DEPTH, MAX_VALUES, load_document
from trigmail.rulestore import MAX_LOGGED_PROBLEMS, RuleStore, RulesWatcher

# -- the attacks --------------------------------------------------------------------------------


def billion_laughs(levels: int = 9) -> str:
    """Nine lines of nine aliases each: 400 bytes that expand to 9**9 values."""
    names = "abcdefghijk"[:levels]
    lines = [f'{names[0]}: &{names[0]} ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in itertools.pairwise(names):
        lines.append(f"{name}: &{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def deep_rule(levels: int = 340) -> str:
    """A rule whose `when` value nests ``levels`` lists: 744 bytes in the issue."""
    return (
        "rules:\n  - id: deep\n    on: ping\n    when:\n      properties.a: "
        + "[" * levels
        + "]" * levels
        + "\n    send: {template: d-deep}\n"
    )


LOL = billion_laughs()
DEEP = deep_rule()
SECRET = "SG.not-a-real-key-but-secret-0123456789"

GOOD_RULES = """\
rules:
  - id: receipt
    on: order
    send:
      template: d-receipt
      data: {total: "{{ properties.total }}"}
"""
# Two hostile rules, in a file that sorts before the receipt: they run first on each order.
HOSTILE_TEMPLATES = """\
rules:
  - id: mutate
    on: order
    send:
      template: d-mutate
      data: {x: "{{ properties.update({'total': 0}) }}"}
  - id: bomb
    on: order
    send:
      template: d-bomb
      data: {x: "{{ 'a' * properties.n }}"}
"""

# Each template attack of the issue, with the words its template_error must hold.
TEMPLATE_ATTACKS = [
    # two nested loops of 100,000: refused at the range
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "range() of 100000 items",
        id="nested-range-100000",
    ),
    # two nested loops within the range bound: stopped by the step budget
    pytest.param(
        "{% for i in range(10000) %}{% for j in range(10000) %}{% endfor %}{% endfor %}",
        "steps",
        id="nested-range-10000",
    ),
    # repetition by an event value: refused before the string is made
    pytest.param("{{ 'a' * properties.n }}", "characters or items", id="repeat"),
    # a power by an event value: refused before it is computed
    pytest.param("{{ 10 ** properties.n }}", "bits", id="power"),
    # a format width: refused before the padding
    pytest.param("{{ '{0:>300000000}'.format(1) }}", "format width", id="format-width"),
    # a width from the event, nested in the spec
    pytest.param("{{ '{0:>{1}}'.format(1, properties.n) }}", "format width", id="format-nested"),
    # printf padding
    pytest.param("{{ '%300000000d' % 1 }}", "format width", id="printf"),
    # a filter padding
    pytest.param("{{ 'x'|center(properties.n) }}", "characters or items", id="center"),
    # doubling a string in a loop
    pytest.param(
        "{% set ns = namespace(s='ab') %}{% for i in range(64) %}"
        "{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
        "characters or items",
        id="doubling",
    ),
    # each value within the bound, a gigabyte in all
    pytest.param("{{ range(10000)|map('center', 99999)|list|length }}", "in all", id="map-center"),
    # a translation table that multiplies
    pytest.param("{{ 'ab'.translate({97: 'b' * 100000}) }}", "characters or items", id="translate"),
    # text captured in a block, never output
    pytest.param(
        "{% set x %}{% for i in range(10000) %}{{ 'a' * 10000 }}{% endfor %}{% endset %}",
        "wrote more than",
        id="capture",
    ),
]

ORDER: dict[str, Any] = {
    "id": "o1",
    "event": "order",
    "user_id": "u1",
    "email": "u1@example.com",
    "ts": "2026-11-27T10:00:00Z",
    "properties": {"total": 42, "n": 300_000_000},
}


def order(number: int, **properties: Any) -> dict[str, Any]:
    return {**ORDER, "id": f"o{number}", "properties": {**ORDER["properties"], **properties}}


def event_of(obj: dict[str, Any]) -> Event:
    return parse_event(json.dumps(obj), datetime(2026, 11, 27, 12, tzinfo=UTC))


def run_cli(*args: str | Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """The real CLI; the timeout only turns a hang into a failure."""
    return subprocess.run(
        [sys.executable, "-m", "trigmail", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
        cwd=REPO_ROOT,
        env=clean_env(),
    )


def peak_bytes(action: Callable[[], object]) -> int:
    """The peak of Python allocations while ``action`` runs (deterministic, unlike RSS)."""
    tracemalloc.start()
    try:
        # The caller asserts the outcome separately.
        with contextlib.suppress(Exception):
            action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# -- 1. YAML bounds -----------------------------------------------------------------------------


def test_billion_laughs_is_one_issue_at_a_position_without_expanding() -> None:
    document = load_document(LOL)
    assert document.data is None
    [issue] = document.issues
    assert "once its aliases are expanded" in issue.message
    assert issue.mark.line >= 1 and issue.mark.col >= 1
    # The expansion stops at the value bound: far from the 1.3 GB it took.
    assert peak_bytes(lambda: load_document(LOL)) < 200 * 2**20


def test_deep_nesting_is_one_issue_at_its_position() -> None:
    [problem] = parse_rules(DEEP, "deep.yaml").problems
    assert problem.severity is Severity.ERROR
    assert f"nested deeper than {MAX_DEPTH} levels" in problem.message
    # The first `[` is at column 21, four keys down: the list at depth MAX_DEPTH is refused.
    assert (problem.line, problem.col) == (5, 21 + MAX_DEPTH - 4)


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # flow nesting far past libyaml's own limit
        "a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 900)),  # block nesting
        "x: &x [*x]\n",  # an alias of itself
    ],
    ids=["flow-100000", "block-900", "self-alias"],
)
def test_other_shapes_are_issues_never_exceptions(text: str) -> None:
    document = load_document(text)
    assert document.issues
    assert all(issue.mark.line >= 1 for issue in document.issues)


def test_nesting_up_to_the_bound_goes_through_every_stage() -> None:
    # `not` nests one level each; the rule itself is five levels down.
    inner = "{properties.a: {matches: '^a'}}"
    for _ in range(MAX_DEPTH - 8):
        inner = "{not: " + inner + "}"
    data = "{a: " * (MAX_DEPTH - 8) + "'{{ properties.a }}'" + "}" * (MAX_DEPTH - 8)
    text = f"rules:\n  - id: a\n    on: x\n    when: {inner}\n    send:\n"
    text += f"      template: d-1\n      data: {data}\n"
    result = parse_rules(text)
    assert result.problems == []
    assert result.rules is not None


def test_many_values_without_aliases_are_refused_too() -> None:
    text = "[" + ",".join(["1"] * (MAX_VALUES + 1)) + "]"
    [issue] = load_document(text).issues
    assert f"more than {MAX_VALUES} values" in issue.message
    assert "once its aliases are expanded" not in issue.message


def test_a_file_over_the_size_bound_is_not_read(tmp_path: Path) -> None:
    (tmp_path / "big.yaml").write_text("# " + "x" * (1 << 20) + "\n")
    [problem] = load_rules(tmp_path).problems
    assert "too large" in problem.message
    assert problem.file.endswith("big.yaml")


@pytest.mark.parametrize("text", [LOL, DEEP, "a: " + "x" * (1 << 20)], ids=["lol", "deep", "big"])
def test_the_config_file_has_the_same_bounds(tmp_path: Path, text: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(config, environ={})
    assert "too large" in str(caught.value)
    assert str(config) in str(caught.value)


# -- 2. the reload never takes serve down -------------------------------------------------------


def test_a_rejected_load_keeps_the_last_good_rules(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD_RULES)
    store = RuleStore([tmp_path], retention_s=86_400)
    assert store.reload()
    good = store()
    for name, text in (("lol.yaml", LOL), ("deep.yaml", DEEP)):
        (tmp_path / name).write_text(text)
        assert not store.reload()
        assert store() is good
        (tmp_path / name).unlink()


def test_any_exception_while_loading_is_a_rejected_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "good.yaml").write_text(GOOD_RULES)
    store = RuleStore([tmp_path], retention_s=86_400)
    assert store.reload()
    good = store()

    def explode(*_args: object, **_kwargs: object) -> None:
        # No real file raises any more: this stands for the next bug in the loader.
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr("trigmail.rulestore.load_rules", explode)
    assert not store.reload()
    [problem] = store.load().problems
    assert "RecursionError" in problem.message
    assert store() is good


def test_a_reload_logs_a_bounded_number_of_problems(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "dups.yaml").write_text("".join(f"a: {n}\n" for n in range(500)))
    store = RuleStore([tmp_path], retention_s=86_400)
    with caplog.at_level("WARNING", logger="trigmail.rulestore"):
        assert not store.reload()
    # The causes at error (journalctl -p err shows them), bounded, then the one summary.
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == MAX_LOGGED_PROBLEMS + 2
    assert "and 450 more errors" in lines[-2]
    assert "reload rejected (500 errors)" in lines[-1]


def _inotify_watches() -> int:
    count = 0
    for info in Path("/proc/self/fdinfo").iterdir():
        with contextlib.suppress(OSError):
            count += sum(line.startswith("inotify") for line in info.read_text().splitlines())
    return count


@pytest.mark.skipif(not Path("/proc/self/fdinfo").is_dir(), reason="Linux only")
def test_the_watcher_does_not_follow_a_link_into_a_large_tree(tmp_path: Path) -> None:
    # A link to `/` would add a watch per directory of the machine; the repository's virtualenv
    # has thousands.
    (tmp_path / "tree").symlink_to(REPO_ROOT)
    changed = threading.Event()
    before = _inotify_watches()
    watcher = RulesWatcher([tmp_path], changed.set)
    watcher.start()
    try:

        def seen() -> bool:
            # A change is only seen once the watch is in place.
            (tmp_path / "touch.yaml").write_text("x: 1\n")
            return changed.wait(0.2)

        wait_for(seen, "the watcher to see a change")
        assert _inotify_watches() - before < 10
    finally:
        watcher.stop()


def test_a_change_after_start_returns_is_seen_without_retrying(tmp_path: Path) -> None:
    changed = threading.Event()
    watcher = RulesWatcher([tmp_path], changed.set)
    watcher.start()
    try:
        (tmp_path / "new.yaml").write_text("x: 1\n")  # once: start() waited for the watch
        assert changed.wait(30), "a file written once the watcher started was never seen"
    finally:
        watcher.stop()


def test_a_rule_saved_before_the_watch_is_in_place_is_loaded(tmp_path: Path) -> None:
    write_rules(tmp_path, 1, 1)
    store = RuleStore([tmp_path], retention_s=86_400)
    assert store.start().rules is not None
    assert not store.changed_since_load()
    # Saved after the load, before the watch: no event will ever report it.
    write_rules(tmp_path, 2, 1)
    assert store.changed_since_load()
    reloads = threading.Event()
    watcher = RulesWatcher([tmp_path], reloads.set, changed_since_load=store.changed_since_load)
    watcher.start()
    try:
        assert reloads.wait(30), "the file saved before the watch was never reloaded"
    finally:
        watcher.stop()
    assert store.reload()
    assert len(store().rules) == 2
    assert not store.changed_since_load()


def test_config_errors_at_start_are_one_line_and_exit_1(tmp_path: Path) -> None:
    for name, text in (("lol.yaml", LOL), ("deep.yaml", DEEP)):
        config = tmp_path / name
        config.write_text(text)
        done = run_cli("serve", "--config", config)
        assert done.returncode == 1
        assert "Traceback" not in done.stderr
        assert f"{config}:" in done.stderr
        assert "too large" in done.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_as_config_is_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError) as caught:
        load_config(fifo, environ={})
    assert "not a regular file" in str(caught.value)


# -- 3. files outside rules.d -------------------------------------------------------------------


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "api.key"
    secret.parent.mkdir()
    secret.write_text(f"rules: {SECRET}\n")
    secret.chmod(0o600)
    return secret


def test_a_link_out_of_rules_d_is_a_warning_and_never_read(
    tmp_path: Path, secret_file: Path
) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "good.yaml").write_text(GOOD_RULES)
    (rules / "key.yaml").symlink_to(secret_file)
    (rules / "passwd.yml").symlink_to("/etc/passwd")
    result = load_rules(rules)
    assert result.rules is not None and [r.id for r in result.rules.rules] == ["receipt"]
    assert {(Path(p.file).name, p.severity) for p in result.problems} == {
        ("key.yaml", Severity.WARNING),
        ("passwd.yml", Severity.WARNING),
    }
    text = "\n".join(str(p) for p in result.problems)
    assert "outside" in text
    assert SECRET not in text and "root:" not in text


def test_a_link_inside_rules_d_is_followed(tmp_path: Path) -> None:
    (tmp_path / "real.yaml").write_text(GOOD_RULES)
    (tmp_path / "alias.yaml").symlink_to(tmp_path / "real.yaml")
    (tmp_path / "real.yaml").rename(tmp_path / "real.txt")
    (tmp_path / "alias.yaml").unlink()
    (tmp_path / "alias.yaml").symlink_to("real.txt")
    result = load_rules(tmp_path)
    assert result.problems == []
    assert result.rules is not None and len(result.rules.rules) == 1


def test_a_link_loop_is_a_warning(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD_RULES)
    (tmp_path / "a.yaml").symlink_to("b.yaml")
    (tmp_path / "b.yaml").symlink_to("a.yaml")
    result = load_rules(tmp_path)
    assert result.rules is not None
    assert [(Path(p.file).name, p.message) for p in result.problems] == [
        ("a.yaml", "a link that loops or cannot be followed: ignored"),
        ("b.yaml", "a link that loops or cannot be followed: ignored"),
    ]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_in_rules_d_is_a_warning_and_the_rest_loads(tmp_path: Path) -> None:
    (tmp_path / "good.yaml").write_text(GOOD_RULES)
    os.mkfifo(tmp_path / "pipe.yaml")
    result = load_rules(tmp_path)
    assert result.rules is not None
    [problem] = result.problems
    assert problem.severity is Severity.WARNING and "not a regular file" in problem.message


def test_values_quoted_in_messages_are_cut() -> None:
    value = "K" * 10_000
    text = f"rules:\n  - id: {value}\n    on: x\n    send: {{template: d-1}}\n"
    [problem] = parse_rules(text).problems
    assert "is not a valid id" in problem.message
    assert "K" * 200 not in str(problem)
    assert "…" in problem.message


# -- 4. templates -------------------------------------------------------------------------------


def _rules(text: str) -> RuleSet:
    return parse_rules(textwrap.dedent(text)).rule_set()


def test_a_template_cannot_change_the_event_another_rule_sees() -> None:
    rules = _rules(HOSTILE_TEMPLATES + GOOD_RULES.removeprefix("rules:\n"))
    event = event_of(order(1))
    with MemoryLedger().transaction() as txn:
        found = decide(event, rules, txn, event.ts)
    by_rule = {d.rule_id: d for d in found}
    mutate, bomb, receipt = by_rule["mutate"], by_rule["bomb"], by_rule["receipt"]
    assert isinstance(mutate, SetAside) and mutate.reason is Reason.TEMPLATE_ERROR
    assert "unsafe" in mutate.detail
    assert isinstance(bomb, SetAside) and bomb.reason is Reason.TEMPLATE_ERROR
    assert isinstance(receipt, Schedule)
    assert receipt.payload.data == {"total": 42}
    assert event.properties["total"] == 42


@pytest.mark.parametrize("method", ["update", "pop", "clear", "setdefault", "append"])
def test_no_method_can_mutate_event_data(method: str) -> None:
    event = event_of(order(1, items=[1, 2]))
    target = "properties['items']" if method == "append" else "properties"
    data = compile_data({"x": f"{{{{ {target}.{method}(1) }}}}"})
    with pytest.raises(TemplateRenderError):
        data.render(event)
    assert event.properties == {"total": 42, "n": 300_000_000, "items": [1, 2]}


@pytest.mark.parametrize(("template", "words"), TEMPLATE_ATTACKS)
def test_each_template_attack_is_a_bounded_template_error(template: str, words: str) -> None:
    data = compile_data({"x": template})
    event = event_of(order(1))
    with pytest.raises(TemplateRenderError) as caught:
        data.render(event)
    assert "data.x: over a limit" in str(caught.value)
    assert words in str(caught.value)
    # Refused before the large value is made: the render's memory stays small.
    assert peak_bytes(lambda: data.render(event)) < 20 * 2**20


def test_ordinary_templates_render_as_before() -> None:
    data = compile_data(
        {
            "lines": "{% for i in properties['items'] %}{{ i.n }} x{{ i.q }}; {% endfor %}",
            "total": "{{ properties.total * 2 }}",
            "label": "{{ '%05d'|format(properties.total) }} {{ '{:>6}'.format('ok') }}",
            "joined": "{{ ['a', 'b'] | join(', ') }}{{ 'x' ~ 'y' }}",
        }
    )
    event = event_of(order(1, items=[{"n": "pen", "q": 2}, {"n": "ink", "q": 1}]))
    assert data.render(event) == {
        "lines": "pen x2; ink x1; ",
        "total": 84,
        "label": "00042     ok",
        "joined": "a, bxy",
    }


def test_the_budget_is_per_render() -> None:
    # Each render may take nearly the whole budget: the next one starts afresh.
    loops = "{% for i in range(4000) %}{% for j in range(10) %}{% endfor %}{% endfor %}"
    data = compile_data({"x": loops})
    event = event_of(order(1))
    # 44,000 steps each: three in one budget would be over it.
    assert limits.MAX_STEPS < 3 * 44_000
    for _ in range(3):
        assert data.render(event) == {"x": ""}


@pytest.mark.parametrize(
    ("template", "words"),
    [
        ("{{ " + "(" * 200 + "1" + ")" * 200 + " }}", "nests too deeply"),  # Jinja recursion
        ("{% if 1 %}" * 300 + "x" + "{% endif %}" * 300, "nests too deeply"),  # blocks too
        ("{{ user.a }}" * 1_000, "over 10000"),  # compiled on first render: kept short
    ],
    ids=["brackets", "blocks", "long"],
)
def test_a_template_that_would_stall_the_loader_is_refused(template: str, words: str) -> None:
    text = "rules:\n  - id: a\n    on: x\n    send:\n      template: d-1\n"
    text += f"      data: {{x: {json.dumps(template)}}}\n"
    [problem] = parse_rules(text).problems
    assert words in problem.message
    assert (problem.line, problem.col, problem.path) == (6, 17, "rules[0].send.data.x")


def test_validate_warns_about_costly_templates() -> None:
    text = """\
    rules:
      - id: a
        on: order
        send:
          template: d-1
          data:
            loops: "{% for a in properties.x %}{% for b in properties.y %}{% endfor %}{% endfor %}"
            repeat: "{{ 'a' * properties.n }}"
            power: "{{ 10 ** properties.n }}"
            format: "{{ '{0:>{1}}'.format(1, properties.n) }}"
            fine: "{{ properties.total * 2 }}"
    """
    result = parse_rules(textwrap.dedent(text))
    assert result.rules is not None  # warnings only: the rule stays in force
    warned = {(p.path, p.line) for p in result.problems if p.severity is Severity.WARNING}
    assert warned == {
        ("rules[0].send.data.loops", 7),
        ("rules[0].send.data.repeat", 8),
        ("rules[0].send.data.power", 9),
        ("rules[0].send.data.format", 10),
    }


# -- 5. matches ---------------------------------------------------------------------------------


def test_nested_quantifiers_run_in_linear_time() -> None:
    # Python's re took 4.6 s on 26 characters and doubles with each one more: 60 would take
    # days and trip the per-test timeout; RE2 answers at once.
    condition = compile_condition({"email": {"matches": r"^([a-z0-9]+)*@example\.com$"}})
    hostile = event_of({**ORDER, "email": "a" * 60 + "!@example.org"})
    assert condition.check(hostile) is not None
    assert condition.check(event_of(ORDER)) is None


@pytest.mark.parametrize(
    "pattern", [r"(a)\1", r"(?=a)b", r"(?<!a)b"], ids=["backref", "lookahead", "lookbehind"]
)
def test_a_pattern_re2_cannot_run_is_refused_with_its_position(pattern: str) -> None:
    with pytest.raises(SpecError) as caught:
        compile_condition({"email": {"matches": pattern}})
    assert "RE2" in caught.value.message
    text = f"rules:\n  - id: a\n    on: x\n    when: {{email: {{matches: '{pattern}'}}}}\n"
    text += "    send: {template: d-1}\n"
    [problem] = parse_rules(text).problems
    assert (problem.line, problem.col, problem.path) == (4, 29, "rules[0].when.email.matches")


def test_a_lone_surrogate_does_not_break_matches() -> None:
    # The spool refuses lone surrogates; a value from elsewhere must not break RE2 either.
    condition = compile_condition({"user_id": {"matches": "^u.1$"}})
    assert isinstance(condition, Leaf)
    assert condition.test("u\ud8001")
    assert not condition.test("u\ud800\ud8001")


# -- 6. the real processes ----------------------------------------------------------------------


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "receipt.yaml").write_text(GOOD_RULES)
    return rules


@pytest.mark.parametrize(
    ("name", "text", "position"),
    [
        ("lol.yaml", LOL, r"lol\.yaml:\d+:\d+: error: the document is too large"),
        ("deep.yaml", DEEP, rf"deep\.yaml:5:{17 + MAX_DEPTH}: error: the document is too large"),
        (
            "regex.yaml",
            "rules:\n  - id: r\n    on: x\n    when: {email: {matches: '(a)\\1'}}\n"
            "    send: {template: d-1}\n",
            r"regex\.yaml:4:29: error: invalid regular expression .*RE2",
        ),
    ],
    ids=["billion-laughs", "deep-340", "backreference"],
)
def test_validate_refuses_with_a_position(
    rules_dir: Path, name: str, text: str, position: str
) -> None:
    (rules_dir / name).write_text(text)
    started_s = time.monotonic()
    done = run_cli("validate", rules_dir)
    elapsed_s = time.monotonic() - started_s
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # Recorded, not asserted (-rP shows it): the issue's 367 B file took 8 s and 1.3 GB.
    print(f"validate {name}: {elapsed_s:.2f}s, children max RSS {usage.ru_maxrss // 1024} MiB")
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert re.search(position, done.stdout), done.stdout


def test_validate_names_a_link_out_without_its_content(rules_dir: Path, secret_file: Path) -> None:
    (rules_dir / "key.yaml").symlink_to(secret_file)
    (rules_dir / "passwd.yaml").symlink_to("/etc/passwd")
    for output in ("table", "json"):
        done = run_cli("validate", rules_dir, "--format", output)
        assert done.returncode == 0, done.stdout
        assert "key.yaml" in done.stdout and "passwd.yaml" in done.stdout
        assert SECRET not in done.stdout + done.stderr
        assert "root:" not in done.stdout + done.stderr


def test_simulate_sets_the_one_send_aside_and_the_rest_is_fine(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a-hostile.yaml").write_text(HOSTILE_TEMPLATES)
    (rules / "b-receipt.yaml").write_text(GOOD_RULES)
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(order(1)) + "\n" + json.dumps(order(2, n=3)) + "\n")
    done = run_cli("simulate", events, "--rules", rules, "--format", "json")
    assert "Traceback" not in done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    outcomes = {(x["event_id"], x["rule"], x["outcome"], x["reason"]) for x in lines}
    assert outcomes == {
        ("o1", "mutate", "dead_letter", "template_error"),
        ("o1", "bomb", "dead_letter", "template_error"),
        ("o1", "receipt", "scheduled", "immediate"),
        ("o1", "receipt", "sent", "delivered"),
        ("o2", "mutate", "dead_letter", "template_error"),
        ("o2", "bomb", "scheduled", "immediate"),
        ("o2", "bomb", "sent", "delivered"),
        ("o2", "receipt", "scheduled", "immediate"),
        ("o2", "receipt", "sent", "delivered"),
    }


def _outbox_emails(outbox: Path) -> dict[str, dict[str, Any]]:
    # The outbox writes a hidden temporary file, then renames it: only the result counts.
    emails: dict[str, dict[str, Any]] = {}
    for path in outbox.glob("*.json"):
        if not path.name.startswith("."):
            emails[path.name] = json.loads(path.read_text())
    return emails


def _receipt(outbox: Path, event_id: str) -> Callable[[], dict[str, Any] | None]:
    def find() -> dict[str, Any] | None:
        for name, email in _outbox_emails(outbox).items():
            if "receipt" in name and event_id in name:
                return email
        return None

    return find


@pytest.fixture
def live_site(tmp_path: Path) -> Iterator[tuple[Serve, Path]]:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "a-hostile.yaml").write_text(HOSTILE_TEMPLATES)
    (rules / "b-receipt.yaml").write_text(GOOD_RULES)
    env = clean_env({"TRIGMAIL_METRICS_LISTEN": "127.0.0.1:0"})
    with Serve(tmp_path, [], env) as serve:
        serve.wait_ready()
        yield serve, tmp_path


@pytest.mark.slow
def test_serve_survives_hostile_drops_and_keeps_sending(
    live_site: tuple[Serve, Path], secret_file: Path
) -> None:
    serve, root = live_site
    rules, outbox = root / "rules.d", root / "outbox"
    append_events(root / "events.jsonl", [order(1)])
    email = wait_for(_receipt(outbox, "o1"), "the receipt of o1 in the outbox")
    # The mutating rule ran first, and was refused: the receipt has the real total.
    assert '"total": 42' in json.dumps(email)
    reasons = {(d.rule, d.reason) for d in decisions(root / "trigmail.db")}
    assert {("mutate", Reason.TEMPLATE_ERROR), ("bomb", Reason.TEMPLATE_ERROR)} <= reasons

    for number, (name, text) in enumerate((("lol.yaml", LOL), ("deep.yaml", DEEP)), start=2):
        mark = serve.mark()
        (rules / name).write_text(text)
        serve.wait_line(r"rules: reload rejected", after=mark)
        serve.wait_line(rf"{name}:\d+:\d+: error: the document is too large", after=mark)
        assert serve.metric("trigmail_rules_last_reload_successful") == 0
        # The last good rules are still in force: the next order still gets its receipt.
        append_events(root / "events.jsonl", [order(number)])
        wait_for(_receipt(outbox, f"o{number}"), f"the receipt of o{number} after {name}")
        assert serve.proc.poll() is None
        mark = serve.mark()
        (rules / name).unlink()
        serve.wait_line(r"rules: version \w+ in force", after=mark)

    mark = serve.mark()
    (rules / "key.yaml").symlink_to(secret_file)
    serve.wait_line(r"key\.yaml:1:1: warning: a link to a file outside", after=mark)
    append_events(root / "events.jsonl", [order(9)])
    wait_for(_receipt(outbox, "o9"), "the receipt of o9 after the link")
    status, _ = serve.get("/healthz")
    assert status == 200
    assert serve.stop() == 0
    assert SECRET not in serve.stderr
    assert "Traceback" not in serve.stderr
