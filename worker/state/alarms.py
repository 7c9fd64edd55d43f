"""Cluster-wide operational records: the SMTP error that stops all sending, and outcomes counted per hour."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

import redis

from .keys import COUNTS_TTL_S, HOUR_S, Keys

__all__ = [
    "OutcomeCounts",
    "SmtpAlarm",
    "SmtpAlarmState",
    "queue_outcome_counts",
]


@dataclass(frozen=True)
class SmtpAlarmState:
    message: str
    since: datetime
    last_seen: datetime


class SmtpAlarm:
    """The SMTP error that stops every send (login refused, TLS failed), with when it began.

    Raised by any worker; it expires ``ttl_s`` after it was last seen, and a worker that sees a send
    accepted again clears it at once.
    """

    def __init__(self, client: redis.Redis, keys: Keys, *, ttl_s: int = 900) -> None:
        self.redis = client
        self.keys = keys
        self.ttl_s = ttl_s

    def raise_(self, message: str, *, now: datetime) -> None:
        key = self.keys.smtp_alarm()
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hsetnx(key, "since", now.isoformat())
            pipe.hset(key, mapping={"message": message, "last_seen": now.isoformat()})
            pipe.expire(key, self.ttl_s)
            pipe.execute()

    def clear(self) -> None:
        self.redis.delete(self.keys.smtp_alarm())

    def current(self) -> SmtpAlarmState | None:
        raw = self.redis.hgetall(self.keys.smtp_alarm())
        if not raw:
            return None
        data = {key.decode(): value.decode() for key, value in raw.items()}
        return SmtpAlarmState(
            data.get("message", "?"),
            datetime.fromisoformat(data["since"]),
            datetime.fromisoformat(data.get("last_seen", data["since"])),
        )


def queue_outcome_counts(pipe: redis.client.Pipeline, keys: Keys, counts: Mapping[str, int], *, at: datetime) -> int:
    """Count outcomes of the hour ``at`` falls in, in a pipeline the caller runs; returns the replies it adds."""
    key = keys.outcome_counts_at(at)
    for kind, count in counts.items():
        pipe.hincrby(key, kind, count)
    pipe.expire(key, COUNTS_TTL_S)
    return len(counts) + 1


class OutcomeCounts:
    """Delivery outcomes counted by kind in hourly hashes, for "the last 24 hours" without a scan.

    The delivery counts as it writes: the ledger's finish script counts each outcome it records,
    the history each deferral it appends; ``add`` is for the rest.
    """

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def add(self, kinds: Iterable[str], *, now: datetime) -> None:
        counts = Counter(kinds)
        if not counts:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            queue_outcome_counts(pipe, self.keys, counts, at=now)
            pipe.execute()

    def last_day(self, *, now: datetime) -> dict[str, int]:
        """Outcomes of the current hour and the 23 before it, by kind."""
        hour = int(now.timestamp()) // HOUR_S
        with self.redis.pipeline(transaction=False) as pipe:
            for back in range(24):
                pipe.hgetall(self.keys.outcome_counts(hour - back))
            replies = pipe.execute()
        total: Counter[str] = Counter()
        for reply in replies:
            for kind, count in reply.items():
                total[kind.decode()] += int(count)
        return dict(sorted(total.items()))
