"""The provider used without a SendGrid API key: each email becomes a JSON file in a directory.

A file holds the request SendGrid would have received for that one email, so what the daemon
would send can be read (or replayed by hand) before a key is configured.

Files are created ``0640`` and missing directories ``0750`` whatever the umask, so the
service's group may read the outbox and nobody else can. A file is written under a fresh
temporary name (``O_CREAT | O_EXCL``, which never follows a symlink) and renamed over its
target: a symlink planted at the target is replaced, never written through.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trigmail.errors import RetryableDeliveryError
from trigmail.files import FILE_MODE, make_dirs
from trigmail.providers.base import Accepted, Email
from trigmail.providers.bodies import build_body
from trigmail.rules.model import Address

logger = logging.getLogger(__name__)

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_SLUG_MAX_CHARS = 80


def key_filename(key: str) -> str:
    """Return a safe, readable and unique file name for an idempotency key.

    Keys hold ``:`` and ``/`` and may differ only in those, so the slug alone could collide:
    a hash of the whole key keeps names unique.
    """
    slug = _UNSAFE.sub("_", key).strip("._")[:_SLUG_MAX_CHARS] or "email"
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return f"{slug}-{digest}.json"


class OutboxProvider:
    """Writes each email of a batch as ``<key-safe-name>.json`` in ``directory``, atomically.

    Args:
        directory: where the files go; created on first send.
        default_from: the sender when a payload names none (config ``from:``).
    """

    name = "outbox"

    def __init__(self, directory: Path, default_from: Address) -> None:
        self._directory = directory
        self._default_from = default_from

    def __repr__(self) -> str:
        return f"OutboxProvider(directory={str(self._directory)!r})"

    @property
    def directory(self) -> Path:
        return self._directory

    def send(self, emails: Sequence[Email]) -> Accepted:
        """Write one file per email; a file already there for a key is replaced, never doubled.

        Raises:
            RetryableDeliveryError: the directory cannot be written (nothing was delivered).
        """
        try:
            make_dirs(self._directory)
            for email in emails:
                self._write(email)
            _fsync_directory(self._directory)
        except OSError as exc:
            raise RetryableDeliveryError(
                f"outbox {self._directory} not writable: {exc.strerror or exc}"
            ) from exc
        digest = hashlib.sha256("\n".join(e.key for e in emails).encode()).hexdigest()[:16]
        logger.debug("outbox %s: wrote %d emails", self._directory, len(emails))
        return Accepted(message_id=f"outbox-{digest}")

    def close(self) -> None:
        """Nothing to release: every file is closed once written."""

    def _write(self, email: Email) -> None:
        document: dict[str, Any] = {
            "key": email.key,
            "request": build_body([email], self._default_from),
        }
        target = self._directory / key_filename(email.key)
        # A temp file in the same directory, then a rename: a reader sees all of it or nothing.
        fd, temp_name = tempfile.mkstemp(prefix=".tmp-", suffix=".json", dir=self._directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as file:
                # mkstemp creates 0600; the group reads the outbox too (docs/security.md).
                os.fchmod(fd, FILE_MODE)
                json.dump(document, file, indent=2, sort_keys=True)
                file.write("\n")
                file.flush()
                os.fsync(file.fileno())
            Path(temp_name).replace(target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise


def _fsync_directory(directory: Path) -> None:
    # The renames are durable only once the directory entry itself reaches the disk.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
