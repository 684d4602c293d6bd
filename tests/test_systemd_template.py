"""The templated unit ``trigmail@.service``, checked by systemd-analyze itself.

systemd-analyze instantiates a template it is given as ``trigmail@i.service``; both checks
follow tests/test_systemd.py, which does the same for ``trigmail.service``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

TEMPLATE = Path(__file__).resolve().parent.parent / "trigmail@.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)
MAX_EXPOSURE = 1.5
EXEC_START = "ExecStart=/usr/bin/trigmail serve --config /etc/trigmail/%i.yaml"


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, check=False, timeout=60
    )


def directives(text: str) -> dict[str, list[str]]:
    """Every ``Name=value`` of a unit file, values in order (comments and sections skipped)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_each_instance_reads_the_config_named_after_it() -> None:
    # The instance name is the worker's name: its config sets the Redis consumer to it.
    assert EXEC_START in TEMPLATE.read_text().splitlines()


def test_hardening_matches_the_single_unit() -> None:
    # Every sandboxing line of trigmail.service is in the template too, with the same value;
    # only the unit's identity, its config path and the spool and its dead letters (a spool
    # has one reader only) may differ.
    single = directives((TEMPLATE.parent / "trigmail.service").read_text())
    template = directives(TEMPLATE.read_text())
    allowed = {
        "Description",
        "Documentation",
        "ExecStartPre",
        "ExecStart",
        "ReadWritePaths",
        "Environment",
    }
    differing = {
        name for name in single.keys() | template.keys() if single.get(name) != template.get(name)
    }
    assert differing <= allowed, differing - allowed
    assert "ReadWritePaths" not in template
    assert "Environment" not in template


@needs_systemd_analyze
def test_template_exposure_is_at_most_one_and_a_half() -> None:
    result = run_analyze("security", "--offline=true", "--no-pager", str(TEMPLATE))
    match = re.search(r"Overall exposure level for trigmail@i\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_systemd_analyze
def test_template_verifies_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= and ExecStartPre= name an existing executable, and
    # /usr/bin/trigmail is only there once the package is installed. Verify a copy that
    # differs in that path alone (pointing at the real systemd-analyze), so every other line
    # is still checked.
    assert SYSTEMD_ANALYZE is not None
    text = TEMPLATE.read_text()
    assert "ExecStart=/usr/bin/trigmail serve " in text
    copy = tmp_path / TEMPLATE.name
    copy.write_text(
        re.sub(r"(ExecStart(?:Pre)?)=/usr/bin/trigmail ", rf"\1={SYSTEMD_ANALYZE} ", text)
    )
    result = run_analyze("verify", str(copy))
    assert (result.returncode, result.stderr) == (0, "")


@needs_systemd_analyze
def test_an_instance_verifies_clean(tmp_path: Path) -> None:
    # What `systemctl enable --now trigmail@worker1` loads: the template under an instance name.
    assert SYSTEMD_ANALYZE is not None
    text = re.sub(
        r"(ExecStart(?:Pre)?)=/usr/bin/trigmail ", rf"\1={SYSTEMD_ANALYZE} ", TEMPLATE.read_text()
    )
    (tmp_path / TEMPLATE.name).write_text(text)
    result = run_analyze("verify", str(tmp_path / "trigmail@worker1.service"))
    assert (result.returncode, result.stderr) == (0, "")
