"""`trigmail check` end to end, and `serve` refusing the same config before any side effect."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cli_runner import cli
from tests.fake_sendgrid import TEST_API_KEY, FakeSendGrid
from tests.serve_harness import SERVE_RULES, clean_env, write_config

ROOT = Path(__file__).parent.parent
TRIGMAIL = Path(sys.executable).with_name("trigmail")

# Four problems an operator once found in four runs, each now at its line and column.
BAD_CONFIG = """\
source: {spool: SPOOL}
retention: '90 days'
metrics:
  listen: '9464'
from: {email: not-an-email}
provider:
  sendgrid: {api_key_env: NO_SUCH_KEY_VAR}
ledger: LEDGER
rules_dir: RULES
"""


def _run(
    cwd: Path, *args: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return cli(*args, cwd=cwd, env=clean_env({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})}))


def _bad_config(tmp_path: Path) -> Path:
    text = (
        BAD_CONFIG.replace("SPOOL", str(tmp_path / "no-such-dir" / "events.jsonl"))
        .replace("LEDGER", str(tmp_path / "state" / "ledger.db"))
        .replace("RULES", str(SERVE_RULES))
    )
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_check_reports_every_problem_with_its_position(tmp_path: Path) -> None:
    config = _bad_config(tmp_path)
    result = _run(tmp_path, "check", "--config", config, "--format", "json")
    assert result.returncode == 1, result.stderr
    found = {(p["path"], p["line"], p["col"]) for p in json.loads(result.stdout)["problems"]}
    assert found == {
        ("source.spool", 1, 17),
        ("retention", 2, 12),
        ("metrics.listen", 4, 11),
        ("from.email", 5, 15),
        ("provider.sendgrid", 7, 13),
    }
    # No side effect: nothing created.
    assert not (tmp_path / "state").exists()


def test_check_table_names_file_line_col_and_key(tmp_path: Path) -> None:
    config = _bad_config(tmp_path)
    result = _run(tmp_path, "check", "--config", config)
    assert result.returncode == 1
    assert f"{config}:2:12: error: retention: '90 days' is not a duration" in result.stdout
    assert result.stdout.rstrip().endswith("5 errors, 0 warnings")


def test_serve_refuses_the_same_config_before_creating_anything(tmp_path: Path) -> None:
    config = _bad_config(tmp_path)
    result = _run(tmp_path, "serve", "--config", config)
    assert result.returncode == 1
    assert "metrics.listen: expected HOST:PORT" in result.stderr
    assert "retention: '90 days' is not a duration" in result.stderr
    assert "error: 5 problems" in result.stderr
    assert not (tmp_path / "state").exists()


def test_keys_named_by_the_config_are_read_by_check_and_serve(tmp_path: Path) -> None:
    # Building the config reads no key; check and serve read each before starting anything.
    missing = tmp_path / "nowhere"
    config = tmp_path / "keys.yaml"
    text = (
        f"webhook: {{listen: '127.0.0.1:0', public_key_file: {missing}}}\n"
        f"rules_dir: {SERVE_RULES}\nledger: {tmp_path / 'state' / 'ledger.db'}\n"
    )
    config.write_text(text, encoding="utf-8")
    result = _run(tmp_path, "check", "--config", config, "--format", "json")
    assert result.returncode == 1, result.stderr
    [problem] = json.loads(result.stdout)["problems"]
    at_value = text.index(str(missing)) + 1
    assert (problem["path"], problem["line"], problem["col"]) == (
        "webhook.public_key_file",
        1,
        at_value,
    )
    assert "cannot read" in problem["message"]
    result = _run(tmp_path, "serve", "--config", config)
    assert result.returncode == 1
    assert "webhook.public_key_file: cannot read" in result.stderr
    assert not (tmp_path / "state").exists()


def test_a_flag_is_named_as_the_origin_of_its_value(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    result = _run(tmp_path, "serve", "--metrics-listen", "9464")
    assert result.returncode == 1
    assert "--metrics-listen: error: metrics.listen: expected HOST:PORT" in result.stderr
    assert not (tmp_path / "trigmail.db").exists()


def test_rule_problems_are_reported_with_their_positions(tmp_path: Path) -> None:
    rules = tmp_path / "rules.d"
    rules.mkdir()
    (rules / "bad.yaml").write_text("rules:\n  - id: x\n    when: 3\n", encoding="utf-8")
    result = _run(tmp_path, "check")
    assert result.returncode == 1
    assert f"{rules / 'bad.yaml'}:" in result.stdout or "rules.d/bad.yaml:" in result.stdout
    assert not (tmp_path / "trigmail.db").exists()


def test_a_good_config_checks_clean_and_connects(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    config = write_config(
        tmp_path / "ok.yaml",
        fake_url=sendgrid_fake.url,
        source={"spool": str(tmp_path / "events.jsonl")},
        rules_dir=SERVE_RULES,
        ledger=tmp_path / "ledger.db",
    )
    env = {"SENDGRID_API_KEY": TEST_API_KEY}
    result = _run(tmp_path, "check", "--config", config, "--connect", "--format", "json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(result.stdout)
    assert document["ok"] is True
    assert [c["ok"] for c in document["connections"]] == [True, True]
    assert "serve creates it" in document["connections"][0]["detail"]
    assert not (tmp_path / "ledger.db").exists()
    assert sendgrid_fake.accepted == []


def test_connect_says_when_sendgrid_refuses_the_key(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    config = write_config(
        tmp_path / "ok.yaml",
        fake_url=sendgrid_fake.url,
        source={"spool": str(tmp_path / "events.jsonl")},
        rules_dir=SERVE_RULES,
        ledger=tmp_path / "ledger.db",
    )
    env = {"SENDGRID_API_KEY": "SG.wrong-key"}
    result = _run(tmp_path, "check", "--config", config, "--connect", env=env)
    assert result.returncode == 1
    assert "the API key is refused (HTTP 401)" in result.stdout
    assert "SG.wrong-key" not in result.stdout + result.stderr


def test_connect_reaches_redis_and_postgres(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str, postgres_dsn: str
) -> None:
    config = write_config(
        tmp_path / "ok.yaml",
        fake_url=sendgrid_fake.url,
        source={"redis": {"url": redis_url, "stream": "check:events"}},
        rules_dir=SERVE_RULES,
        ledger=tmp_path / "unused.db",
    )
    env = {"SENDGRID_API_KEY": TEST_API_KEY, "TRIGMAIL_LEDGER": postgres_dsn}
    result = _run(tmp_path, "check", "--config", config, "--connect", "--format", "json", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    details = [c["detail"] for c in json.loads(result.stdout)["connections"]]
    assert details[0].startswith("PostgreSQL reachable")
    assert details[1].startswith("reachable; stream 'check:events'")


@pytest.mark.parametrize("unit", ["trigmail.service", "trigmail@.service"])
def test_the_systemd_units_check_before_they_start(unit: str) -> None:
    lines = (ROOT / unit).read_text(encoding="utf-8").splitlines()
    pre = next(line for line in lines if line.startswith("ExecStartPre="))
    start = next(line for line in lines if line.startswith("ExecStart="))
    assert pre.removeprefix("ExecStartPre=") == start.removeprefix("ExecStart=").replace(
        " serve ", " check "
    )


def test_a_structure_problem_does_not_hide_a_bad_value(tmp_path: Path) -> None:
    (tmp_path / "rules.d").mkdir()
    config = tmp_path / "c.yaml"
    config.write_text("retention: '90 days'\nno_such_key: 1\nmetrics: {listen: [1]}\n")
    result = _run(tmp_path, "check", "--config", config, "--format", "json")
    assert result.returncode == 1
    found = [(p["line"], p["path"]) for p in json.loads(result.stdout)["problems"]]
    # The bad duration, the unknown key, and the listen of the wrong type (once).
    assert found == [(1, "retention"), (2, "no_such_key"), (3, "metrics.listen")]
