"""The fake SendGrid itself: validation like SendGrid's, faults, keep-alive, clean stop."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fake_sendgrid import (
    SEND_PATH,
    FakeSendGrid,
    Fault,
    FaultKind,
    FaultRates,
)

NOW_S = 1_800_000_000.0


def body(**overrides: Any) -> dict[str, Any]:
    """A valid send body with one personalization; ``overrides`` replace top-level fields."""
    document: dict[str, Any] = {
        "personalizations": [
            {
                "to": [{"email": "ana@example.com"}],
                "dynamic_template_data": {"first_name": "Ana"},
                "custom_args": {"trigmail_key": "cart:u1", "trigmail_rule": "cart"},
            }
        ],
        "from": {"email": "hello@example.com", "name": "Shop"},
        "template_id": "d-123",
    }
    document.update(overrides)
    return {k: v for k, v in document.items() if v is not None}


def to(*addresses: str, key: str = "k") -> list[dict[str, Any]]:
    """Personalizations, one per address."""
    return [{"to": [{"email": a}], "custom_args": {"trigmail_key": key}} for a in addresses]


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait for a condition another thread makes true (never a fixed sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.005)


@pytest.fixture
def client(sendgrid_fake: FakeSendGrid) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {sendgrid_fake.api_key}"}
    with httpx.Client(base_url=sendgrid_fake.url, headers=headers, timeout=0.5) as http:
        yield http


def test_accepts_a_valid_request_with_a_unique_message_id(
    sendgrid_fake: FakeSendGrid, client: httpx.Client
) -> None:
    first = client.post(SEND_PATH, json=body())
    second = client.post(SEND_PATH, json=body())
    assert (first.status_code, second.status_code) == (202, 202)
    assert first.headers["X-Message-Id"] != second.headers["X-Message-Id"]
    assert sendgrid_fake.accepted == [body(), body()]
    assert sendgrid_fake.accepted_keys() == ["cart:u1", "cart:u1"]
    assert [r.message_id for r in sendgrid_fake.requests] == [
        first.headers["X-Message-Id"],
        second.headers["X-Message-Id"],
    ]


@pytest.mark.parametrize(
    "authorization",
    [
        None,  # no Authorization header at all
        "Bearer SG.wrong",  # a key that is not the fake's
        "Basic dXNlcjpwYXNz",  # not a bearer token
    ],
)
def test_refuses_a_missing_or_wrong_key_with_401(
    sendgrid_fake: FakeSendGrid, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    with httpx.Client(base_url=sendgrid_fake.url, headers=headers) as http:
        response = http.post(SEND_PATH, json=body())
    assert response.status_code == 401
    [error] = response.json()["errors"]
    assert set(error) == {"message", "field", "help"}
    assert error["message"]
    assert sendgrid_fake.accepted == []


@pytest.mark.parametrize(
    ("document", "field"),
    [
        # no sender
        (body(**{"from": None}), "from"),
        # neither a template nor content
        (body(template_id=None), "content"),
        # no personalizations
        (body(personalizations=None), "personalizations"),
        # a personalization without a recipient
        (body(personalizations=[{"custom_args": {}}]), "personalizations.0.to"),
        # more than 1,000 personalizations
        (
            body(personalizations=to(*[f"u{i}@example.com" for i in range(1001)])),
            "personalizations",
        ),
        # the same address twice in one request, whatever its case
        (body(personalizations=to("ana@example.com", "Ana@Example.com")), "personalizations.1.to"),
        # eleven categories
        (body(categories=[f"c{i}" for i in range(11)]), "categories"),
        # custom args of 10,000 bytes or more
        (body(personalizations=to("ana@example.com", key="k" * 10_000)), "personalizations.0"),
        # an address with no domain
        (body(personalizations=to("bad@")), "personalizations.0.to.0.email"),
    ],
)
def test_rejects_a_bad_payload_with_400_naming_the_field(
    sendgrid_fake: FakeSendGrid, client: httpx.Client, document: dict[str, Any], field: str
) -> None:
    response = client.post(SEND_PATH, json=document)
    assert response.status_code == 400
    assert field in [error["field"] for error in response.json()["errors"]]
    assert sendgrid_fake.accepted == []
    assert sendgrid_fake.requests[0].status == 400


def test_rejects_a_body_over_the_size_limit_with_413() -> None:
    with (
        FakeSendGrid(max_body_bytes=2_000) as fake,
        httpx.Client(headers={"Authorization": f"Bearer {fake.api_key}"}) as http,
    ):
        big = body(personalizations=to(*[f"u{i}@example.com" for i in range(100)]))
        response = http.post(fake.url + SEND_PATH, json=big)
        small = http.post(fake.url + SEND_PATH, json=body())
    assert response.status_code == 413
    # The oversized body was drained: the same connection still serves the next request.
    assert small.status_code == 202
    assert fake.connections == 1


@pytest.mark.parametrize(
    ("fault", "status", "headers"),
    [
        # rate limited: the reset time is the fake's clock plus reset_in_s
        (
            Fault(FaultKind.RATE_LIMIT, reset_in_s=7),
            429,
            {
                "X-RateLimit-Limit": "600",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": "1800000007",
            },
        ),
        # a plain server error
        (Fault(FaultKind.SERVER_ERROR), 500, {}),
        # unavailable, with a Retry-After hint
        (Fault(FaultKind.UNAVAILABLE, retry_after_s=3), 503, {"Retry-After": "3"}),
    ],
)
def test_status_faults_answer_without_accepting(
    fault: Fault, status: int, headers: dict[str, str]
) -> None:
    with (
        FakeSendGrid(clock=lambda: NOW_S) as fake,
        httpx.Client(headers={"Authorization": f"Bearer {fake.api_key}"}) as http,
    ):
        fake.inject(fault)
        faulty = http.post(fake.url + SEND_PATH, json=body())
        after = http.post(fake.url + SEND_PATH, json=body())
    assert faulty.status_code == status
    assert {name: faulty.headers.get(name) for name in headers} == headers
    assert after.status_code == 202  # a fault applies to one request only
    assert [r.accepted for r in fake.requests] == [False, True]
    assert fake.requests[0].fault is fault.kind


@pytest.mark.parametrize(
    ("kind", "accepted"),
    [
        # RST before the body is read: SendGrid never saw it
        (FaultKind.RESET_BEFORE_READ, False),
        # RST after the request was taken: the email goes out, the client never hears
        (FaultKind.RESET_AFTER_ACCEPT, True),
        # no answer at all: the client times out, the email goes out
        (FaultKind.HANG_AFTER_ACCEPT, True),
    ],
)
def test_connection_faults_leave_the_client_without_an_answer(
    sendgrid_fake: FakeSendGrid, client: httpx.Client, kind: FaultKind, accepted: bool
) -> None:
    sendgrid_fake.inject(Fault(kind))
    with pytest.raises(httpx.TransportError):
        client.post(SEND_PATH, json=body())
    [received] = sendgrid_fake.requests
    assert (received.accepted, received.status, received.fault) == (accepted, None, kind)
    assert sendgrid_fake.accepted_keys() == (["cart:u1"] if accepted else [])


def test_a_hung_request_is_answered_once_released(
    sendgrid_fake: FakeSendGrid,
) -> None:
    sendgrid_fake.inject(Fault(FaultKind.HANG_AFTER_ACCEPT))
    responses: list[httpx.Response] = []
    headers = {"Authorization": f"Bearer {sendgrid_fake.api_key}"}

    def post() -> None:
        with httpx.Client(headers=headers, timeout=10) as http:
            responses.append(http.post(sendgrid_fake.url + SEND_PATH, json=body()))

    sender = threading.Thread(target=post)
    sender.start()
    wait_until(lambda: len(sendgrid_fake.requests) == 1)
    assert responses == []  # accepted, and still no answer
    sendgrid_fake.release.set()
    sender.join()
    assert responses[0].status_code == 202


def test_stop_ends_hung_and_idle_connections() -> None:
    fake = FakeSendGrid()
    fake.start()
    headers = {"Authorization": f"Bearer {fake.api_key}"}
    with httpx.Client(headers=headers, timeout=0.5) as idle, httpx.Client(headers=headers) as hung:
        assert idle.post(fake.url + SEND_PATH, json=body()).status_code == 202
        fake.inject(Fault(FaultKind.HANG_AFTER_ACCEPT))
        failures: list[Exception] = []

        def post() -> None:
            try:
                hung.post(fake.url + SEND_PATH, json=body())
            except httpx.TransportError as exc:
                failures.append(exc)

        sender = threading.Thread(target=post)
        sender.start()
        wait_until(lambda: len(fake.requests) == 2)
        fake.stop()  # returns although one connection is idle and one hung
        sender.join()
    assert len(failures) == 1


def test_keep_alive_requests_share_one_connection(
    sendgrid_fake: FakeSendGrid, client: httpx.Client
) -> None:
    for _ in range(3):
        assert client.post(SEND_PATH, json=body()).status_code == 202
    assert sendgrid_fake.connections == 1
    assert {r.connection for r in sendgrid_fake.requests} == {1}


def test_random_faults_repeat_for_the_same_seed() -> None:
    rates = FaultRates(rate_limit=0.2, server_error=0.1, reset_after_accept=0.1)

    def draws(seed: int) -> list[Fault | None]:
        rng = random.Random(seed)
        return [rates.draw(rng) for _ in range(200)]

    first, again = draws(7), draws(7)
    kinds = {fault.kind for fault in first if fault is not None}
    assert first == again
    assert kinds == {FaultKind.RATE_LIMIT, FaultKind.SERVER_ERROR, FaultKind.RESET_AFTER_ACCEPT}
    assert None in first


def test_a_rate_of_one_faults_every_request() -> None:
    with (
        FakeSendGrid(rates=FaultRates(unavailable=1.0), seed=3) as fake,
        httpx.Client(headers={"Authorization": f"Bearer {fake.api_key}"}) as http,
    ):
        statuses = [http.post(fake.url + SEND_PATH, json=body()).status_code for _ in range(3)]
    assert statuses == [503, 503, 503]


def test_runs_standalone_until_sigterm() -> None:
    root = Path(__file__).resolve().parent.parent
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.fake_sendgrid", "--port", "0", "--latency-ms", "1"],
        cwd=root,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        url, key = line.split()[3], line.split()[-1].rstrip(")")
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}) as http:
            response = http.post(url + SEND_PATH, json=body())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()
    assert response.status_code == 202


def test_an_answer_its_client_no_longer_waits_for_is_recorded_late() -> None:
    # The client gives up long before the fake, slowed as by a loaded machine, answers: the
    # request is accepted, and its answer never reaches the client.
    with FakeSendGrid(rates=FaultRates(latency_s=0.3)) as fake:
        headers = {"Authorization": f"Bearer {fake.api_key}"}
        with (
            httpx.Client(base_url=fake.url, headers=headers, timeout=0.03) as http,
            pytest.raises(httpx.ReadTimeout),
        ):
            http.post(SEND_PATH, json=body())
        wait_until(lambda: len(fake.requests) == 1)
        with httpx.Client(base_url=fake.url, headers=headers, timeout=5) as http:
            assert http.post(SEND_PATH, json=body()).status_code == 202
        assert [(r.accepted, r.late) for r in fake.requests] == [(True, True), (True, False)]
