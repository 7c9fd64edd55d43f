"""Argument types the commands share: a moment in time, a count of at least one."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

__all__ = ["positive_int", "timestamp"]


def timestamp(text: str) -> datetime:
    """An ISO 8601 date or timestamp; UTC when it names no offset."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO 8601 date or timestamp: {text!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def positive_int(text: str) -> int:
    """A whole number of at least 1 (0 or a negative count means nothing, so it is refused, not guessed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (got {value})")
    return value
