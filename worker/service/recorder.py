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

import redis

from ..state.ledger import Ledger, Outcome, ReminderRef

__all__ = ["FinishItem", "Recorder", "keep_leases_alive", "wait_for_redis"]

_log = logging.getLogger("worker.delivery")

FinishItem = tuple[ReminderRef, Outcome, str, bool]
"""(reminder, outcome, lease token, plan the next reminder): what ``Ledger.finish_many`` takes."""


class Recorder:
    """Outcomes waiting to be written, written at the first chance: beside the next pre-send read of
    this batch, or at once when no send of the batch is about to start.

    ``waiting`` counts the sends of the batch that have not reached their pre-send check yet; while
    one has, its read carries what is pending, one round trip for both.
    """

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._items: list[FinishItem] = []
        self._suppress: list[str] = []
        self._release: list[str | bytes] = []
        self._queued: tuple[int, int, int] | None = None
        self.waiting = 0

    @property
    def pending(self) -> int:
        return len(self._items) + len(self._suppress) + len(self._release)

    def add(
        self, item: FinishItem | None = None, *, suppress: Sequence[str] = (), release: Sequence[str | bytes] = ()
    ) -> None:
        if item is not None:
            self._items.append(item)
        self._suppress.extend(suppress)
        self._release.extend(release)

    def accepted(self, item: FinishItem, *, suppress: Sequence[str] = ()) -> None:
        """A message the server accepted: written now, unless a pre-send read is about to carry it."""
        self.add(item, suppress=suppress)
        if self.waiting == 0:
            self.write_now()

    def queue(self, pipe: redis.client.Pipeline) -> int:
        """Queue everything pending into ``pipe``; ``written`` must follow once the pipeline ran."""
        self._queued = (len(self._items), len(self._suppress), len(self._release))
        return self._ledger.queue_finish(pipe, self._items, suppress=self._suppress, release=self._release)

    def written(self) -> None:
        """The pipeline that ``queue`` filled ran: drop what it wrote (more may have come since)."""
        if self._queued is None:
            return
        items, suppress, release = self._queued
        del self._items[:items], self._suppress[:suppress], self._release[:release]
        self._queued = None

    def write_now(self) -> bool:
        """Write what is pending in one round trip; False (and kept) when Redis did not answer."""
        if not self.pending:
            return True
        items, suppress, release = list(self._items), list(self._suppress), list(self._release)
        try:
            self._ledger.finish_many(items, suppress=suppress, release=release)
        except redis.RedisError as exc:
            _log.warning("Redis unavailable, %d outcome(s) kept in memory until it is back: %s", len(items), exc)
            return False
        del self._items[: len(items)], self._suppress[: len(suppress)], self._release[: len(release)]
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
