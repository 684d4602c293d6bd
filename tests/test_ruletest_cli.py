"""`trigmail test` end to end: the real CLI (in this process, tests/cli_runner.py), on real
test files."""

from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from tests.cli_runner import run_trigmail_here
from tests.serve_harness import REPO_ROOT as ROOT


def run_tests(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return run_trigmail_here("test", *args, cwd=cwd)


def copy_rules(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "rules.d", tmp_path / "rules.d")
    return tmp_path / "rules.d"


def test_the_sample_suite_passes() -> None:
    done = run_tests()
    assert done.returncode == 0, done.stdout
    assert "  PASS an order within the hour cancels the reminder" in done.stdout
    assert "FAIL" not in done.stdout
    assert done.stdout.splitlines()[-1].startswith("20 passed in ")


def test_a_broken_rule_fails_its_test_in_plain_words(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    # the marketer's mistake: the reminder no longer listens for orders
    text = (rules / "cart-recovery.yaml").read_text()
    (rules / "cart-recovery.yaml").write_text(text.replace("[order_completed]", "[order_complete]"))
    done = run_tests(cwd=tmp_path)
    assert done.returncode == 1
    out = done.stdout
    assert "  FAIL an order within the hour cancels the reminder" in out
    assert "expected cart-recovery cancelled for ana at +35m because of cancel_on" in out
    assert "cart-recovery sent for ana at +1h5m because of delivered" in out
    assert out.splitlines()[-1].startswith("1 failed, 19 passed in ")


def test_json_and_junit_reports(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    text = (rules / "welcome.yaml").read_text()
    # the first name read from the wrong field: only the fallback ever shows
    wrong = text.replace("{{ user.first_name |", "{{ user.last_name |")
    assert wrong != text
    (rules / "welcome.yaml").write_text(wrong)
    junit = tmp_path / "report.xml"
    done = run_tests("--format", "json", "--junit", junit, cwd=tmp_path)
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert (report["passed"], report["failed"]) == (19, 1)
    [failed] = [t for t in report["tests"] if not t["passed"]]
    assert failed["name"] == "a new user is welcomed at once, by first name"
    assert failed["file"] == "rules.d/tests/welcome.yaml"
    assert '"first_name": "there"' in failed["failures"][0]
    suites = ET.parse(junit).getroot().findall("testsuite")
    assert sum(int(s.get("tests", "0")) for s in suites) == 20
    [case] = [c for s in suites for c in s.iter("testcase") if c.find("failure") is not None]
    assert case.get("name") == failed["name"]


def test_a_bad_test_file_names_the_line_and_column(tmp_path: Path) -> None:
    rules = copy_rules(tmp_path)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "tests:\n"
        "  - name: typo\n"
        "    events:\n"
        "      - {at: 5x, event: user_signup, user_id: ana}\n"
        "    expect:\n"
        "      - {rule: welcome, user_id: ana, outcome: snet}\n"
    )
    done = run_tests(bad, "--rules", rules, cwd=tmp_path)
    assert done.returncode == 1
    assert f"{bad}:4:14: error: '5x' is not a time" in done.stdout
    assert f"{bad}:6:48: error: unknown outcome 'snet' (did you mean 'sent'?)" in done.stdout


def test_usage_error_exits_2() -> None:
    assert run_tests("--format", "xml").returncode == 2
