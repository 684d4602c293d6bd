"""Reading the config: its file, then the ``TRIGMAIL_*`` environment and CLI flags over it.

:func:`load_config` reads the file (checked against ``config_schema.json``, each problem at
``file:line:col``), layers the environment and the flags over it and builds a
:class:`~trigmail.config.Config`; :mod:`trigmail.configcheck` reuses its pieces to report every
problem at once. Passwords in URLs are registered with the log guard before anything is built.
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, Final

from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft202012Validator

from trigmail.config import (
    DEFAULT_API_KEY_CREDENTIAL,
    DEFAULT_API_KEY_ENV,
    DEFAULT_HOST,
    DEFAULT_LEDGER,
    DEFAULT_MAX_HOLD_S,
    DEFAULT_METRICS_LISTEN,
    DEFAULT_OUTBOX,
    DEFAULT_RETENTION_S,
    DEFAULT_RULES_DIR,
    DEFAULT_SPOOL,
    DEFAULT_VERIFY_AFTER_S,
    DEFAULT_WEBHOOK_MAX_AGE_S,
    DEFAULT_WEBHOOK_MAX_BODY_BYTES,
    DEFAULT_WEBHOOK_PATH,
    ApiKeySource,
    Config,
    DeliveryConfig,
    OutboxConfig,
    RedisConfig,
    SendGridConfig,
    SpoolConfig,
    WebhookConfig,
)
from trigmail.durations import parse_duration
from trigmail.errors import ConfigError, DurationError, UnreadableFileError
from trigmail.logs import register_secret
from trigmail.rules.files import read_text
from trigmail.rules.model import Address
from trigmail.rules.problems import format_path
from trigmail.rules.quoting import quote
from trigmail.rules.schema import check_structure
from trigmail.rules.yamlsource import load_document
from trigmail.secrets import redact_url, url_passwords

CONFIG_ENV: Final = "TRIGMAIL_CONFIG"

# Each environment variable overrides one config key (a key path into the file).
ENV_OVERRIDES: Final[Mapping[str, tuple[str, ...]]] = {
    "TRIGMAIL_SPOOL": ("source", "spool"),
    "TRIGMAIL_DEAD_LETTERS": ("source", "dead_letters"),
    "TRIGMAIL_REDIS_URL": ("source", "redis", "url"),
    "TRIGMAIL_REDIS_CONSUMER": ("source", "redis", "consumer"),
    "TRIGMAIL_RULES_DIR": ("rules_dir",),
    "TRIGMAIL_LEDGER": ("ledger",),
    "TRIGMAIL_FROM_EMAIL": ("from", "email"),
    "TRIGMAIL_SENDGRID_HOST": ("provider", "sendgrid", "host"),
    "TRIGMAIL_OUTBOX": ("provider", "outbox", "dir"),
    "TRIGMAIL_METRICS_LISTEN": ("metrics", "listen"),
    "TRIGMAIL_LOG_FORMAT": ("log", "format"),
    "TRIGMAIL_LOG_LEVEL": ("log", "level"),
    "TRIGMAIL_MAX_HOLD": ("delivery", "max_hold"),
}


@cache
def validator() -> Draft202012Validator:
    text = resources.files("trigmail").joinpath("config_schema.json").read_text("utf-8")
    schema = json.loads(text)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        # The same bounds as a rule file: size, depth, alias expansion (docs/security.md).
        text = read_text(path)
    except UnreadableFileError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc}") from None
    document = load_document(text)
    problems = [f"{path}:{i.mark.line}:{i.mark.col}: {i.message}" for i in document.issues]
    if not problems and document.data is None:
        return {}
    if not problems:
        for finding in check_structure(document.data, validator()):
            mark = document.position(finding.path, key=finding.at_key)
            where = format_path(finding.path)
            at = f" (at {where})" if where else ""
            problems.append(f"{path}:{mark.line}:{mark.col}: {finding.message}{at}")
    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))
    data: dict[str, Any] = document.data
    return data


def set_key(data: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    if path == ("source", "redis", "consumer"):
        # The consumer name refines a configured stream; it does not replace the source.
        data.setdefault("source", {}).setdefault("redis", {})["consumer"] = value
        return
    if path == ("source", "dead_letters"):
        # Where a spool's dead letters go refines the source, whichever it is; a Redis
        # stream has its own dead stream and ignores it.
        data.setdefault("source", {})["dead_letters"] = value
        return
    if path[0] == "source":
        # A source is one thing: overriding the spool replaces a configured stream (but
        # keeps where dead letters go).
        kept = (data.get("source") or {}).get("dead_letters")
        data["source"] = {} if kept is None else {"dead_letters": kept}
    node = data
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[path[-1]] = value


def load_config(
    path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
) -> Config:
    """Build the config from its layers.

    Args:
        path: the config file (``--config``); default ``$TRIGMAIL_CONFIG``, else none.
        environ: the environment (default ``os.environ``).
        overrides: CLI flags, each a key path and its value; ``None`` values are ignored.

    Raises:
        ConfigError: listing every problem, each as ``file:line:col: message``.
    """
    environ = os.environ if environ is None else environ
    if path is None and environ.get(CONFIG_ENV):
        path = Path(environ[CONFIG_ENV])
    data = _read_file(path) if path is not None else {}
    data = copy.deepcopy(data)
    for name, key_path in ENV_OVERRIDES.items():
        if environ.get(name):
            set_key(data, key_path, environ[name])
    for key_path, value in (overrides or {}).items():
        if value is not None:
            set_key(data, key_path, value)
    guard_passwords(data)
    return parse_config(data, file=path)


def guard_passwords(data: Mapping[str, Any]) -> None:
    """Register every password of the Redis URL and the ledger DSN with the log guard, before
    anything (an error, a library's traceback) can print one."""
    source = data.get("source") or {}
    redis = source.get("redis") if isinstance(source, dict) else None
    urls = [redis.get("url") if isinstance(redis, dict) else None, data.get("ledger")]
    for url in urls:
        for password in url_passwords(url) if isinstance(url, str) else ():
            register_secret(password)


def parse_config(data: Mapping[str, Any], *, file: Path | None = None) -> Config:
    """Build the config from its merged layers (the file's mapping, environment and flags).

    Pure: it reads no file and no environment. The SendGrid API key and the webhook's public
    key stay where the mapping says they are; serve's wiring reads them
    (:func:`~trigmail.providers.credentials.resolve_provider`,
    :func:`~trigmail.webhook.signature.resolve_public_key`).

    Args:
        data: the merged mapping, structurally valid (see :func:`load_config`).
        file: the config file it came from, for :meth:`Config.describe`.

    Raises:
        ConfigError: at the first problem.
    """
    rules_dir = data.get("rules_dir", str(DEFAULT_RULES_DIR))
    dirs = [rules_dir] if isinstance(rules_dir, str) else list(rules_dir)
    sender = data.get("from")
    log = data.get("log") or {}
    metrics = data.get("metrics", {"listen": DEFAULT_METRICS_LISTEN})
    if sender is not None:
        check_sender(sender["email"])
    return Config(
        source=_source(data.get("source") or {}),
        rules_dirs=tuple(Path(d) for d in dirs),
        ledger=str(data.get("ledger", DEFAULT_LEDGER)),
        retention_s=duration_s(data.get("retention"), "retention", DEFAULT_RETENTION_S),
        from_=None if sender is None else Address(sender["email"], sender.get("name")),
        provider=provider_config(data.get("provider") or {}),
        metrics_listen=None if metrics is None else metrics.get("listen"),
        log_format=str(log.get("format", "text")),
        log_level=str(log.get("level", "INFO")).upper(),
        log_decisions=str(log.get("decisions", "debug")),
        delivery=_delivery(data.get("delivery") or {}),
        webhook=_webhook(data["webhook"]) if data.get("webhook") is not None else None,
        file=file,
    )


def _source(spec: Mapping[str, Any]) -> SpoolConfig | RedisConfig:
    redis = spec.get("redis")
    if redis is None:
        dead = spec.get("dead_letters")
        spool = Path(spec.get("spool", DEFAULT_SPOOL))
        return SpoolConfig(spool, None if dead is None else Path(dead))
    check_url(redis.get("url", ""), "source.redis.url", ("redis://", "rediss://"))
    options: dict[str, Any] = {"url": redis["url"]}
    renames = {"block": "block_s", "min_idle": "min_idle_s"}
    for key in ("stream", "group", "consumer", "block", "min_idle", "max_deliveries"):
        if key in redis:
            options[renames.get(key, key)] = redis[key]
    return RedisConfig(**options)


def check_sender(address: str) -> None:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError as exc:
        raise ConfigError(f"from.email: {quote(address)} is not an email address: {exc}") from None


def check_url(url: str, where: str, schemes: tuple[str, ...]) -> None:
    if not url.startswith(schemes):
        shown = redact_url(url)
        raise ConfigError(f"{where}: {quote(shown)} must start with {' or '.join(schemes)}")


def duration_s(value: object, key: str, default: int) -> int:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except DurationError as exc:
        raise ConfigError(f"{key}: {exc}") from None


def provider_config(spec: Mapping[str, Any]) -> SendGridConfig | OutboxConfig:
    if "outbox" in spec:
        return OutboxConfig(Path((spec["outbox"] or {}).get("dir", DEFAULT_OUTBOX)))
    sendgrid = spec.get("sendgrid")
    required = sendgrid is not None
    sendgrid = sendgrid or {}
    key_file = sendgrid.get("api_key_file")
    return SendGridConfig(
        key=ApiKeySource(
            env=sendgrid.get("api_key_env", DEFAULT_API_KEY_ENV),
            file=None if key_file is None else Path(key_file),
            credential=sendgrid.get("api_key_credential", DEFAULT_API_KEY_CREDENTIAL),
        ),
        required=required,
        host=sendgrid.get("host", DEFAULT_HOST),
        timeout_s=float(sendgrid.get("timeout", 10.0)),
        connect_timeout_s=float(sendgrid.get("connect_timeout", 5.0)),
        max_connections=int(sendgrid.get("max_connections", 16)),
    )


def _delivery(spec: Mapping[str, Any]) -> DeliveryConfig:
    return DeliveryConfig(
        concurrency=int(spec.get("concurrency", 8)),
        batch_window_s=float(spec.get("batch_window", 0.025)),
        max_attempts=int(spec.get("max_attempts", 20)),
        retry_base_s=float(spec.get("retry_base", 1.0)),
        retry_cap_s=float(spec.get("retry_cap", 300.0)),
        shutdown_timeout_s=float(spec.get("shutdown_timeout", 20.0)),
        max_hold_s=duration_s(spec.get("max_hold"), "delivery.max_hold", DEFAULT_MAX_HOLD_S),
        verify_after_s=duration_s(
            spec.get("verify_after"), "delivery.verify_after", DEFAULT_VERIFY_AFTER_S
        ),
    )


def _webhook(spec: Mapping[str, Any]) -> WebhookConfig:
    # Imported here: only a config with a webhook needs the cryptography package.
    from trigmail.webhook.signature import NO_PUBLIC_KEY, parse_public_key

    if not spec.get("listen"):
        raise ConfigError("webhook.listen is required (host:port of the webhook listener)")
    text = spec.get("public_key")
    text = text.strip() if isinstance(text, str) and text.strip() else None
    file = spec.get("public_key_file")
    credential = spec.get("public_key_credential")
    if text is None and file is None and credential is None:
        raise ConfigError(NO_PUBLIC_KEY)
    if text is not None:
        parse_public_key(text, "webhook.public_key")
    max_age_s = duration_s(spec.get("max_age"), "webhook.max_age", DEFAULT_WEBHOOK_MAX_AGE_S)
    if max_age_s <= 0:
        raise ConfigError("webhook.max_age: the replay window must be longer than 0")
    return WebhookConfig(
        listen=str(spec["listen"]),
        public_key=text,
        public_key_file=None if file is None else Path(str(file)),
        public_key_credential=None if credential is None else str(credential),
        path=str(spec.get("path", DEFAULT_WEBHOOK_PATH)),
        max_body_bytes=int(spec.get("max_body_bytes", DEFAULT_WEBHOOK_MAX_BODY_BYTES)),
        max_age_s=max_age_s,
    )
