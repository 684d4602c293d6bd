"""The SendGrid API key, found where the config says it is, when serve wires its parts.

The config only names the key's sources (:class:`~trigmail.config.ApiKeySource`); reading
them is I/O, done here by whoever builds a provider: ``serve``, ``send-test``, ``doctor``
and ``check``. Light enough to import without the HTTP client.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from trigmail.config import DEFAULT_OUTBOX, ApiKeySource, Config, OutboxConfig, SendGridConfig
from trigmail.errors import ConfigError
from trigmail.logs import register_secret
from trigmail.secrets import Secret

MISSING_SENDER = "from.email is required to send through SendGrid (the default sender)"


@dataclass(frozen=True)
class SendGridAccount:
    """SendGrid's settings with the API key found for them."""

    settings: SendGridConfig
    api_key: Secret


def load_api_key(source: ApiKeySource, environ: Mapping[str, str] | None = None) -> Secret | None:
    """Load the API key from a systemd credential, a file or an environment variable.

    The first source that holds a key wins, in that order; the trailing newline is stripped.

    Args:
        source: where to look: the credential is read from ``$CREDENTIALS_DIRECTORY``.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The key, or ``None`` when no source holds one. A key found is registered with the log
        guard first, so that no log line can show it.

    Raises:
        ConfigError: the named file cannot be read or is empty.
    """
    key = _find_key(source, os.environ if environ is None else environ)
    if key is not None:
        register_secret(key.reveal())
    return key


def _find_key(source: ApiKeySource, environ: Mapping[str, str]) -> Secret | None:
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if source.credential and credentials_dir:
        path = Path(credentials_dir) / source.credential
        if path.is_file():
            return _read_key_file(path)
    if source.file is not None:
        return _read_key_file(source.file)
    value = environ.get(source.env, "").rstrip("\r\n") if source.env else ""
    return Secret(value) if value else None


def resolve_sendgrid(
    provider: SendGridConfig | OutboxConfig, environ: Mapping[str, str] | None = None
) -> SendGridAccount | OutboxConfig:
    """The provider to build: SendGrid with its key, or the outbox.

    Raises:
        ConfigError: ``provider.sendgrid`` is configured and no key is found, or a named key
            file cannot be read.
    """
    if isinstance(provider, OutboxConfig):
        return provider
    api_key = load_api_key(provider.key, environ)
    if api_key is not None:
        return SendGridAccount(provider, api_key)
    if not provider.required:
        return OutboxConfig(DEFAULT_OUTBOX)
    raise ConfigError(
        f"provider.sendgrid is configured but no API key was found (${provider.key.env}, "
        f"api_key_file or the systemd credential {provider.key.credential!r})"
    )


def resolve_provider(
    config: Config, environ: Mapping[str, str] | None = None
) -> SendGridAccount | OutboxConfig:
    """:func:`resolve_sendgrid` for ``config``, which must name a sender to use SendGrid.

    Raises:
        ConfigError: as :func:`resolve_sendgrid`, or SendGrid without ``from.email``.
    """
    provider = resolve_sendgrid(config.provider, environ)
    if isinstance(provider, SendGridAccount) and config.from_ is None:
        raise ConfigError(MISSING_SENDER)
    return provider


def _read_key_file(path: Path) -> Secret:
    try:
        value = path.read_text(encoding="utf-8").rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"cannot read the SendGrid API key from {path}: {exc.strerror}") from exc
    except UnicodeDecodeError:
        # The decode error would quote bytes of the key: say what is wrong, without it.
        raise ConfigError(f"the SendGrid API key file {path} is not UTF-8 text") from None
    if not value:
        raise ConfigError(f"the SendGrid API key file {path} is empty")
    return Secret(value)
