"""OutboxProvider: one atomic JSON file per email, safe names, unwritable directory retryable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trigmail.decisions import Payload
from trigmail.errors import RetryableDeliveryError
from trigmail.providers.base import Email
from trigmail.providers.bodies import build_body
from trigmail.providers.outbox import OutboxProvider, key_filename
from trigmail.rules.model import Address

SHOP = Address("hello@example.com", "Example Shop")
PAYLOAD = Payload(template="d-cart", data={"first_name": "Ana"}, categories=("cart",))


def email(key: str, to: str = "ana@example.com", payload: Payload = PAYLOAD) -> Email:
    return Email(key=key, rule_id="cart-recovery", to=to, payload=payload)


def test_writes_one_file_per_email_with_the_sendgrid_body(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path / "outbox", SHOP)
    batch = [email("cart:u1:2026-11-27"), email("cart:u2:2026-11-27", to="bo@example.com")]
    accepted = outbox.send(batch)
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == sorted(key_filename(e.key) for e in batch)
    for sent in batch:
        document = json.loads((tmp_path / "outbox" / key_filename(sent.key)).read_text())
        assert document == {"key": sent.key, "request": build_body([sent], SHOP)}
        assert document["request"]["personalizations"][0]["custom_args"]["trigmail_key"] == sent.key
    assert accepted.message_id is not None
    assert accepted.message_id.startswith("outbox-")


def test_the_same_key_twice_is_still_one_file(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path, SHOP)
    outbox.send([email("k:1")])
    outbox.send([email("k:1", payload=Payload(template="d-new", data={}))])
    [only] = list(tmp_path.iterdir())
    assert json.loads(only.read_text())["request"]["template_id"] == "d-new"


def test_a_failed_write_leaves_no_partial_file(tmp_path: Path) -> None:
    outbox = OutboxProvider(tmp_path, SHOP)
    unserialisable = Payload(template="d-x", data={"when": object()})
    with pytest.raises(TypeError):
        outbox.send([email("k:1", payload=unserialisable)])
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_directory_is_retryable(tmp_path: Path) -> None:
    # A regular file where the directory should be: unwritable even for root.
    blocker = tmp_path / "outbox"
    blocker.write_text("not a directory")
    outbox = OutboxProvider(blocker / "sub", SHOP)
    with pytest.raises(RetryableDeliveryError, match="not writable"):
        outbox.send([email("k:1")])


@pytest.mark.parametrize(
    ("key", "slug"),
    [
        # separators become underscores, the rest stays readable
        ("cart-recovery:u_123:2026-11-27", "cart-recovery_u_123_2026-11-27"),
        # slashes and dots cannot climb out of the directory
        ("../../etc/passwd", "etc_passwd"),
        # nothing safe at all
        (":::", "email"),
        # a very long key is cut
        ("x" * 500, "x" * 80),
    ],
)
def test_key_filename_is_safe_and_readable(key: str, slug: str) -> None:
    name = key_filename(key)
    assert name.startswith(slug + "-")
    assert name.endswith(".json")
    assert "/" not in name
    assert ":" not in name
    assert not name.startswith(".")


def test_keys_that_slug_alike_get_different_files() -> None:
    assert key_filename("a:b") != key_filename("a/b")
    assert key_filename("x" * 500) != key_filename("x" * 501)
