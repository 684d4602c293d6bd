"""The crash suite's kill switch: inert by default, exact when set."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

SCRIPT = """
from trigmail import faults
for n in range(1, 4):
    faults.reached(faults.KillPoint.AFTER_CLAIM)
    print(n, flush=True)
"""


@pytest.mark.parametrize(
    ("switch", "printed", "killed"),
    [
        (None, "1\n2\n3\n", False),  # unset: every point passes
        ("after_read", "1\n2\n3\n", False),  # another point: inert
        ("after_claim", "", True),  # the first time the point is reached
        ("after_claim:2", "1\n", True),  # the second time
        ("after_claim:0", "", True),  # a count below 1 means the first time
    ],
)
def test_kill_at(switch: str | None, printed: str, killed: bool) -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRIGMAIL_KILL_AT"}
    if switch is not None:
        env["TRIGMAIL_KILL_AT"] = switch
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        check=False,
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert done.stdout == printed
    assert done.returncode == (-signal.SIGKILL if killed else 0)
