"""SendGridProvider against the fake SendGrid: payload, faults, limits, keep-alive, secrecy."""

from __future__ import annotations

import logging
import socket
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fake_sendgrid import FakeSendGrid, Fault, FaultKind
from trigmail.config import ApiKeySource
from trigmail.decisions import Payload
from trigmail.errors import (
    ConfigError,
    DeliveryError,
    InDoubtDeliveryError,
    PermanentDeliveryError,
    RetryableDeliveryError,
)
from trigmail.providers.base import Email
from trigmail.providers.bodies import (
    COMPACT_JSON,
    body_json,
    build_body,
    fits_one_request,
    split_batch,
)
from trigmail.providers.credentials import load_api_key
from trigmail.providers.sendgrid import SendGridProvider
from trigmail.rules.model import Address
from trigmail.secrets import Secret

NOW_S = 1_800_000_000.0
SHOP = Address("hello@example.com", "Example Shop")
PAYLOAD = Payload(
    template="d-cart",
    data={"cart_url": "https://shop.example/c/9", "items": ({"sku": "a"},)},
    categories=("cart-recovery",),
    asm_group=1234,
    reply_to=Address("care@example.com"),
)


def email(n: int = 1, to: str | None = None, payload: Payload = PAYLOAD, key: str = "") -> Email:
    return Email(
        key=key or f"cart-recovery:evt_{n}",
        rule_id="cart-recovery",
        to=to or f"user{n}@example.com",
        payload=payload,
    )


def make_provider(fake: FakeSendGrid, **overrides: object) -> SendGridProvider:
    options: dict[str, object] = {
        "host": fake.url,
        "default_from": SHOP,
        "timeout_s": 0.5,
        "connect_timeout_s": 0.5,
        "clock": lambda: NOW_S,
    }
    options.update(overrides)
    return SendGridProvider(Secret(fake.api_key), **options)  # type: ignore[arg-type]


@pytest.fixture
def provider(sendgrid_fake: FakeSendGrid) -> Iterator[SendGridProvider]:
    sendgrid = make_provider(sendgrid_fake)
    yield sendgrid
    sendgrid.close()


def test_sends_one_personalization_per_email(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    accepted = provider.send([email(1), email(2)])
    [received] = sendgrid_fake.requests
    assert accepted.message_id == received.message_id is not None
    assert received.body == {
        "personalizations": [
            {
                "to": [{"email": f"user{n}@example.com"}],
                "dynamic_template_data": {
                    "cart_url": "https://shop.example/c/9",
                    "items": [{"sku": "a"}],
                },
                "custom_args": {
                    "trigmail_key": f"cart-recovery:evt_{n}",
                    "trigmail_rule": "cart-recovery",
                },
            }
            for n in (1, 2)
        ],
        "from": {"email": "hello@example.com", "name": "Example Shop"},
        "reply_to": {"email": "care@example.com"},
        "template_id": "d-cart",
        "categories": ["cart-recovery"],
        "asm": {"group_id": 1234},
    }
    assert sendgrid_fake.accepted_keys() == ["cart-recovery:evt_1", "cart-recovery:evt_2"]


def test_a_payload_sender_overrides_the_default(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    bare = Payload(template="d-x", data={}, from_=Address("news@example.com"))
    provider.send([email(payload=bare)])
    body = sendgrid_fake.accepted[0]
    assert body["from"] == {"email": "news@example.com"}
    assert {"reply_to", "categories", "asm"}.isdisjoint(body)


@pytest.mark.parametrize(
    ("fault", "expected", "reached"),
    [
        # 429: refused, safe to retry
        (Fault(FaultKind.RATE_LIMIT), RetryableDeliveryError, False),
        # 503: refused, safe to retry
        (Fault(FaultKind.UNAVAILABLE), RetryableDeliveryError, False),
        # 500: may have been processed
        (Fault(FaultKind.SERVER_ERROR), InDoubtDeliveryError, False),
        # no answer within the read timeout, and SendGrid did take it
        (Fault(FaultKind.HANG_AFTER_ACCEPT), InDoubtDeliveryError, True),
        # reset after SendGrid took it
        (Fault(FaultKind.RESET_AFTER_ACCEPT), InDoubtDeliveryError, True),
        # reset before SendGrid read it: the client cannot tell, so still in doubt
        (Fault(FaultKind.RESET_BEFORE_READ), InDoubtDeliveryError, False),
    ],
)
def test_each_fault_maps_to_its_error(
    sendgrid_fake: FakeSendGrid,
    provider: SendGridProvider,
    fault: Fault,
    expected: type[DeliveryError],
    reached: bool,
) -> None:
    sendgrid_fake.inject(fault)
    with pytest.raises(DeliveryError) as caught:
        provider.send([email()])
    assert type(caught.value) is expected
    assert sendgrid_fake.accepted_keys() == (["cart-recovery:evt_1"] if reached else [])
    # The provider is still usable: the next send goes through.
    assert provider.send([email(2)]).message_id


@pytest.mark.parametrize(
    ("fault", "retry_after_s"),
    [
        # SendGrid's own header: the reset time in epoch seconds
        (Fault(FaultKind.RATE_LIMIT, reset_in_s=7), 7.0),
        # a Retry-After on a 503
        (Fault(FaultKind.UNAVAILABLE, retry_after_s=4), 4.0),
    ],
)
def test_refusals_carry_the_retry_hint(fault: Fault, retry_after_s: float) -> None:
    with FakeSendGrid(clock=lambda: NOW_S) as fake:
        fake.inject(fault)
        sendgrid = make_provider(fake)
        try:
            with pytest.raises(RetryableDeliveryError) as caught:
                sendgrid.send([email()])
        finally:
            sendgrid.close()
    assert caught.value.retry_after_s == retry_after_s


def test_bad_request_is_permanent_with_sendgrids_message(provider: SendGridProvider) -> None:
    with pytest.raises(PermanentDeliveryError) as caught:
        provider.send([email(to="bad@")])
    assert "Does not contain a valid address." in caught.value.detail
    assert "personalizations.0.to.0.email" in caught.value.detail


def test_wrong_key_is_permanent(sendgrid_fake: FakeSendGrid) -> None:
    sendgrid = SendGridProvider(Secret("SG.wrong"), host=sendgrid_fake.url, default_from=SHOP)
    try:
        with pytest.raises(PermanentDeliveryError, match="HTTP 401: The provided authorization"):
            sendgrid.send([email()])
    finally:
        sendgrid.close()


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_connection_refused_is_retryable() -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    sendgrid = SendGridProvider(Secret("SG.k"), host=host, default_from=SHOP, timeout_s=0.5)
    try:
        with pytest.raises(RetryableDeliveryError, match="never sent"):
            sendgrid.send([email()])
    finally:
        sendgrid.close()


def test_sends_reuse_one_keep_alive_connection(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    for n in range(5):
        provider.send([email(n)])
    assert len(sendgrid_fake.accepted) == 5
    assert sendgrid_fake.connections == 1


def test_refuses_a_batch_that_was_not_split(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider
) -> None:
    with pytest.raises(ValueError, match="split_batch"):
        provider.send([email(1, to="ana@example.com"), email(2, to="ana@example.com")])
    with pytest.raises(ValueError, match="empty"):
        provider.send([])
    assert sendgrid_fake.requests == []


@pytest.mark.parametrize(
    ("batch", "reason"),
    [
        # eleven categories: no split can fix a message-level attribute
        ([email(payload=Payload("d-x", {}, categories=tuple("abcdefghijk")))], "categories"),
        # a key so long the custom args reach 10,000 bytes
        ([email(key="k" * 10_000)], "custom args"),
    ],
)
def test_rejects_what_no_split_can_fix_without_a_request(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider, batch: list[Email], reason: str
) -> None:
    with pytest.raises(PermanentDeliveryError, match=reason):
        provider.send(batch)
    assert sendgrid_fake.requests == []


OTHER = Payload(template="d-other", data={})


@pytest.mark.parametrize(
    ("batch", "sizes"),
    [
        # within every limit: one request
        ([email(n) for n in range(3)], [3]),
        # 2,500 emails: at most 1,000 personalizations (and recipients) per request
        ([email(n) for n in range(2500)], [1000, 1000, 500]),
        # the same address three times: one per request, others fill the first
        (
            [email(1, "a@x.io"), email(2, "A@x.io"), email(3, "b@x.io"), email(4, "a@x.io")],
            [2, 1, 1],
        ),
        # different templates cannot share a request
        ([email(1), email(2, payload=OTHER), email(3)], [2, 1]),
        # custom args too big go alone, so only that email fails
        ([email(1), email(2, key="k" * 10_000), email(3)], [2, 1]),
        # nothing to split
        ([], []),
    ],
)
def test_split_batch_keeps_every_limit(batch: list[Email], sizes: list[int]) -> None:
    requests = split_batch(batch)
    assert [len(r) for r in requests] == sizes
    assert sorted(e.key for r in requests for e in r) == sorted(e.key for e in batch)
    for request in requests:
        assert len({e.to.lower() for e in request}) == len(request)
        assert split_batch(request) == [request]
        assert fits_one_request(request)


ODD = Payload(
    template="d-\u00e9t\u00e9",
    data={
        "name": 'Zo\u00eb "Z" \\ \u2028 \U0001f600',
        "n": 2.5,
        "big": 10**20,
        "no": None,
        "items": ({"sku": "a", "tags": ("x", "y")},),
        "flag": True,
    },
    from_=Address("caf\u00e9@example.com", 'Caf\u00e9 "Le Bon"'),
    variant="b-\u00e9",
)


@pytest.mark.parametrize(
    "batch",
    [
        [email(1)],
        [email(n) for n in range(3)],
        [email(1, to="z\u00f6e@example.com", payload=ODD, key="k:\u00e9\n\x00")],
        [email(1, payload=Payload(template="d-x", data={}))],
    ],
)
@pytest.mark.parametrize("settings", [None, {"mail_settings": {"sandbox_mode": {"enable": True}}}])
def test_body_json_is_the_encoded_body(
    batch: list[Email], settings: dict[str, object] | None
) -> None:
    # The request's bytes are written as text: exactly what encoding build_body wrote.
    body = build_body(batch, SHOP) | (settings or {})
    assert body_json(batch, SHOP, settings) == COMPACT_JSON.encode(body).encode()


@pytest.mark.parametrize(
    "batch",
    [
        [email(n) for n in range(3)],
        [email(n) for n in range(1000)],
        [email(n) for n in range(1001)],
        [email(1, "a@x.io"), email(2, "A@x.io")],
        [email(1), email(2, payload=OTHER)],
        [email(1), email(2, key="k" * 10_000)],
        [email(2, key="k" * 10_000)],
        [email(2, key="k" * 10_000), email(3, key="j" * 10_000)],
        [],
    ],
)
def test_fits_one_request_is_what_split_batch_leaves_whole(batch: list[Email]) -> None:
    # What the provider checks of each batch it is handed, without splitting it again.
    assert fits_one_request(batch) == (len(split_batch(batch)) == 1)


def test_the_api_key_never_shows(
    sendgrid_fake: FakeSendGrid, provider: SendGridProvider, caplog: pytest.LogCaptureFixture
) -> None:
    key = sendgrid_fake.api_key
    sendgrid_fake.inject(*[Fault(kind) for kind in FaultKind])
    texts = [repr(provider), str(provider)]
    with caplog.at_level(logging.DEBUG):
        for n in range(len(FaultKind) + 1):
            try:
                provider.send([email(n, to="bad@" if n == len(FaultKind) else None)])
            except DeliveryError as exc:
                texts.append("".join(traceback.format_exception(exc)))
                texts.append(repr(exc))
    refused = SendGridProvider(
        Secret(key), host=f"http://127.0.0.1:{closed_port()}", default_from=SHOP
    )
    try:
        refused.send([email()])
    except DeliveryError as exc:
        texts.append("".join(traceback.format_exception(exc)))
    finally:
        refused.close()
    assert len(texts) == 2 + 2 * (len(FaultKind) + 1) + 1  # every send failed and was formatted
    assert all(key not in text for text in [*texts, caplog.text])
    assert "sendgrid" in caplog.text  # the debug log was captured, and is clean
    assert repr(provider) == f"SendGridProvider(host={sendgrid_fake.url!r})"


@pytest.mark.parametrize(
    ("setup", "expected"),
    [
        # an environment variable
        ({"env": "SG.from-env"}, "SG.from-env"),
        # a file, trailing newline stripped
        ({"file": "SG.from-file\n"}, "SG.from-file"),
        # a systemd credential
        ({"credential": "SG.from-credential\n"}, "SG.from-credential"),
        # the credential wins over the file, the file over the environment
        ({"env": "SG.e", "file": "SG.f\n", "credential": "SG.c\n"}, "SG.c"),
        ({"env": "SG.e", "file": "SG.f\n"}, "SG.f"),
        # nothing set: no key (the caller falls back to the outbox)
        ({}, None),
    ],
)
def test_load_api_key(tmp_path: Path, setup: dict[str, str], expected: str | None) -> None:
    environ = {"SENDGRID_API_KEY": setup["env"]} if "env" in setup else {}
    key_file = None
    if "file" in setup:
        key_file = tmp_path / "api_key"
        key_file.write_text(setup["file"])
    if "credential" in setup:
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "sendgrid").write_text(setup["credential"])
        environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
    source = ApiKeySource("SENDGRID_API_KEY", key_file, "sendgrid")
    key = load_api_key(source, environ)
    assert (None if key is None else key.reveal()) == expected


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),  # a named file that does not exist
        ("\n", "is empty"),  # an empty file
        (b"\xff\xfeSG", "not UTF-8"),  # not text
    ],
)
def test_load_api_key_from_a_bad_file(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "api_key"
    if isinstance(content, str):
        path.write_text(content)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message):
        load_api_key(ApiKeySource(env="", file=path, credential=""), {})
