"""End to end through the real ``trigmail serve``: A/B variants reach SendGrid with their
template and ``custom_args``; a step's ``cancel_on`` read from Redis stops that step only;
a number written as text (Redis flat fields) decides as the number does on the spool."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.typing import EncodableT, FieldT

from tests.fake_sendgrid import FakeSendGrid, sendgrid_fake
from tests.serve_harness import (
    Serve,
    append_events,
    clean_env,
    decisions,
    sends,
    wait_for,
    write_config,
)
from trigmail.ledger.base import SendRecord, SendState

__all__ = ["sendgrid_fake"]  # the fixture

pytestmark = [pytest.mark.slow]

RULES = """
rules:
  - id: promo
    on: price_dropped
    when: {properties.discount: {gte: 10}}
    send:
      data: {product: "{{ properties.product }}"}
      variants:
        - {id: plain, weight: 50, template: d-plain}
        - {id: urgent, weight: 50, template: d-urgent, data: {headline: "Only today"}}
  - id: onboarding
    on: trial_started
    cancel_on: [account_deleted]
    steps:
      - {delay: 0, send: {template: d-day0}}
      - {delay: 3d, cancel_on: [activated], send: {template: d-day3}}
      - {delay: 7d, send: {template: d-day7}}
"""


def now_ts() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def price_drop(user: str, discount: Any) -> dict[str, Any]:
    return {
        "id": f"drop-{user}",
        "event": "price_dropped",
        "user_id": user,
        "email": f"{user}@example.com",
        "properties": {"product": "Boots", "discount": discount},
    }


def serve_on(root: Path, fake: FakeSendGrid, source: Mapping[str, Any]) -> Serve:
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "rules.yaml").write_text(RULES, encoding="utf-8")
    config = write_config(
        root / "config.yaml",
        fake_url=fake.url,
        source=source,
        rules_dir=rules,
        ledger=root / "ledger.db",
    )
    args = ["--config", str(config), "--metrics-listen", "127.0.0.1:0"]
    return Serve(root, args, clean_env({"SENDGRID_API_KEY": fake.api_key}))


def personalizations(fake: FakeSendGrid) -> list[tuple[str, dict[str, Any]]]:
    """Each accepted email as (the request's template_id, its personalization)."""
    return [(body["template_id"], p) for body in fake.accepted for p in body["personalizations"]]


def settled(ledger: Path, keys: list[str]) -> dict[str, SendRecord] | None:
    found = sends(ledger)
    done = all(k in found and found[k].state is not SendState.SCHEDULED for k in keys)
    return found if done else None


def test_variants_reach_sendgrid_with_their_template_and_custom_args(
    tmp_path: Path, sendgrid_fake: FakeSendGrid
) -> None:
    spool = tmp_path / "events.jsonl"
    users = [f"u{n}" for n in range(24)]
    append_events(spool, [price_drop(user, 20) for user in users])
    # 20 as text, as a producer writing strings would: still a number on the spool too
    append_events(spool, [price_drop("text", "20"), price_drop("small", "5")])
    keys = [f"promo:drop-{user}" for user in [*users, "text"]]
    with serve_on(tmp_path, sendgrid_fake, {"spool": str(spool)}) as serve:
        serve.wait_ready()
        wait_for(lambda: settled(tmp_path / "ledger.db", keys), "the price drops to be sent")
        small_decided = wait_for(
            lambda: [d for d in decisions(tmp_path / "ledger.db") if d.event_id == "drop-small"],
            "the small drop to be decided",
        )
        # the metrics count a send once its decision is committed: a moment after the ledger
        plain = 'trigmail_variant_sends_total{rule="promo",state="sent",variant="plain"}'
        urgent = plain.replace('"plain"', '"urgent"')
        counted = wait_for(
            lambda: (serve.metric(plain) or 0) + (serve.metric(urgent) or 0) == len(keys),
            "every send to be counted per variant",
        )
        assert counted
        assert serve.stop() == 0

    received = personalizations(sendgrid_fake)
    assert sorted(p["custom_args"]["trigmail_key"] for _, p in received) == sorted(keys)
    templates = {"plain": "d-plain", "urgent": "d-urgent"}
    for template, p in received:
        variant = p["custom_args"]["trigmail_variant"]
        assert template == templates[variant]
        assert ("headline" in p["dynamic_template_data"]) is (variant == "urgent")
    assert {p["custom_args"]["trigmail_variant"] for _, p in received} == {"plain", "urgent"}
    # the ledger keeps the same variant the provider was told
    stored = sends(tmp_path / "ledger.db")
    for _, p in received:
        record = stored[p["custom_args"]["trigmail_key"]]
        assert record.payload.variant == p["custom_args"]["trigmail_variant"]
    [small] = small_decided
    assert (small.reason.value, small.detail) == (
        "condition_false",
        "properties.discount gte 10 (was '5')",
    )


# -- Redis ------------------------------------------------------------------------------------


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url)
    try:
        yield conn
    finally:
        conn.close()


def redis_source(redis_url: str, stream: str) -> dict[str, Any]:
    return {
        "redis": {
            "url": redis_url,
            "stream": stream,
            "group": "trigmail",
            "consumer": "e2e",
            "block": 0.2,
            "min_idle": 0.5,
        }
    }


@pytest.mark.redis
def test_a_step_cancel_from_redis_stops_day_3_only(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str, client: redis.Redis
) -> None:
    stream = f"trigmail-e2e:{uuid.uuid4().hex[:12]}"
    ledger = tmp_path / "ledger.db"
    trigger = {
        "id": "t1",
        "event": "trial_started",
        "user_id": "ana",
        "email": "ana@example.com",
        "ts": now_ts(),
    }
    client.xadd(stream, {"data": json.dumps(trigger)})
    with serve_on(tmp_path, sendgrid_fake, redis_source(redis_url, stream)) as serve:
        serve.wait_ready()
        wait_for(lambda: settled(ledger, ["onboarding:t1#1"]), "day 0 to be sent")
        # the activation, as flat fields (no JSON "data" field)
        activated: dict[FieldT, EncodableT] = {
            "id": "a1",
            "event": "activated",
            "user_id": "ana",
        }
        client.xadd(stream, activated)
        wait_for(lambda: settled(ledger, ["onboarding:t1#2"]), "day 3 to be cancelled")
        assert serve.stop() == 0

    found = sends(ledger)
    states = {key: found[key].state for key in found}
    assert states == {
        "onboarding:t1#1": SendState.SENT,
        "onboarding:t1#2": SendState.CANCELLED,
        "onboarding:t1#3": SendState.SCHEDULED,  # day 7 still goes
    }
    assert found["onboarding:t1#2"].reason == "cancel_on"
    assert [t for t, _ in personalizations(sendgrid_fake)] == ["d-day0"]


@pytest.mark.redis
def test_numbers_from_redis_flat_fields_decide_as_on_the_spool(
    tmp_path: Path, sendgrid_fake: FakeSendGrid, redis_url: str, client: redis.Redis
) -> None:
    stream = f"trigmail-e2e:{uuid.uuid4().hex[:12]}"
    ledger = tmp_path / "ledger.db"
    for user, discount in (("big", "20"), ("small", "5"), ("word", "lots")):
        fields: dict[FieldT, EncodableT] = {
            "id": f"drop-{user}",
            "event": "price_dropped",
            "user_id": user,
            "email": f"{user}@example.com",
            "properties.product": "Boots",
            "properties.discount": discount,  # every flat field is a string
        }
        client.xadd(stream, fields)
    with serve_on(tmp_path, sendgrid_fake, redis_source(redis_url, stream)) as serve:
        serve.wait_ready()
        wait_for(lambda: settled(ledger, ["promo:drop-big"]), "the big drop to be sent")

        def decided() -> list[Any] | None:
            found = [d for d in decisions(ledger) if d.event_id in ("drop-small", "drop-word")]
            return found if len(found) == 2 else None

        skipped = {d.event_id: d for d in wait_for(decided, "the small drops to be decided")}
        assert serve.stop() == 0

    assert sends(ledger)["promo:drop-big"].state is SendState.SENT
    assert {k: (d.reason.value, d.detail) for k, d in skipped.items()} == {
        "drop-small": ("condition_false", "properties.discount gte 10 (was '5')"),
        "drop-word": ("condition_false", "properties.discount gte 10 (was 'lots', not a number)"),
    }
