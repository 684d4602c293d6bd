"""Every error trigmail raises on purpose derives from :class:`TrigmailError`."""

from __future__ import annotations


class TrigmailError(Exception):
    """Base class of the errors trigmail raises on purpose."""


class ConfigError(TrigmailError):
    """Raised when the config file, an environment override or a flag is invalid."""


class RulesError(TrigmailError):
    """Raised when a rule set cannot be built; carries every problem found.

    Args:
        problems: the problems, each with its file, line, column and key path.
    """

    def __init__(self, problems: list[object]) -> None:
        self.problems = problems
        first = str(problems[0]) if problems else "invalid rules"
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


class SpecError(TrigmailError):
    """Raised when one rule value is invalid; ``path`` is relative to the value compiled.

    Args:
        path: the key path inside the compiled value (``("properties.x", "gtee")``).
        message: what is wrong, for a human.
    """

    def __init__(self, path: tuple[str | int, ...], message: str) -> None:
        self.path = path
        self.message = message
        super().__init__(message)


class DurationError(TrigmailError):
    """Raised when a duration such as ``1h30m`` cannot be parsed."""


class BadEventError(TrigmailError):
    """Raised when an event line is not a valid event; ``reason`` is a stable snake_case word.

    Args:
        reason: why the event is set aside (``invalid_json``, ``missing_field``, ...).
        detail: a human sentence naming the offending field.
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class TemplateRenderError(TrigmailError):
    """Raised when template data or a dedupe key refers to a field the event does not have."""


class LedgerError(TrigmailError):
    """Raised when the ledger cannot be opened, migrated or written."""


class LedgerUnavailableError(LedgerError):
    """Raised when the ledger is temporarily unwritable (locked, disk full, connection lost)."""


class SourceError(TrigmailError):
    """Raised when an event source cannot be read (missing file, Redis unreachable)."""


class UnsafeFileError(TrigmailError):
    """Raised when a path trigmail reads or writes is a symlink, a FIFO or not a regular file.

    Such a path is refused rather than followed: whoever can write its directory could
    otherwise make the daemon read or append to a file of their choosing.
    """


class DeliveryError(TrigmailError):
    """Base of the three outcomes of a failed provider call; ``detail`` never holds a secret."""

    def __init__(self, detail: str) -> None:
        self.detail = detail
        super().__init__(detail)


class RetryableDeliveryError(DeliveryError):
    """Raised when the request provably never reached the provider or was refused by it.

    Args:
        detail: what happened.
        retry_after_s: the provider's own hint (rate-limit reset), when it gave one.
    """

    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class InDoubtDeliveryError(DeliveryError):
    """Raised when the provider may have processed the request: never resent under ``skip``."""


class PermanentDeliveryError(DeliveryError):
    """Raised when the provider rejected the request for good (a 4xx other than 429).

    Args:
        detail: what happened, with the provider's own messages.
        status_code: the HTTP status, when the provider answered (400: the request itself was
            bad, so a batch may be split to find the one bad email).
    """

    def __init__(self, detail: str, status_code: int | None = None) -> None:
        super().__init__(detail)
        self.status_code = status_code
