"""The reliability oracle's own judgement of nudges in feed order (tests/reliability/oracle.py):
fast, in process, on hand-made feeds with their times."""

from __future__ import annotations

from collections import Counter

from tests.reliability import checks, oracle, workload
from tests.reliability.oracle import CANCELLED, HELD, NUDGE_DELAY_S, OUT
from tests.reliability.workload import Fed, Kind, Line, Stamper


def browse(event_id: str, at: float, user: str = "n1") -> Fed:
    line = Line("{}", Kind.BROWSE, event_id, user, f"nudge:{event_id}", ts=True)
    return Fed(line, line.text, at)


def cancel(at: float, user: str = "n1") -> Fed:
    return Fed(Line("{}", Kind.CANCEL, f"k{at}", user, ts=True), "{}", at)


def judged(
    fed: list[Fed],
    states: dict[str, str],
    cancel_on: set[str],
    refused: frozenset[str] = frozenset(),
) -> list[str]:
    expected = oracle.Expected()
    expected.nudges["n1"] = oracle.plan_nudges("n1", fed)
    observed = checks.Observed(states=states, cancel_on=cancel_on, refused=set(refused))
    return [v.check for v in checks.nudge_not_in_feed_order(expected, observed)]


def test_a_cancel_written_before_the_nudge_fell_due_must_cancel_it() -> None:
    fed = [browse("a", 0.0), cancel(NUDGE_DELAY_S - 1), browse("b", 100.0), browse("c", 101.0)]
    plan = oracle.plan_nudges("n1", fed)
    assert plan.must_cancel == {"nudge:a"}
    only = {
        "nudge:a": frozenset({CANCELLED}),
        "nudge:b": frozenset({OUT}),
        "nudge:c": frozenset({HELD}),
    }
    assert plan.ways() == [only]
    good = {"nudge:a": "cancelled", "nudge:b": "sent", "nudge:c": "cancelled"}
    assert judged(fed, good, {"nudge:a"}) == []
    # Sent although its cancel came first: the bug of a backlog read after firing.
    sent = {**good, "nudge:a": "sent", "nudge:b": "cancelled"}
    assert judged(fed, sent, set()) == ["cancelled_trigger_sent"]
    # Cancelled, but by the cooldown rather than by its cancel, is not what the feed asks.
    assert judged(fed, good, set()) == ["cancelled_trigger_sent"]


def test_the_first_nudge_in_feed_order_is_the_one_out() -> None:
    fed = [browse("a", 0.0), cancel(0.5), browse("b", 100.0), browse("c", 101.0)]
    later_out = {"nudge:a": "cancelled", "nudge:b": "cancelled", "nudge:c": "sent"}
    assert judged(fed, later_out, {"nudge:a"}) == ["cooldown_broken"]
    both_out = {"nudge:a": "cancelled", "nudge:b": "sent", "nudge:c": "in_doubt"}
    assert judged(fed, both_out, {"nudge:a"}) == ["cooldown_broken"]
    # A provider's 429 on the first delays it past the next one's due time: the next may go.
    assert judged(fed, later_out, {"nudge:a"}, frozenset({"nudge:b"})) == []
    assert judged(fed, both_out, {"nudge:a"}, frozenset({"nudge:b"})) == ["cooldown_broken"]


def test_a_browse_decided_while_a_refused_nudge_was_in_flight_may_be_passed_over() -> None:
    # a fires, is refused (429) and waits out its retry; b, decided meanwhile, was skipped for
    # the cooldown (a send in flight counts) and never scheduled; c then goes out first and
    # the cooldown drops a's retry (the long spool run's only violation, seed 1).
    fed = [browse("a", 0.0), browse("b", 50.0), browse("c", 60.0)]
    c_out = {"nudge:a": "cancelled", "nudge:c": "sent"}
    refused = frozenset({"nudge:a"})
    assert judged(fed, c_out, set(), refused) == []
    # Without the refusal, or with b scheduled (it could have gone out), c out is wrong.
    assert judged(fed, c_out, set()) == ["cooldown_broken"]
    b_held = {**c_out, "nudge:b": "cancelled"}
    assert judged(fed, b_held, set(), refused) == ["cooldown_broken"]


def test_a_cancel_written_after_the_nudge_fell_due_may_go_either_way() -> None:
    fed = [browse("a", 0.0), cancel(NUDGE_DELAY_S + 5), browse("b", 100.0)]
    assert oracle.plan_nudges("n1", fed).must_cancel == frozenset()
    # Sent on time, so the cooldown holds the later one; or held late and cancelled.
    sent = {"nudge:a": "sent", "nudge:b": "cancelled"}
    assert judged(fed, sent, set()) == []
    late_cancel = {"nudge:a": "cancelled", "nudge:b": "sent"}
    assert judged(fed, late_cancel, {"nudge:a"}) == []
    assert judged(fed, {"nudge:a": "sent", "nudge:b": "sent"}, set()) == ["cooldown_broken"]


def test_the_stamper_writes_ts_and_redelivers_the_very_text() -> None:
    lines = workload.build(400, seed=5).lines
    stamper = Stamper()
    texts = stamper.stamp(lines, 1_700_000_000.25)
    stamped = [t for line, t in zip(lines, texts, strict=True) if line.ts]
    assert stamped and all('"ts":"2023-11-14T22:13:20.250000Z"' in t for t in stamped)
    originals = {f.line.identity: f.text for f in stamper.fed if f.line.kind is not Kind.REDELIVERY}
    copies = [f for f in stamper.fed if f.line.kind is Kind.REDELIVERY]
    assert copies and all(f.text == originals[f.line.identity] for f in copies)
    kinds = Counter(line.kind for line in lines)
    assert kinds[Kind.CANCEL] == kinds[Kind.BROWSE] // 3
