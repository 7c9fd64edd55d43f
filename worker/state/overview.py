"""Figures over the whole state for `renewals status` and the metrics: the due index, queues, counters."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import redis

from .keys import Keys
from .schedule import epoch_ms, from_epoch_ms

__all__ = [
    "DueOverview",
    "QueueDepth",
    "StateCounts",
    "due_overview",
    "queue_depths",
    "state_counts",
]


@dataclass(frozen=True)
class DueOverview:
    """The due index at one moment. Overdue: due and not yet claimed by a scheduler (its lag)."""

    overdue: int
    oldest_overdue_at: datetime | None
    due_next_hour: int
    due_next_day: int
    planned: int
    in_flight: int
    in_flight_lease_until: datetime | None  # the claim that runs out first

    def oldest_overdue_s(self, now: datetime) -> float:
        return 0.0 if self.oldest_overdue_at is None else max(0.0, (now - self.oldest_overdue_at).total_seconds())


def due_overview(client: redis.Redis, keys: Keys, now: datetime) -> DueOverview:
    """Read in one round trip; counting by score range costs O(log n), so it is cheap on any index."""
    now_ms = epoch_ms(now)
    with client.pipeline(transaction=False) as pipe:
        pipe.zcount(keys.due(), "-inf", now_ms)
        pipe.zrange(keys.due(), 0, 0, withscores=True)
        pipe.zcount(keys.due(), f"({now_ms}", epoch_ms(now + timedelta(hours=1)))
        pipe.zcount(keys.due(), f"({now_ms}", epoch_ms(now + timedelta(days=1)))
        pipe.zcard(keys.due())
        pipe.zcard(keys.claimed())
        pipe.zrange(keys.claimed(), 0, 0, withscores=True)
        overdue, head, hour, day, planned, in_flight, lease = pipe.execute()
    oldest = from_epoch_ms(head[0][1]) if overdue and head else None
    return DueOverview(
        overdue=int(overdue),
        oldest_overdue_at=oldest,
        due_next_hour=int(hour),
        due_next_day=int(day),
        planned=int(planned),
        in_flight=int(in_flight),
        in_flight_lease_until=from_epoch_ms(lease[0][1]) if lease else None,
    )


@dataclass(frozen=True)
class QueueDepth:
    """One dramatiq queue on its Redis broker: ready, waiting to be retried (delayed), dead-lettered by dramatiq."""

    queue: str
    ready: int
    delayed: int
    dead: int


def queue_depths(client: redis.Redis, namespace: str, queues: Sequence[str]) -> list[QueueDepth]:
    """The key layout is dramatiq's Redis broker's (dispatch.lua): ``ns:q``, ``ns:q.DQ``, ``ns:q.XQ``."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(f"{namespace}:{queue}")
            pipe.llen(f"{namespace}:{queue}.DQ")
            pipe.zcard(f"{namespace}:{queue}.XQ")
        replies = pipe.execute()
    return [
        QueueDepth(queue, int(replies[3 * i]), int(replies[3 * i + 1]), int(replies[3 * i + 2]))
        for i, queue in enumerate(queues)
    ]


@dataclass(frozen=True)
class StateCounts:
    """Events by apply result (every process's, since the database began), dead letters, suppressed addresses."""

    events: dict[str, int]
    dead_letters_total: int
    dead_letters_kept: int
    suppressed: int
    replan_pending: int


def state_counts(client: redis.Redis, keys: Keys) -> StateCounts:
    with client.pipeline(transaction=False) as pipe:
        pipe.hgetall(keys.event_stats())
        pipe.get(keys.dead_letter_count())
        pipe.llen(keys.dead_letters())
        pipe.scard(keys.suppressed())
        pipe.zcard(keys.dirty())
        events, dead_total, dead_kept, suppressed, dirty = pipe.execute()
    return StateCounts(
        events={"applied": 0, "duplicate": 0, "stale": 0, "already_ended": 0}
        | {k.decode(): int(v) for k, v in sorted(events.items())},
        dead_letters_total=int(dead_total or 0),
        dead_letters_kept=int(dead_kept),
        suppressed=int(suppressed),
        replan_pending=int(dirty),
    )
