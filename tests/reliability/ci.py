"""What the CI-sized crash runs share: their fault rates and their verdict."""

from __future__ import annotations

from tests.fake_sendgrid import FaultRates
from tests.reliability.harness import RunResult

# Every fault class of the fake, several times as often as the long run's: a short run makes
# few requests (sends due together share one), and each class must show up in it.
CI_FAULTS = FaultRates(
    latency_s=0.002,
    rate_limit=0.06,
    server_error=0.04,
    unavailable=0.06,
    hang_after_accept=0.04,
    reset_before_read=0.04,
    reset_after_accept=0.04,
)


def assert_green(result: RunResult) -> None:
    violations = "\n".join(str(v) for v in result.violations[:50])
    assert not result.violations, f"{len(result.violations)} violations:\n{violations}"
