"""One exception tree for the whole worker, split by what the caller should do about it."""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "InvalidEvent",
    "InvalidMessage",
    "PermanentError",
    "PermanentSendError",
    "RedisUnavailable",
    "RenewalsError",
    "RulesError",
    "StoreLayoutError",
    "TemplateError",
    "TransientError",
    "TransientSendError",
]


class RenewalsError(Exception):
    """Root of every error the worker raises on purpose."""


class ConfigError(RenewalsError):
    """The configuration is wrong: fix it; retrying will not help."""


class InvalidEvent(RenewalsError):
    """An event breaks the contract: it is dead-lettered, never retried.

    ``errors`` holds one ``(field, message)`` pair per problem so callers can name the field.
    """

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{field}: {msg}" if field else msg for field, msg in errors))


class StoreLayoutError(ConfigError):
    """The Redis store is laid out for another version of the worker: migrate it, or run that version."""


class RulesError(ConfigError):
    """A rule file is invalid; ``problems`` lists each one with file, line and field."""

    def __init__(self, problems: list[object]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class TemplateError(ConfigError):
    """A template is missing or does not render with the data it is given."""


class TransientError(RenewalsError):
    """Worth retrying later: a lost connection, a 4xx reply, Redis briefly away."""


class RedisUnavailable(TransientError):
    """Redis did not answer, and the caller stopped waiting for it (the process is stopping)."""


class PermanentError(RenewalsError):
    """Retrying cannot help: record the failure and move on."""


class InvalidMessage(PermanentError, ValueError):
    """The data cannot make a valid message (an address or header SMTP cannot carry): no retry can help."""


class TransientSendError(TransientError):
    """The SMTP server deferred the message or the connection failed."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        self.code = code
        super().__init__(message)


class PermanentSendError(PermanentError):
    """The SMTP server refused the message for good (5xx); ``recipients`` are the refused addresses."""

    def __init__(self, message: str, *, code: int | None = None, recipients: tuple[str, ...] = ()) -> None:
        self.code = code
        self.recipients = recipients
        super().__init__(message)
