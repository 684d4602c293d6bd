"""Rule tests (docs/design.md, "Rule tests"): parse a test file, run it on the simulate engine,
compare what happened with what was expected. Pure apart from the simulation it drives.

A test is a timeline of events (``at:`` offsets from ``start``) and a list of expectations;
it runs on :class:`trigmail.simulate.Simulation`, the same engine and virtual clock as
``trigmail simulate``, so a passing test means ``simulate`` and ``serve`` decide the same.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from trigmail.decisions import LogEntry, Outcome, Reason
from trigmail.durations import format_duration, parse_duration
from trigmail.errors import DurationError
from trigmail.events import parse_ts
from trigmail.rules.model import RuleSet
from trigmail.rules.problems import Problem, Severity
from trigmail.rules.yamlsource import Path, YamlDocument, load_document
from trigmail.simulate import Simulation

# Without `start`, a test begins on a Monday morning (UTC), so delays land in working hours.
DEFAULT_START = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
# An expected time matches an actual one within this many seconds.
AT_TOLERANCE_S = 1.0
_TEST_KEYS = ("name", "start", "events", "expect", "only")
_EXPECT_KEYS = ("rule", "user_id", "outcome", "step", "at", "reason", "variant", "data")
_OUTCOMES = tuple(o.value for o in Outcome)
_REASONS = tuple(r.value for r in Reason)


@dataclass(frozen=True)
class Expectation:
    """One line of ``expect``; ``None`` fields are not checked."""

    rule: str
    user_id: str
    outcome: str
    line: int
    step: int | None = None
    at: datetime | None = None
    reason: str | None = None
    variant: str | None = None
    data: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class RuleTest:
    """One test of a file: its events (complete, in time order) and its expectations."""

    name: str
    file: str
    line: int
    start: datetime
    events: tuple[Mapping[str, Any], ...]
    expect: tuple[Expectation, ...]
    only: bool = False


@dataclass
class TestResult:
    """What one test found: empty ``failures`` means it passed."""

    test: RuleTest
    failures: list[str] = field(default_factory=list)
    entries: list[LogEntry] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict[str, Any]:
        return {
            "file": self.test.file,
            "line": self.test.line,
            "name": self.test.name,
            "passed": self.passed,
            "failures": list(self.failures),
        }


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Parser:
    """Reads one document, collecting every problem with its position."""

    def __init__(self, doc: YamlDocument, filename: str) -> None:
        self.doc = doc
        self.filename = filename
        self.problems: list[Problem] = [
            Problem(filename, i.mark.line, i.mark.col, Severity.ERROR, "", i.message)
            for i in doc.issues
        ]

    def problem(self, path: Path, message: str, *, key: bool = False) -> None:
        mark = self.doc.position(path, key=key)
        shown = ".".join(str(p) for p in path)
        self.problems.append(
            Problem(self.filename, mark.line, mark.col, Severity.ERROR, shown, message)
        )

    def line(self, path: Path) -> int:
        return self.doc.position(path).line

    def unknown_keys(self, obj: Mapping[str, Any], path: Path, known: Sequence[str]) -> None:
        for key in obj:
            if key not in known:
                self.problem((*path, key), f"unknown key {key!r}{_suggest(key, known)}", key=True)

    def moment(self, value: Any, path: Path, start: datetime) -> datetime | None:
        """Read an offset from ``start`` (``35m``) or an RFC 3339 time."""
        if isinstance(value, str) and len(value) >= 20:
            try:
                return parse_ts(value)
            except ValueError:
                pass
        try:
            return start + timedelta(seconds=parse_duration(value))
        except DurationError:
            self.problem(path, f"{value!r} is not a time: use an offset such as 0m, 5m or 1h30m")
            return None

    def tests(self) -> list[RuleTest]:
        data = self.doc.data
        if self.doc.issues:
            return []
        if not isinstance(data, Mapping) or not isinstance(data.get("tests"), list):
            self.problem((), "a test file holds a list 'tests:' (see docs/testing.md)")
            return []
        self.unknown_keys(data, (), ("tests",))
        found = []
        for index, item in enumerate(data["tests"]):
            test = self.test(item, ("tests", index))
            if test is not None:
                found.append(test)
        return found

    def test(self, item: Any, path: Path) -> RuleTest | None:
        if not isinstance(item, Mapping):
            self.problem(path, "each test is a mapping with 'name', 'events' and 'expect'")
            return None
        before = len(self.problems)
        self.unknown_keys(item, path, _TEST_KEYS)
        name = item.get("name")
        if not isinstance(name, str) or not name.strip():
            self.problem(path, "a test needs a 'name' (a sentence saying what it checks)")
            name = ""
        start = DEFAULT_START
        if "start" in item:
            start = self.moment(item["start"], (*path, "start"), DEFAULT_START) or DEFAULT_START
        events = self.events(item.get("events"), (*path, "events"), start)
        expect = self.expectations(item.get("expect", []), (*path, "expect"), start)
        only = item.get("only", False)
        if not isinstance(only, bool):
            self.problem((*path, "only"), "'only' is true or false")
        if len(self.problems) > before:
            return None
        return RuleTest(name, self.filename, self.line(path), start, events, expect, bool(only))

    def events(self, items: Any, path: Path, start: datetime) -> tuple[Mapping[str, Any], ...]:
        if not isinstance(items, list) or not items:
            self.problem(path, "a test needs 'events': a list of events, each with 'at'")
            return ()
        timed: list[tuple[datetime, int, dict[str, Any]]] = []
        for index, item in enumerate(items):
            where = (*path, index)
            if not isinstance(item, Mapping):
                self.problem(where, "each event is a mapping such as {at: 5m, event: ..., ...}")
                continue
            event = dict(item)
            at = self.moment(event.pop("at", "0"), (*where, "at"), start)
            if at is None:
                continue
            event.setdefault("ts", at.isoformat().replace("+00:00", "Z"))
            event.setdefault("id", f"evt_{index + 1}")
            if isinstance(event.get("user_id"), str):
                event.setdefault("email", f"{event['user_id']}@example.com")
            timed.append((at, index, event))
        # Listed out of order is fine: the clock only moves forward, so events go in time order.
        return tuple(event for _, _, event in sorted(timed, key=lambda t: (t[0], t[1])))

    def expectations(self, items: Any, path: Path, start: datetime) -> tuple[Expectation, ...]:
        if not isinstance(items, list):
            self.problem(path, "'expect' is a list of {rule, user_id, outcome, ...}")
            return ()
        found = []
        for index, item in enumerate(items):
            expectation = self.expectation(item, (*path, index), start)
            if expectation is not None:
                found.append(expectation)
        return tuple(found)

    def expectation(self, item: Any, path: Path, start: datetime) -> Expectation | None:
        if not isinstance(item, Mapping):
            self.problem(path, "each expectation is a mapping {rule, user_id, outcome, ...}")
            return None
        before = len(self.problems)
        self.unknown_keys(item, path, _EXPECT_KEYS)
        for name in ("rule", "user_id", "outcome"):
            if not isinstance(item.get(name), str):
                self.problem((*path, name) if name in item else path, f"'{name}' is required text")
        outcome, reason = item.get("outcome"), item.get("reason")
        if isinstance(outcome, str) and outcome not in _OUTCOMES:
            message = f"unknown outcome {outcome!r}{_suggest(outcome, _OUTCOMES)}"
            self.problem((*path, "outcome"), message)
        if reason is not None and reason not in _REASONS:
            self.problem(
                (*path, "reason"), f"unknown reason {reason!r}{_suggest(str(reason), _REASONS)}"
            )
        step = item.get("step")
        if step is not None and (not isinstance(step, int) or isinstance(step, bool)):
            self.problem((*path, "step"), "'step' is a whole number")
        data = item.get("data")
        if data is not None and not isinstance(data, Mapping):
            self.problem((*path, "data"), "'data' is a mapping of template fields")
        at = None if "at" not in item else self.moment(item["at"], (*path, "at"), start)
        if len(self.problems) > before:
            return None
        variant = item.get("variant")
        return Expectation(
            rule=item["rule"],
            user_id=item["user_id"],
            outcome=str(outcome),
            line=self.line(path),
            step=step,
            at=at,
            reason=reason,
            variant=None if variant is None else str(variant),
            data=data,
        )


def parse_tests(text: str, filename: str) -> tuple[list[RuleTest], list[Problem]]:
    """Parse one test file; a file with any problem yields no tests."""
    parser = _Parser(load_document(text), filename)
    tests = parser.tests()
    return (tests, parser.problems) if not parser.problems else ([], parser.problems)


@dataclass(frozen=True)
class _Actual:
    """One decision as the test compares it: the log entry plus what was sent."""

    entry: LogEntry
    data: Mapping[str, Any] | None
    variant: str | None


def run_test(test: RuleTest, rules: RuleSet) -> TestResult:
    """Run ``test`` on a fresh simulation of ``rules`` and compare."""
    result = TestResult(test)
    simulation = Simulation(rules, result.entries.append)
    lines = [json.dumps(event).encode() for event in test.events]
    simulation.run(lines, source=f"{test.file}:{test.name}")
    sent = {email.key: email for email in simulation.provider.sent}
    actual = [
        _Actual(
            entry,
            sent[entry.key].payload.data if entry.key in sent else None,
            entry.variant,
        )
        for entry in result.entries
    ]
    result.failures = compare(test, actual, rules)
    return result


def compare(test: RuleTest, actual: Sequence[_Actual], rules: RuleSet) -> list[str]:
    """Return a failure in plain words per unmet expectation (and unlisted send, with ``only``)."""
    failures = []
    used: set[int] = set()
    for expected in test.expect:
        if rules.get(expected.rule) is None:
            known = [rule.id for rule in rules.rules]
            failures.append(
                f"line {expected.line}: there is no rule {expected.rule!r}"
                f"{_suggest(expected.rule, known)}"
            )
            continue
        index = next(
            (i for i, each in enumerate(actual) if i not in used and _matches(expected, each)),
            None,
        )
        if index is None:
            failures.append(_missed(test, expected, actual))
        else:
            used.add(index)
    if test.only:
        for i, each in enumerate(actual):
            if i not in used and each.entry.outcome is Outcome.SENT:
                failures.append(f"not expected (only: true): {_describe(test, each)}")
    return failures


def _matches(expected: Expectation, actual: _Actual) -> bool:
    entry = actual.entry
    if (entry.rule, entry.user_id, entry.outcome.value) != (
        expected.rule,
        expected.user_id,
        expected.outcome,
    ):
        return False
    # A line without a step (a decision about the whole rule) matches any expected step.
    if expected.step is not None and entry.step is not None and entry.step != expected.step:
        return False
    if expected.reason is not None and entry.reason.value != expected.reason:
        return False
    if expected.at is not None and abs((entry.at - expected.at).total_seconds()) > AT_TOLERANCE_S:
        return False
    if expected.variant is not None and actual.variant != expected.variant:
        return False
    return expected.data is None or _data_matches(expected.data, actual.data)


def _data_matches(expected: Mapping[str, Any], actual: Mapping[str, Any] | None) -> bool:
    if actual is None:
        return False
    return all(
        name in actual and (actual[name] == value or str(actual[name]) == _text(value))
        for name, value in expected.items()
    )


def _text(value: Any) -> str:
    # Rendered template data is text: an expected number 50 matches a rendered "50".
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _offset(test: RuleTest, moment: datetime) -> str:
    seconds = (moment - test.start).total_seconds()
    sign = "-" if seconds < 0 else "+"
    return f"{sign}{format_duration(abs(seconds)) if seconds else '0m'}"


def _expected_words(test: RuleTest, expected: Expectation) -> str:
    words = f"{expected.rule}"
    if expected.step is not None:
        words += f" step {expected.step}"
    words += f" {expected.outcome} for {expected.user_id}"
    if expected.at is not None:
        words += f" at {_offset(test, expected.at)}"
    if expected.reason is not None:
        words += f" because of {expected.reason}"
    if expected.variant is not None:
        words += f", variant {expected.variant}"
    if expected.data is not None:
        words += f", with data {json.dumps(dict(expected.data), sort_keys=True)}"
    return words


def _describe(test: RuleTest, actual: _Actual) -> str:
    entry = actual.entry
    words = f"{entry.rule or '(no rule)'}"
    if entry.step:
        words += f" step {entry.step}"
    words += f" {entry.outcome.value} for {entry.user_id} at {_offset(test, entry.at)}"
    words += f" because of {entry.reason.value}"
    if actual.variant is not None:
        words += f", variant {actual.variant}"
    if actual.data is not None:
        words += f", with data {json.dumps(dict(actual.data), sort_keys=True, default=str)}"
    return words


def _missed(test: RuleTest, expected: Expectation, actual: Sequence[_Actual]) -> str:
    related = [
        each
        for each in actual
        if each.entry.user_id == expected.user_id and each.entry.rule in (expected.rule, None)
    ]
    message = f"line {expected.line}: expected {_expected_words(test, expected)}\n"
    if not related:
        return message + f"  but {expected.rule} did nothing for {expected.user_id}"
    happened = "\n".join(f"    {_describe(test, each)}" for each in related)
    return message + f"  but what happened was:\n{happened}"
