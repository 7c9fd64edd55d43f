"""A partner's digest periods: an ISO week (``digest/2026-W49``) or a day (``digest/2026-12-04``) in the
partner's time zone. The id names the digest in the send-once ledger, so each partner user gets at most
one per period. Pure: ``now`` is passed in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from .digest_schedule import DigestRule
from .planner import local_instant

__all__ = ["DigestPeriod", "current_period", "due_period", "next_due_at"]


@dataclass(frozen=True)
class DigestPeriod:
    """One period of a partner's digest: its ledger id, when it falls due and when the next one starts (UTC)."""

    id: str
    due_at: datetime
    ends_at: datetime
    local_day: date


def current_period(rule: DigestRule, tz: ZoneInfo, now: datetime) -> DigestPeriod | None:
    """The period ``now`` falls in, in the partner's time zone; None when digests are off."""
    if rule.every == "off":
        return None
    today = now.astimezone(tz).date()
    if rule.every == "daily":
        period_id, due_day, next_start = f"digest/{today.isoformat()}", today, today + timedelta(days=1)
    else:
        monday = today - timedelta(days=today.weekday())
        year, week, _ = today.isocalendar()
        period_id = f"digest/{year}-W{week:02d}"
        due_day, next_start = monday + timedelta(days=rule.weekday), monday + timedelta(days=7)
    due_at = local_instant(due_day, rule.send_time, tz)
    return DigestPeriod(period_id, due_at, local_instant(next_start, time(0), tz), today)


def due_period(rule: DigestRule, tz: ZoneInfo, now: datetime) -> DigestPeriod | None:
    """The current period when its digest is due at ``now``.

    Only the current period is ever due: after downtime one digest goes out late in its period,
    and the periods missed entirely are not made up (their content would be stale anyway).
    """
    period = current_period(rule, tz, now)
    return period if period is not None and period.due_at <= now < period.ends_at else None


def next_due_at(rule: DigestRule, tz: ZoneInfo, now: datetime) -> datetime | None:
    """The first instant after ``now`` at which a period's digest falls due (for a virtual clock)."""
    period = current_period(rule, tz, now)
    if period is None:
        return None
    if period.due_at > now:
        return period.due_at
    following = current_period(rule, tz, period.ends_at)
    return following.due_at if following is not None else None
