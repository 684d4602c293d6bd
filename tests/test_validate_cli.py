"""`trigmail validate` end to end: the real CLI, in this process (tests/cli_runner.py) but for
one run of the installed console script."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import cli
from tests.serve_harness import REPO_ROOT as ROOT
from tests.serve_harness import TRIGMAIL

FIXTURES = Path(__file__).parent / "fixtures" / "rules"


ENV = {"PATH": "/usr/bin:/bin", "NO_COLOR": "1"}


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return cli("validate", *args, cwd=cwd, env=ENV)


def test_sample_rules_validate_clean() -> None:
    # The installed console script, as a user runs it; the other tests run the same command
    # in this process.
    result = subprocess.run(
        [str(TRIGMAIL), "validate", "rules.d", "--strict"],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout
    assert result.stdout == "6 files, 5 rules: 0 errors, 0 warnings\n"


def test_default_directory_is_rules_d(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "rules.d", tmp_path / "rules.d")
    result = _run(cwd=tmp_path)
    assert (result.returncode, result.stdout) == (0, "6 files, 5 rules: 0 errors, 0 warnings\n")


@pytest.mark.parametrize(
    ("fixture", "expected", "summary"),
    [
        # an unknown key with a suggestion
        (
            "bad/unknown_key.yaml",
            "4:5: error: unknown key 'cooldwn' (did you mean 'cooldown'?) (at rules[0].cooldwn)",
            "1 file, 1 rule: 1 error, 0 warnings",
        ),
        # a YAML syntax error with its position
        (
            "bad/yaml_syntax.yaml",
            "4:11: error: this '{' is not closed by '}' on its line (or a ',' is missing between "
            "two items)",
            "1 file, 0 rules: 1 error, 0 warnings",  # nothing could be read
        ),
        # a bad operator
        (
            "bad/bad_operator.yaml",
            "5:37: error: unknown operator 'gtee', did you mean 'gte'? "
            "(at rules[0].when.properties.cart_value.gtee)",
            "1 file, 1 rule: 1 error, 0 warnings",
        ),
    ],
)
def test_bad_file_exits_1_with_position(fixture: str, expected: str, summary: str) -> None:
    result = _run(FIXTURES / fixture)
    assert result.returncode == 1
    assert result.stdout.splitlines() == [f"{FIXTURES / fixture}:{expected}", summary]
    # Colour only on a terminal: a pipe gets plain text.
    assert "\x1b[" not in result.stdout


def test_every_bad_fixture_is_invalid() -> None:
    result = _run("--format", "json", *sorted((FIXTURES / "bad").iterdir()))
    assert result.returncode == 1
    problems = json.loads(result.stdout)
    files = {Path(p["file"]).name for p in problems}
    assert files == {path.name for path in (FIXTURES / "bad").iterdir()}


def test_json_format() -> None:
    result = _run("--format", "json", FIXTURES / "bad" / "wrong_type.yaml")
    assert result.returncode == 1
    assert json.loads(result.stdout) == [
        {
            "file": str(FIXTURES / "bad" / "wrong_type.yaml"),
            "line": 4,
            "col": 22,
            "severity": "error",
            "path": "rules[0].send.template",
            "message": "expected text, got the number 12345; put it in quotes",
        }
    ]


@pytest.mark.parametrize(
    ("flags", "code", "severity"),
    [
        ((), 0, "warning"),  # warnings alone keep a rule set valid
        (("--strict",), 1, "error"),  # --strict makes them errors
    ],
)
def test_strict_turns_warnings_into_errors(
    flags: tuple[str, ...], code: int, severity: str
) -> None:
    result = _run("--format", "json", *flags, FIXTURES / "warn" / "long_cooldown.yaml")
    assert result.returncode == code
    assert [p["severity"] for p in json.loads(result.stdout)] == [severity]


def test_retention_option_changes_the_cooldown_warning() -> None:
    result = _run("--retention", "200d", FIXTURES / "warn" / "long_cooldown.yaml")
    assert (result.returncode, result.stdout) == (0, "1 file, 1 rule: 0 errors, 0 warnings\n")


@pytest.mark.parametrize(
    "args",
    [
        ("--format", "xml"),  # an unknown format
        ("--retention", "soon"),  # a retention that is not a duration
        ("--no-such-flag",),  # an unknown flag
    ],
)
def test_usage_errors_exit_2(args: tuple[str, ...]) -> None:
    assert _run(*args, "rules.d").returncode == 2


def test_the_cli_starts_without_what_only_serve_needs() -> None:
    # validate, simulate and status start in a fraction of the time when the database driver,
    # the Redis client, the HTTP client and the metrics server stay unimported until serve.
    probe = (
        "import sys, trigmail.cli, trigmail.ledger; "
        "trigmail.ledger.open_ledger(':memory:'); "
        "print(sorted(m for m in ('psycopg', 'redis', 'httpx', 'prometheus_client', 'sendgrid')"
        " if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"


def test_a_win_back_rule_passes_strict_and_all_mistakes_show_at_once(tmp_path: Path) -> None:
    # "Restart the timer": triggered and cancelled by order_completed, on purpose.
    (tmp_path / "win-back.yaml").write_text(
        "rules:\n"
        "  - id: win-back\n"
        "    on: order_completed\n"
        "    cancel_on: [order_completed]\n"
        "    delay: 30d\n"
        "    send: {template: d-win-back}\n"
    )
    done = _run("--strict", tmp_path)
    assert done.returncode == 0, done.stdout
    (tmp_path / "cart.yaml").write_text(
        "rules:\n"
        "  - id: cart\n"
        "    on: cart_abandoned\n"
        "    when: {properties.cart_value: {gtee: 20}, user.plan: {eqq: free}}\n"
        "    send:\n"
        "      template: d-cart\n"
        '      data: {a: "{{ x | defualt(\'y\') }}", b: "{{ y }"}\n'
    )
    done = _run(tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stdout.splitlines() if ": error: " in line]
    assert [line.split(": error: ")[1].split(" (")[0] for line in lines] == [
        "unknown operator 'gtee', did you mean 'gte'?",
        "unknown operator 'eqq', did you mean 'eq'?",
        "unknown filter 'defualt' in this template",
        "a '{{' is closed by a single '}': write '}}'",
    ]
