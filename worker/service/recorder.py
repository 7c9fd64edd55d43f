"""A delivery's outcomes, kept in memory until Redis has them, and the leases it keeps alive meanwhile.

An accepted message must be recorded before its connection carries another one, and must not be
forgotten because Redis was away for a moment: a lost record means the email goes out again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import redis

from ..state.connection import RedisOutage
from ..state.history import HistoryEntry
from ..state.ledger import Ledger, Outcome, ReminderRef
from ..state.suppressions import Suppression

__all__ = ["FinishItem", "Pending", "Recorder", "keep_leases_alive", "wait_for_redis"]

_log = logging.getLogger("worker.delivery")
_T = TypeVar("_T")

FinishItem = tuple[ReminderRef, Outcome, str, bool]
"""(reminder, outcome, lease token, plan the next reminder): what ``Ledger.finish_many`` takes."""


@dataclass(frozen=True)
class Pending:
    """A copy of what a recorder had to write at one moment."""

    items: list[FinishItem]
    suppress: list[str | Suppression]
    release: list[str | bytes]
    history: list[HistoryEntry]


class Recorder:
    """Outcomes waiting to be written, written at the first chance: beside the next pre-send checks.

    ``on_pending`` asks for that chance: an accepted message is written in the round trip of the
    next check on the event loop, which is at the latest the check of the next transaction on its
    connection, or on its own when none comes.
    """

    def __init__(self, ledger: Ledger, *, attempt: int = 1, outage: RedisOutage | None = None) -> None:
        self._ledger = ledger
        self._outage = outage
        self._items: list[FinishItem] = []
        self._suppress: list[str | Suppression] = []
        self._release: list[str | bytes] = []
        self._history: list[HistoryEntry] = []
        self.on_pending: Callable[[], None] | None = None
        # For the history: the delivery's try (1 for the first) and each reminder's client.
        self.attempt = attempt
        self.clients: dict[ReminderRef, str] = {}

    @property
    def pending(self) -> int:
        return len(self._items) + len(self._suppress) + len(self._release) + len(self._history)

    def add(
        self,
        item: FinishItem | None = None,
        *,
        suppress: Sequence[str | Suppression] = (),
        release: Sequence[str | bytes] = (),
        history: Sequence[HistoryEntry] = (),
    ) -> None:
        """Pending writes; each outcome also goes to the history, with ``history``'s other entries (deferrals)."""
        if item is not None:
            self._items.append(item)
            self._history.append(_history_entry(item, self.clients.get(item[0], ""), self.attempt))
        self._suppress.extend(suppress)
        self._release.extend(release)
        self._history.extend(history)

    def accepted(self, item: FinishItem, *, suppress: Sequence[str | Suppression] = ()) -> None:
        """A message the server accepted: written before any other transaction starts on its connection."""
        self.add(item, suppress=suppress)
        if self.on_pending is not None:
            self.on_pending()
        else:
            self.write_now()

    def take(self) -> Pending:
        """What is pending now, to be written by ``queue`` and then dropped by ``done``."""
        return Pending(list(self._items), list(self._suppress), list(self._release), list(self._history))

    def queue(self, pipe: redis.client.Pipeline, pending: Pending) -> int:
        """Queue ``pending`` into ``pipe``; returns how many replies that adds."""
        return self._ledger.queue_finish(
            pipe, pending.items, suppress=pending.suppress, release=pending.release, history=pending.history
        )

    def done(self, pending: Pending) -> None:
        """``pending`` is in Redis: drop it (by identity: more may have come, or been written, since)."""
        self._items[:] = _without(self._items, pending.items)
        self._suppress[:] = _without(self._suppress, pending.suppress)
        self._release[:] = _without(self._release, pending.release)
        self._history[:] = _without(self._history, pending.history)

    def write_now(self) -> bool:
        """Write what is pending in one round trip; False (and kept) when Redis did not answer."""
        if not self.pending:
            return True
        pending = self.take()
        try:
            self._ledger.finish_many(
                pending.items, suppress=pending.suppress, release=pending.release, history=pending.history
            )
        except redis.RedisError as exc:
            # The process's outage log says once that Redis is away; what waits here is not lost.
            if self._outage is not None:
                self._outage.failed(exc)
            else:
                _log.warning("Redis unavailable, %d outcome(s) kept in memory: %s", len(pending.items), exc)
            return False
        if self._outage is not None:
            self._outage.recovered()
        self.done(pending)
        return True

    async def flush(self, *, wait_s: float) -> None:
        """Write what is pending, waiting up to ``wait_s`` for Redis to come back.

        Giving up loses the records (the messages may then be sent again): said loudly, once.
        """
        if await wait_for_redis(self.write_now, wait_s=wait_s):
            return
        _log.error(
            "Redis did not come back within %.0fs: %d outcome(s) not recorded, their emails may be sent again",
            wait_s,
            len(self._items),
        )


def _history_entry(item: FinishItem, client_id: str, attempt: int) -> HistoryEntry:
    """The history's line for an outcome: the ledger's record, with who was left out and why in ``reason``."""
    (partner_id, renewal_id, reminder_id), outcome, _, _ = item
    notes = [outcome.reason] if outcome.reason else []
    if outcome.extra.get("refused"):
        notes.append("refused: " + ", ".join(outcome.extra["refused"]))
    left_out = outcome.extra.get("suppressed") or outcome.extra.get("addresses")
    if left_out:
        notes.append("suppressed: " + ", ".join(left_out))
    return HistoryEntry(
        "outcome",
        outcome.at,
        outcome.kind,
        partner=partner_id,
        client=client_id,
        renewal=renewal_id,
        reminder=reminder_id,
        reason="; ".join(notes),
        to=outcome.to,
        cc=outcome.cc,
        message_id=outcome.message_id or "",
        reply=outcome.reply or "",
        attempt=attempt,
    )


def _without(items: list[_T], written: list[_T]) -> list[_T]:
    ids = {id(x) for x in written}
    return [x for x in items if id(x) not in ids]


async def wait_for_redis(attempt: Callable[[], bool], *, wait_s: float) -> bool:
    """Call ``attempt`` (returning True on success) with capped backoff until it succeeds or time runs out."""
    deadline = time.monotonic() + wait_s
    delay = 0.1
    while True:
        try:
            if attempt():
                return True
        except redis.RedisError:
            pass
        if time.monotonic() + delay > deadline:
            return False
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)


async def keep_leases_alive(
    ledger: Ledger, leases: dict[ReminderRef, str], *, lease_ms: int, now_ms: Callable[[], int]
) -> None:
    """Renew, every third of a lease, the leases and scheduler claims of the sends still under way.

    Runs until cancelled. A worker that dies stops renewing, so its reminders come back within one
    lease; a Redis outage is survived (the next renewal tries again).
    """
    period_s = lease_ms / 3000
    while True:
        await asyncio.sleep(period_s)
        with contextlib.suppress(redis.RedisError):
            ledger.renew(list(leases.items()), claims_until_ms=now_ms() + lease_ms)
