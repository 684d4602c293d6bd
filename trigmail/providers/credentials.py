"""Where the SendGrid API key and host come from: light enough for the config to import
without the HTTP client."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from trigmail.errors import ConfigError
from trigmail.secrets import Secret

DEFAULT_HOST = "https://api.sendgrid.com"


def load_api_key(
    env: str | None = None,
    file: Path | None = None,
    credential: str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
) -> Secret | None:
    """Load the API key from a systemd credential, a file or an environment variable.

    The first source that holds a key wins, in that order; the trailing newline is stripped.

    Args:
        env: the name of an environment variable (``SENDGRID_API_KEY``).
        file: a file holding the key; it must exist when named.
        credential: a systemd credential name, read from ``$CREDENTIALS_DIRECTORY``.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The key, or ``None`` when no source holds one (the caller falls back to the outbox).

    Raises:
        ConfigError: the named file cannot be read or is empty.
    """
    environ = os.environ if environ is None else environ
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if credential and credentials_dir:
        path = Path(credentials_dir) / credential
        if path.is_file():
            return _read_key_file(path)
    if file is not None:
        return _read_key_file(file)
    value = environ.get(env, "").rstrip("\r\n") if env else ""
    return Secret(value) if value else None


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
