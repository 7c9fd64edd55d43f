"""The rule file's ``digest:`` block: how often partner users get the digest, and what it covers (pure).

Its periods (when each digest is due) are worked out in ``digest_periods``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import time
from typing import TYPE_CHECKING, Literal, Protocol, get_args

if TYPE_CHECKING:
    from yaml.nodes import Node

__all__ = [
    "DEFAULT_HORIZON_DAYS",
    "DIGEST_OFF",
    "WEEKDAYS",
    "DigestCadence",
    "DigestRule",
    "check_digest",
]

DigestCadence = Literal["weekly", "daily", "off"]
CADENCES: tuple[str, ...] = get_args(DigestCadence)
WEEKDAYS: tuple[str, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
DEFAULT_HORIZON_DAYS = 60
_MAX_HORIZON_DAYS = 366
_KEYS = frozenset({"every", "weekday", "send_time", "horizon_days", "send_when_empty"})
_BOOLEANS = {"true": True, "false": False}


@dataclass(frozen=True)
class DigestRule:
    """How often partner users get the "renewals requiring action" digest, and what it covers.

    ``weekday`` is 0 for Monday (``date.weekday()``); ``send_time`` is the partner's local time.
    """

    every: DigestCadence = "off"
    weekday: int = 0
    send_time: time = time(8, 0)
    horizon_days: int = DEFAULT_HORIZON_DAYS
    send_when_empty: bool = False

    def __post_init__(self) -> None:
        if self.every not in CADENCES:
            raise ValueError(f"every must be one of {CADENCES}, not {self.every!r}")
        if not 0 <= self.weekday <= 6:
            raise ValueError("weekday must be from 0 (Monday) to 6 (Sunday)")
        if not 1 <= self.horizon_days <= _MAX_HORIZON_DAYS:
            raise ValueError(f"horizon_days must be from 1 to {_MAX_HORIZON_DAYS}")
        if self.send_time.tzinfo is not None:
            raise ValueError("send_time is the partner's local time and must not carry a time zone")


DIGEST_OFF = DigestRule()


class _NodeChecker(Protocol):
    """What ``check_digest`` needs of the rule file's checker (worker.domain.rules._Checker)."""

    def add(self, node: Node | None, field: str, message: str) -> None: ...

    def mapping(self, node: Node, field: str, allowed: frozenset[str], optional: frozenset[str]) -> dict[str, Node]: ...

    def text(self, node: Node | None, field: str) -> str | None: ...

    def integer(self, node: Node | None, field: str) -> int | None: ...

    def clock_time(self, node: Node | None, field: str) -> time | None: ...


def check_digest(checker: _NodeChecker, node: Node) -> DigestRule | None:
    """The ``digest:`` block of a rule file, each problem reported through ``checker`` with its line.

    The rule set is only built when the whole file has no problem, so a value found wrong here
    falls back to its default without building a half-valid rule.
    """
    fields = checker.mapping(node, "digest", _KEYS, optional=_KEYS - {"every"})
    every = checker.text(fields.get("every"), "digest.every")
    if every is not None and every not in CADENCES:
        checker.add(fields["every"], "digest.every", f"{every!r} is not one of: {', '.join(CADENCES)}")
    weekday = 0
    if "weekday" in fields:
        name = checker.text(fields["weekday"], "digest.weekday")
        if name is not None and name.lower() not in WEEKDAYS:
            checker.add(fields["weekday"], "digest.weekday", f"{name!r} is not a day such as monday")
        elif name is not None:
            weekday = WEEKDAYS.index(name.lower())
        if every == "daily":
            checker.add(fields["weekday"], "digest.weekday", "only used with every: weekly (a daily digest has none)")
    send_time = time(8, 0)
    if "send_time" in fields:
        send_time = checker.clock_time(fields["send_time"], "digest.send_time") or send_time
    horizon = DEFAULT_HORIZON_DAYS
    if "horizon_days" in fields:
        value = checker.integer(fields["horizon_days"], "digest.horizon_days")
        if value is not None and not 1 <= value <= _MAX_HORIZON_DAYS:
            checker.add(fields["horizon_days"], "digest.horizon_days", f"must be from 1 to {_MAX_HORIZON_DAYS}")
        elif value is not None:
            horizon = value
    send_when_empty = False
    if "send_when_empty" in fields:
        flag = checker.text(fields["send_when_empty"], "digest.send_when_empty")
        if flag is not None and flag.lower() not in _BOOLEANS:
            checker.add(fields["send_when_empty"], "digest.send_when_empty", f"{flag!r} is not true or false")
        elif flag is not None:
            send_when_empty = _BOOLEANS[flag.lower()]
    if every not in CADENCES:
        return None
    return DigestRule(every, weekday, send_time, horizon, send_when_empty)  # type: ignore[arg-type]
