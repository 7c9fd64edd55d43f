"""The one way time enters the worker: real in production, virtual in `simulate` and tests."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Protocol

__all__ = ["Clock", "SystemClock", "VirtualClock"]


class Clock(Protocol):
    def now(self) -> datetime:
        """An aware datetime in UTC."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class VirtualClock:
    """A clock that only moves when told to, and never backwards."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("VirtualClock needs an aware datetime")
        self._now = start.astimezone(UTC)
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def advance_to(self, moment: datetime) -> datetime:
        """Move to ``moment`` unless that is in the past; returns the clock's time afterwards."""
        with self._lock:
            moment = moment.astimezone(UTC)
            if moment > self._now:
                self._now = moment
            return self._now
