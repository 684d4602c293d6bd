"""Configuration: the values ``serve`` and the commands run with, and their defaults.

Built in layers by :mod:`trigmail.configload`: embedded defaults < config file <
``TRIGMAIL_*`` environment < CLI flags.
With no config at all, ``serve`` runs on the defaults of docs/design.md §4: spool
``./events.jsonl``, rules ``./rules.d``, ledger ``./trigmail.db`` and, without a SendGrid API
key, the outbox ``./outbox/``. Secrets (the API key, passwords in URLs) never appear in a
``repr``, a log line or an error.

A config says where its keys are, never what they are: the SendGrid API key and the webhook's
public key are read when serve wires its parts (:mod:`trigmail.providers.credentials`,
:func:`trigmail.webhook.signature.resolve_public_key`), so building a config reads no file.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from trigmail.rules.model import Address
from trigmail.secrets import redact_url

DEFAULT_HOST: Final = "https://api.sendgrid.com"
DEFAULT_SPOOL: Final = Path("events.jsonl")
DEFAULT_RULES_DIR: Final = Path("rules.d")
DEFAULT_LEDGER: Final = "trigmail.db"
DEFAULT_OUTBOX: Final = Path("outbox")
DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9464"
DEFAULT_RETENTION_S: Final = 90 * 86_400
# How long the event-order gate may hold a due send before firing it anyway (docs/design.md).
DEFAULT_MAX_HOLD_S: Final = 300
# How long an in-doubt send under on_doubt: verify waits for webhook evidence (docs/webhook.md).
DEFAULT_VERIFY_AFTER_S: Final = 3600
DEFAULT_WEBHOOK_PATH: Final = "/sendgrid/events"
DEFAULT_WEBHOOK_MAX_BODY_BYTES: Final = 5_000_000
# The replay window on the signed timestamp of a webhook request.
DEFAULT_WEBHOOK_MAX_AGE_S: Final = 600
DEFAULT_API_KEY_ENV: Final = "SENDGRID_API_KEY"
DEFAULT_API_KEY_CREDENTIAL: Final = "sendgrid-api-key"
# The outbox needs a sender to write a complete message; SendGrid needs a real one.
OUTBOX_FROM: Final = Address("trigmail@localhost.localdomain", "trigmail outbox")


@dataclass(frozen=True)
class SpoolConfig:
    """Events from a JSONL file that producers append to.

    ``dead_letters`` is where bad lines are set aside; ``None`` is ``<stem>.dead.jsonl``
    beside the spool (docs/security.md: keep it in the state directory instead when
    producers may write the spool's directory).
    """

    path: Path
    dead_letters: Path | None = None

    @property
    def dead_letters_text(self) -> str:
        """Where dead letters go, for the start line."""
        return "beside the spool" if self.dead_letters is None else str(self.dead_letters)

    @property
    def name(self) -> str:
        """The source's name in the ledger (``SpoolSource.name``)."""
        return f"spool:{self.path.absolute()}"


@dataclass(frozen=True, repr=False)
class RedisConfig:
    """Events from a Redis stream consumer group."""

    url: str
    stream: str = "trigmail:events"
    group: str = "trigmail"
    consumer: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}")
    block_s: float = 1.0
    min_idle_s: float = 60.0
    max_deliveries: int = 5

    def __repr__(self) -> str:
        return f"RedisConfig(url={redact_url(self.url)!r}, stream={self.stream!r})"

    @property
    def name(self) -> str:
        """The source's name in the ledger (``RedisStreamSource.name``)."""
        return f"redis:{self.stream}"


@dataclass(frozen=True)
class ApiKeySource:
    """Where the SendGrid API key is looked up when serve starts; the first that holds one
    wins, in this order: the systemd credential, the key file, the environment variable."""

    env: str = DEFAULT_API_KEY_ENV
    file: Path | None = None
    credential: str = DEFAULT_API_KEY_CREDENTIAL


@dataclass(frozen=True)
class SendGridConfig:
    """Delivery through SendGrid's v3 API.

    ``required`` is false only when the config has no ``provider:`` section: then a missing
    key means the outbox (the embedded defaults), where a configured ``provider.sendgrid``
    without a key is an error.
    """

    key: ApiKeySource = ApiKeySource()
    required: bool = True
    host: str = DEFAULT_HOST
    timeout_s: float = 10.0
    connect_timeout_s: float = 5.0
    max_connections: int = 16


@dataclass(frozen=True)
class OutboxConfig:
    """Delivery into a directory, one JSON file per email (no API key: nothing is sent)."""

    directory: Path


@dataclass(frozen=True)
class DeliveryConfig:
    """How sends go out: parallel requests, attempts, and the graceful-stop bound."""

    concurrency: int = 8
    batch_window_s: float = 0.025
    max_attempts: int = 20
    retry_base_s: float = 1.0
    retry_cap_s: float = 300.0
    shutdown_timeout_s: float = 20.0
    max_hold_s: int = DEFAULT_MAX_HOLD_S
    verify_after_s: int = DEFAULT_VERIFY_AFTER_S


@dataclass(frozen=True)
class WebhookConfig:
    """SendGrid's signed Event Webhook, served on its own listener (docs/webhook.md).

    The verification key comes from the first of ``public_key_credential`` (a systemd
    credential), ``public_key_file`` and ``public_key`` (the text, base64 DER, checked when
    parsed) that is set.
    """

    listen: str
    public_key: str | None = None
    public_key_file: Path | None = None
    public_key_credential: str | None = None
    path: str = DEFAULT_WEBHOOK_PATH
    max_body_bytes: int = DEFAULT_WEBHOOK_MAX_BODY_BYTES
    max_age_s: int = DEFAULT_WEBHOOK_MAX_AGE_S


@dataclass(frozen=True, repr=False)
class Config:
    """Everything ``serve`` and ``status`` need, resolved and checked."""

    source: SpoolConfig | RedisConfig = field(default_factory=lambda: SpoolConfig(DEFAULT_SPOOL))
    rules_dirs: tuple[Path, ...] = (DEFAULT_RULES_DIR,)
    ledger: str = DEFAULT_LEDGER
    retention_s: int = DEFAULT_RETENTION_S
    from_: Address | None = None
    # With no provider section: SendGrid when serve finds a key, else the outbox.
    provider: SendGridConfig | OutboxConfig = field(
        default_factory=lambda: SendGridConfig(required=False)
    )
    metrics_listen: str | None = DEFAULT_METRICS_LISTEN
    log_format: str = "text"
    log_level: str = "INFO"
    # The level of routine decisions (scheduled, skipped, cancelled): info logs each event.
    log_decisions: str = "debug"
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    webhook: WebhookConfig | None = None
    file: Path | None = None

    def __repr__(self) -> str:
        return f"Config({json.dumps(self.describe())})"

    @property
    def sender(self) -> Address:
        """The default ``from`` of every email."""
        return self.from_ or OUTBOX_FROM

    def describe(self) -> dict[str, Any]:
        """A summary safe to log: passwords in URLs redacted, the API key never included."""
        source = (
            {"spool": str(self.source.path), "dead_letters": self.source.dead_letters_text}
            if isinstance(self.source, SpoolConfig)
            else {"redis": redact_url(self.source.url), "stream": self.source.stream}
        )
        return {
            "config": None if self.file is None else str(self.file),
            "source": source,
            "rules_dir": [str(d) for d in self.rules_dirs],
            "ledger": redact_url(self.ledger),
            "provider": describe_provider(self.provider),
            "metrics": self.metrics_listen,
            "max_hold_s": self.delivery.max_hold_s,
            "webhook": None
            if self.webhook is None
            else f"{self.webhook.listen}{self.webhook.path}",
        }


def describe_provider(provider: SendGridConfig | OutboxConfig) -> dict[str, str]:
    """A provider's summary; one not yet resolved names both where it may send."""
    if isinstance(provider, OutboxConfig):
        return {"outbox": str(provider.directory)}
    if provider.required:
        return {"sendgrid": provider.host}
    return {"sendgrid": provider.host, "else": f"outbox {DEFAULT_OUTBOX}"}
