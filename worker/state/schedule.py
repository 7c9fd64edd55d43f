"""The due index in Redis and the scheduler that claims what is due and enqueues one delivery for each."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from .history import History, HistoryEntry
from .keys import Keys
from .ledger import parse_due_member
from .scripts import LuaScript

__all__ = ["DueIndex", "DueItem", "Scheduler", "epoch_ms", "from_epoch_ms"]

_log = logging.getLogger("worker.scheduler")

# One atomic step per batch: claims whose lease passed (a scheduler that died before enqueueing,
# or a delivery lost with its worker) go back to the index first, then everything due moves from
# the index to the claimed set with a lease. No two schedulers can take the same member, and a
# scheduler that dies after claiming loses nothing.
_CLAIM = """
local now = tonumber(ARGV[1])
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, m in ipairs(expired) do
  redis.call('ZREM', KEYS[2], m)
  redis.call('ZADD', KEYS[1], 'NX', now, m)
end
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[3]))
local until_ms = now + tonumber(ARGV[2])
for i = 1, #items, 2 do
  redis.call('ZREM', KEYS[1], items[i])
  redis.call('ZADD', KEYS[2], until_ms, items[i])
end
return {items, expired}
"""


def epoch_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def from_epoch_ms(value: float) -> datetime:
    return datetime.fromtimestamp(value / 1000, tz=UTC)


@dataclass(frozen=True)
class DueItem:
    partner_id: str
    renewal_id: str
    reminder_id: str
    due_ms: int
    member: bytes


class DueIndex:
    """Planned reminders by due time. Planning writes it (see planning.py); schedulers claim from it."""

    def __init__(self, client: redis.Redis, keys: Keys, *, history: History | None = None) -> None:
        self.redis = client
        self.keys = keys
        self.history = history
        self._claim = LuaScript(client, _CLAIM)

    def claim(self, now: datetime, *, lease_ms: int, limit: int) -> list[DueItem]:
        raw, expired = self._claim(keys=[self.keys.due(), self.keys.claimed()], args=[epoch_ms(now), lease_ms, limit])
        if expired:
            self._record_expired(expired, now)
        items = []
        for i in range(0, len(raw), 2):
            partner_id, renewal_id, reminder_id = parse_due_member(raw[i])
            items.append(DueItem(partner_id, renewal_id, reminder_id, int(float(raw[i + 1])), raw[i]))
        return items

    def _record_expired(self, members: list[bytes], now: datetime) -> None:
        """A claim that ran out (its scheduler or worker died) is a deferral: the history says so."""
        refs = [parse_due_member(m) for m in members]
        _log.warning("%d claim(s) expired, due again: %s", len(refs), ", ".join("/".join(r) for r in refs[:10]))
        if self.history is not None:
            self.history.append(
                *(
                    HistoryEntry("deferral", now, "deferred", partner=p, renewal=r, reminder=m, reason="lease expired")
                    for p, r, m in refs
                )
            )

    def release(self, *members: str | bytes) -> None:
        """The delivery is done with these reminders (or handed them back to planning): end their claims."""
        if members:
            self.redis.zrem(self.keys.claimed(), *members)

    def extend(self, member: str | bytes, *, until: datetime) -> None:
        """Keep a claim while its delivery waits for a retry, so it is not enqueued a second time."""
        self.redis.zadd(self.keys.claimed(), {member: epoch_ms(until)}, xx=True)

    def next_due(self) -> datetime | None:
        head = self.redis.zrange(self.keys.due(), 0, 0, withscores=True)
        claimed = self.redis.zrange(self.keys.claimed(), 0, 0, withscores=True)
        scores = [score for _, score in head + claimed]
        return from_epoch_ms(min(scores)) if scores else None

    def size(self) -> int:
        return int(self.redis.zcard(self.keys.due()))


class Scheduler:
    """Moves due reminders onto the deliveries queue; any number may run against one Redis."""

    def __init__(
        self,
        index: DueIndex,
        enqueue: Callable[[list[DueItem]], None],
        now: Callable[[], datetime],
        *,
        lease_ms: int = 60_000,
        batch: int = 500,
        on_tick: Callable[[], object] | None = None,
    ) -> None:
        self.index = index
        self.enqueue = enqueue
        self.now = now
        self.lease_ms = lease_ms
        self.batch = batch
        self.on_tick = on_tick

    def run_once(self) -> int:
        """Claim and enqueue everything due now; returns how many deliveries were enqueued."""
        total = 0
        while True:
            items = self.index.claim(self.now(), lease_ms=self.lease_ms, limit=self.batch)
            if not items:
                return total
            # The claims stay until each delivery ends (ledger.finish or release): while a
            # reminder is claimed, re-planning leaves it out of the index, so it is enqueued once.
            self.enqueue(items)
            total += len(items)
            if len(items) < self.batch:
                return total

    def run_forever(self, stop: threading.Event, *, poll_s: float = 1.0) -> None:
        _log.info("scheduler started (poll every %.1fs)", poll_s)
        while not stop.is_set():
            busy = False
            try:
                # A tick that reports more work (a re-plan in chunks) is followed at once by the next.
                busy = bool(self.on_tick()) if self.on_tick is not None else False
                count = self.run_once()
                if count:
                    _log.info("enqueued %d due reminder(s)", count)
            except redis.ConnectionError as exc:
                _log.warning("Redis unavailable, retrying: %s", exc)
            stop.wait(0 if busy else poll_s)
        _log.info("scheduler stopped")
