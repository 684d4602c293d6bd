"""How long ``trigmail test`` takes on the sample suite (target: under 1 s end to end).

Run: .venv/bin/python -m bench.bench_ruletests [--runs 5]

Two figures: the whole command as a fresh process (what a marketer or CI waits for, start-up
included), and the suite alone in-process (load the rules, parse and run every test).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from trigmail.rules.loader import load_rules
from trigmail.ruletests import parse_tests, run_test

REPO = Path(__file__).parent.parent
TRIGMAIL = Path(sys.executable).with_name("trigmail")


def suite_s() -> tuple[float, int]:
    """Load the sample rules, parse and run every sample test; return (seconds, tests)."""
    started = time.perf_counter()
    rules = load_rules(REPO / "rules.d").rule_set()
    count = 0
    for path in sorted((REPO / "rules.d" / "tests").glob("*.yaml")):
        tests, problems = parse_tests(path.read_text(encoding="utf-8"), str(path))
        assert not problems, problems
        for test in tests:
            assert run_test(test, rules).passed, test.name
            count += 1
    return time.perf_counter() - started, count


def command_s() -> float:
    started = time.perf_counter()
    subprocess.run([str(TRIGMAIL), "test"], cwd=REPO, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    commands = [command_s() for _ in range(args.runs)]
    suites = [suite_s() for _ in range(args.runs)]
    print(f"trigmail test (process): median {statistics.median(commands):.2f} s over {args.runs}")
    print(
        f"sample suite in-process ({suites[0][1]} tests): "
        f"median {statistics.median(s for s, _ in suites) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
