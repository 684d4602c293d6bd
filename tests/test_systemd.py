"""sd_notify over a real datagram socket, and the unit file checked by systemd-analyze itself."""

from __future__ import annotations

import logging
import re
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from trigmail.systemd import Notifier, watchdog_interval_s

UNIT = Path(__file__).resolve().parent.parent / "trigmail.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed on this machine"
)
MAX_EXPOSURE = 1.5


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    """A bound datagram socket standing in for systemd, named by ``$NOTIFY_SOCKET``."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        yield sock


def received(sock: socket.socket) -> str:
    # Non-blocking: the sender returned, so a datagram it sent is already queued.
    return sock.recv(4096, socket.MSG_DONTWAIT).decode()


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("ready", "READY=1"),
        ("stopping", "STOPPING=1"),
        ("watchdog", "WATCHDOG=1"),
    ],
)
def test_each_message_arrives_as_one_datagram(
    notify_socket: socket.socket, method: str, expected: str
) -> None:
    assert getattr(Notifier.from_env(), method)() is True
    assert received(notify_socket) == expected


def test_reloading_carries_the_monotonic_time_in_microseconds(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        notifier = Notifier(str(path), monotonic_ns=lambda: 1_234_567_890)
        assert notifier.reloading() is True
        assert received(sock) == "RELOADING=1\nMONOTONIC_USEC=1234567"


def test_status_is_kept_on_one_line(notify_socket: socket.socket) -> None:
    Notifier.from_env().status("draining\n3 sends in flight")
    assert received(notify_socket) == "STATUS=draining 3 sends in flight"


def test_abstract_namespace_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"trigmail-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert Notifier.from_env().ready() is True
        assert received(sock) == "READY=1"


def test_without_notify_socket_every_call_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier.from_env()
    assert notifier.enabled is False
    assert [notifier.ready(), notifier.watchdog(), notifier.status("x")] == [False] * 3


def test_a_vanished_socket_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(str(tmp_path / "gone.sock"))
    with caplog.at_level(logging.WARNING, logger="trigmail.systemd"):
        assert notifier.watchdog() is False
    assert "notify WATCHDOG=1: cannot send" in caplog.text


def test_an_unsupported_address_disables_notifications(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trigmail.systemd"):
        notifier = Notifier("vsock:2:1234")
    assert notifier.enabled is False
    assert "unsupported address" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected_s"),
    [
        ({}, None),  # no watchdog configured
        ({"WATCHDOG_USEC": "30000000"}, 15.0),  # no WATCHDOG_PID: ours
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),  # our pid
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # inherited from a parent
        ({"WATCHDOG_USEC": "0"}, None),  # zero is not a timeout
        ({"WATCHDOG_USEC": "soon"}, None),  # garbage is ignored
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], expected_s: float | None
) -> None:
    assert watchdog_interval_s(environ, pid=4242) == expected_s


def test_watchdog_interval_reads_the_process_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "2000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert watchdog_interval_s() == 1.0


def run_analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE is not None
    return subprocess.run(
        [SYSTEMD_ANALYZE, *args], capture_output=True, text=True, check=False, timeout=60
    )


@needs_systemd_analyze
def test_unit_exposure_is_at_most_one_and_a_half() -> None:
    result = run_analyze("security", "--offline=true", "--no-pager", str(UNIT))
    match = re.search(r"Overall exposure level for trigmail\.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, result.stdout


@needs_systemd_analyze
def test_unit_verifies_clean(tmp_path: Path) -> None:
    # verify checks that ExecStart= names an existing executable, and /usr/bin/trigmail is
    # only there once the package is installed. Verify a copy that differs in that path
    # alone (pointing at the real systemd-analyze), so every other line is still checked.
    assert SYSTEMD_ANALYZE is not None
    text = UNIT.read_text()
    assert "ExecStart=/usr/bin/trigmail serve " in text
    copy = tmp_path / "trigmail.service"
    copy.write_text(
        re.sub(r"(ExecStart(?:Pre)?)=/usr/bin/trigmail ", rf"\1={SYSTEMD_ANALYZE} ", text)
    )
    result = run_analyze("verify", str(copy))
    assert (result.returncode, result.stderr) == (0, "")


def unit_directives() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", ";", "[")):
            name, _, value = line.partition("=")
            found.setdefault(name, []).append(value)
    return found


def test_resources_are_bounded() -> None:
    # A runaway is throttled, then killed and restarted, instead of taking the host down:
    # memory above the 1,000,000-pending figure (130 MiB), a task cap, one core.
    found = unit_directives()
    assert found["MemoryHigh"] == ["768M"]
    assert found["MemoryMax"] == ["1G"]
    assert found["TasksMax"] == ["64"]
    assert found["CPUQuota"] == ["100%"]


def test_dead_letters_are_kept_in_the_state_directory() -> None:
    # Producers write the spool's directory; the raw events set aside must be out of reach.
    found = unit_directives()
    assert found["StateDirectory"] == ["trigmail"]
    assert found["Environment"] == ["TRIGMAIL_DEAD_LETTERS=/var/lib/trigmail/events.dead.jsonl"]
