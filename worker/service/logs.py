"""Logging of the long-running processes: one format for workers and schedulers, text or JSON lines,
email addresses masked, and secrets never written (not even in a traceback)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from ..config.settings import Settings

__all__ = ["FIELDS", "TEXT_FORMAT", "JsonFormatter", "TextFormatter", "configure_logging", "mask_addresses"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
# Context a log call may pass as ``extra=``; JSON lines carry each one present as its own field.
FIELDS = ("partner", "client", "renewal", "reminder", "outcome", "event_id")

_SPECIALS = r"\s@<>()\[\],;:\"'="
_ADDRESS = re.compile(rf"([^{_SPECIALS}/])[^{_SPECIALS}]*@([^{_SPECIALS}]+\.[^{_SPECIALS}.]+)")


def mask_addresses(text: str) -> str:
    """``jane.doe@acme.com`` -> ``j***@acme.com``: who it was stays guessable for ops, not readable."""
    return _ADDRESS.sub(r"\1***@\2", text)


class _Scrubber:
    """Removes secrets and (unless LOG_ADDRESSES=full, or the record says addresses=full) addresses."""

    def __init__(self, secrets: Sequence[str], mask: bool) -> None:
        self.secrets = sorted({s for s in secrets if s}, key=len, reverse=True)
        self.mask = mask

    def __call__(self, text: str, record: logging.LogRecord) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        if self.mask and getattr(record, "addresses", None) != "full":
            text = mask_addresses(text)
        return text


class TextFormatter(logging.Formatter):
    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__(TEXT_FORMAT)
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record), record)


class JsonFormatter(logging.Formatter):
    """One object a line: time, level, logger, message, the context fields present, and the traceback."""

    def __init__(self, scrub: _Scrubber) -> None:
        super().__init__()
        self.scrub = scrub

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": self.scrub(record.getMessage(), record),
            "pid": record.process,
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = self.scrub(str(value), record)
        if record.exc_info:
            data["exception"] = self.scrub(self.formatException(record.exc_info), record)
        return json.dumps(data, ensure_ascii=False)


def configure_logging(settings: Settings) -> None:
    """Set LOG_LEVEL and this format on every handler of the root logger (dramatiq's too), adding one if none."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    scrub = _Scrubber(settings.secrets(), settings.log_addresses == "masked")
    formatter: logging.Formatter = JsonFormatter(scrub) if settings.log_format == "json" else TextFormatter(scrub)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    root.setLevel(settings.log_level)
