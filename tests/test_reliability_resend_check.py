"""The reliability judge's resend check: under ``on_doubt: resend`` an email may be accepted
again only after an acceptance its daemon never had the answer to (a fault, or an answer it had
stopped waiting for), or after its daemon was killed. The judge itself must fail where it should."""

from __future__ import annotations

import pytest

from tests.fake_sendgrid import FaultKind
from tests.reliability import order
from tests.reliability.checks import Acceptance, Observed, resend_duplicate_unexplained
from tests.reliability.oracle import Expected

KEY = "receipt:o1"


def judged(earlier: Acceptance, killed: set[int]) -> list[str]:
    """The violations of one worker's and of several workers' checks, for two acceptances."""
    later = Acceptance(KEY, earlier.instance + 1, None)
    observed = Observed(acceptances=[earlier, later], killed=killed)
    one = resend_duplicate_unexplained(Expected(), observed)
    timed = order.Timed(accepted_at=[1.0, 2.0], killed_at={i: 1.5 for i in killed})
    several = order.resend_duplicate_unexplained(observed, timed)
    return [v.check for v in one] + [v.check for v in several]


@pytest.mark.parametrize(
    "earlier",
    [
        Acceptance(KEY, 1, FaultKind.RESET_AFTER_ACCEPT),
        Acceptance(KEY, 1, FaultKind.HANG_AFTER_ACCEPT),
        Acceptance(KEY, 1, None, late=True),
    ],
    ids=["reset", "hang", "late"],
)
def test_a_resend_after_an_answer_never_read_is_explained(earlier: Acceptance) -> None:
    assert judged(earlier, killed=set()) == []


def test_a_resend_after_a_kill_is_explained() -> None:
    assert judged(Acceptance(KEY, 1, None), killed={1}) == []


def test_a_resend_after_an_answer_read_is_a_violation() -> None:
    assert judged(Acceptance(KEY, 1, None), killed=set()) == ["resend_duplicate_unexplained"] * 2
