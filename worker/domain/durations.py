"""Time differences as people read them in logs and errors: "36 days ahead", "4 min 10 s ago"."""

from __future__ import annotations

from datetime import timedelta

__all__ = ["describe_age", "describe_duration"]


def describe_duration(delta: timedelta) -> str:
    """The size of ``delta`` in its two largest units, rounded down: "36 days", "2 h 5 min", "40 s"."""
    seconds = int(abs(delta.total_seconds()))
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    if days >= 2:
        return f"{days} days"
    if days:
        return f"1 day {hours} h" if hours else "1 day"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    if seconds:
        return f"{secs} s"
    return f"{abs(delta.total_seconds()) * 1000:.0f} ms"


def describe_age(moment_minus_now: timedelta) -> str:
    """ "36 days ahead" for a moment after now, "36 days ago" for one before it."""
    text = describe_duration(moment_minus_now)
    return f"{text} ahead" if moment_minus_now > timedelta(0) else f"{text} ago"
