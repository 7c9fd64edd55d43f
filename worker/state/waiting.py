"""Renewals that wait for missing data (their client's details, their partner's settings): counts for ops.

Planning keeps one sorted set per reason (see ``Keys.waiting``); a renewal enters it when a plan
finds the data missing and leaves it when a plan no longer does.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import redis

from ..domain.planner import NO_CLIENT_DETAILS, NO_PARTNER_SETTINGS
from .keys import SEP, Keys
from .schedule import from_epoch_ms

__all__ = ["WAITS_FOR", "WaitingCount", "WaitingRenewal", "count_waiting_renewals", "list_waiting_renewals"]

# What each waiting reason waits for, in the words ops read.
WAITS_FOR = {NO_CLIENT_DETAILS: "client", NO_PARTNER_SETTINGS: "partner"}


@dataclass(frozen=True)
class WaitingRenewal:
    partner_id: str
    renewal_id: str
    waits_for: str
    since: datetime


@dataclass(frozen=True)
class WaitingCount:
    """How many renewals wait for one kind of data (``waits_for``: client or partner), and the oldest."""

    waits_for: str
    reason: str
    count: int
    oldest: WaitingRenewal | None


def _renewal(member: object, score: object, waits_for: str) -> WaitingRenewal:
    text = member.decode() if isinstance(member, bytes) else str(member)
    partner_id, renewal_id, _ = text.split(SEP)
    return WaitingRenewal(partner_id, renewal_id, waits_for, from_epoch_ms(float(score)))  # type: ignore[arg-type]


def count_waiting_renewals(client: redis.Redis, keys: Keys) -> list[WaitingCount]:
    """Renewals not planned because data is missing, counted by what they wait for (no client yet,
    no partner yet), each with its oldest waiting renewal; in one round trip.

    A renewal counts once, under the first thing it waits for: its client, then its partner.
    """
    with client.pipeline(transaction=False) as pipe:
        for reason in WAITS_FOR:
            pipe.zcard(keys.waiting(reason))
            pipe.zrange(keys.waiting(reason), 0, 0, withscores=True)
        replies = pipe.execute()
    out = []
    for n, (reason, waits_for) in enumerate(WAITS_FOR.items()):
        count, head = replies[2 * n], replies[2 * n + 1]
        oldest = _renewal(head[0][0], head[0][1], waits_for) if head else None
        out.append(WaitingCount(waits_for, reason, int(count), oldest))
    return out


def list_waiting_renewals(client: redis.Redis, keys: Keys, *, limit: int = 50) -> list[WaitingRenewal]:
    """The longest-waiting renewals of every kind, oldest first, at most ``limit`` of each kind."""
    out = []
    for reason, waits_for in WAITS_FOR.items():
        rows = client.zrange(keys.waiting(reason), 0, max(limit, 1) - 1, withscores=True) if limit > 0 else []
        out += [_renewal(member, score, waits_for) for member, score in rows]
    return sorted(out, key=lambda item: item.since)
