"""The history: every final outcome, deferral and steering command, in a Redis Stream trimmed by age.

Entries are written beside the ledger's own commands (one more command in the same pipeline), so
keeping the history costs no round trip of its own on the delivery path.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, cast

import redis

from .alarms import queue_outcome_counts
from .keys import Keys

__all__ = [
    "ATTEMPTS_TTL_S",
    "History",
    "HistoryEntry",
    "HistoryFilter",
    "HistoryKind",
    "ReminderAttempts",
]

HistoryKind = Literal["outcome", "deferral", "steering"]

# A reminder's count of deferred attempts outlives any retry schedule (the longest backoff is minutes).
ATTEMPTS_TTL_S = 30 * 86_400


# The order of the values in a stream entry's one field (``HistoryEntry.to_fields``).
_FIELDS = (
    "kind",
    "at",
    "outcome",
    "partner",
    "client",
    "renewal",
    "reminder",
    "reason",
    "to",
    "cc",
    "message_id",
    "reply",
    "attempt",
    "by",
    "uid",
)


@dataclass(frozen=True)
class HistoryEntry:
    """One line of the history. ``outcome`` is the ledger's kind (sent, skipped, suppressed, failed),
    ``deferred`` for a deferral, or the steering command's name; ``id`` is the stream's, once read.

    ``uid`` names the entry itself: a pipeline run again whole after NOSCRIPT (a Redis that forgot
    its scripts, or a fresh one) writes its XADDs twice, and readers drop the second by its uid.
    """

    kind: HistoryKind
    at: datetime
    outcome: str
    partner: str = ""
    client: str = ""
    renewal: str = ""
    reminder: str = ""
    reason: str = ""
    to: tuple[str, ...] = ()
    cc: tuple[str, ...] = ()
    message_id: str = ""
    reply: str = ""
    attempt: int = 0
    by: str = ""
    id: str = ""
    uid: str = field(default_factory=lambda: os.urandom(8).hex())

    def to_fields(self) -> dict[str, str]:
        """The stream fields: one, ``e``, a JSON array of the values in ``_FIELDS``'s order.

        One field keeps the XADD short (packing a command costs redis-py about half a microsecond an
        argument: 33 arguments were a quarter of the history's cost) and every entry the same field
        name, which Redis stores once per stream node. Entries written as one field per value (before
        2026-12-04) are still read.
        """
        values = {name: getattr(self, name) for name in _FIELDS}
        values.update(at=self.at.isoformat(), to=list(self.to), cc=list(self.cc))
        return {"e": json.dumps([values[name] for name in _FIELDS], ensure_ascii=False, separators=(",", ":"))}

    @classmethod
    def from_fields(cls, entry_id: bytes | str, data: dict[bytes, bytes]) -> HistoryEntry:
        raw = data.get(b"e")
        if raw is not None:
            text = dict(zip(_FIELDS, json.loads(raw), strict=False))
        else:
            text = {k.decode(): v.decode() for k, v in data.items()}
            text["to"] = [a for a in text.get("to", "").split(",") if a]
            text["cc"] = [a for a in text.get("cc", "").split(",") if a]
        return cls(
            kind=text.get("kind", "outcome"),
            at=datetime.fromisoformat(text["at"]),
            outcome=text.get("outcome", ""),
            partner=text.get("partner", ""),
            client=text.get("client", ""),
            renewal=text.get("renewal", ""),
            reminder=text.get("reminder", ""),
            reason=text.get("reason", ""),
            to=tuple(text.get("to", ())),
            cc=tuple(text.get("cc", ())),
            message_id=text.get("message_id", ""),
            reply=text.get("reply", ""),
            attempt=int(text.get("attempt", 0) or 0),
            by=text.get("by", ""),
            id=entry_id.decode() if isinstance(entry_id, bytes) else entry_id,
            uid=text.get("uid", ""),
        )

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["at"] = self.at.isoformat()
        data["to"] = list(self.to)
        data["cc"] = list(self.cc)
        return data


@dataclass(frozen=True)
class HistoryFilter:
    """What ``renewals history`` asks for; an empty field matches everything."""

    partner: str = ""
    client: str = ""
    renewal: str = ""
    outcome: str = ""
    since: datetime | None = None

    def matches(self, entry: HistoryEntry) -> bool:
        for name in ("partner", "client", "renewal", "outcome"):
            wanted = getattr(self, name)
            if wanted and getattr(entry, name) != wanted:
                return False
        return self.since is None or entry.at >= self.since


@dataclass(frozen=True)
class ReminderAttempts:
    """A reminder's deferred attempts so far and the last error, for ``renewals plan``."""

    attempts: int
    last_error: str
    at: datetime


class History:
    """Appends to and reads the history stream; entries older than ``days`` are trimmed as new ones come."""

    def __init__(self, client: redis.Redis, keys: Keys, *, days: int = 90) -> None:
        if days < 1:
            raise ValueError("days must be at least 1")
        self.redis = client
        self.keys = keys
        self.days = days

    def _min_id(self) -> int:
        # Stream ids are Redis's own time in milliseconds, so the age limit is wall-clock time, not
        # the worker's clock (which runs virtual, years ahead, in `renewals simulate`).
        return int(time.time() * 1000) - self.days * 86_400_000

    def queue(self, pipe: redis.client.Pipeline, entries: Sequence[HistoryEntry]) -> int:
        """Add the entries to a pipeline the caller runs anyway (one XADD each, trimming as it goes,
        and a deferral counted for `status`); returns how many replies that adds."""
        if not entries:
            return 0
        min_id = self._min_id()
        count = 0
        for entry in entries:
            pipe.xadd(self.keys.history(), entry.to_fields(), minid=min_id, approximate=True)  # type: ignore[arg-type]
            count += 1
            if entry.kind == "deferral":
                count += queue_outcome_counts(pipe, self.keys, {"deferred": 1}, at=entry.at)
            if entry.kind == "deferral" and entry.partner and entry.renewal and entry.reminder:
                # Kept on the reminder too, so `plan` shows attempts and the last error without a scan.
                key = self.keys.attempts(entry.partner, entry.renewal)
                value = {
                    "attempts": entry.attempt,
                    "last_error": entry.reply or entry.reason,
                    "at": entry.at.isoformat(),
                }
                pipe.hset(key, entry.reminder, json.dumps(value))
                pipe.expire(key, ATTEMPTS_TTL_S)
                count += 2
        return count

    def append(self, *entries: HistoryEntry) -> None:
        """Write entries in a round trip of their own (steering commands, expired leases)."""
        with self.redis.pipeline(transaction=False) as pipe:
            self.queue(pipe, entries)
            pipe.execute()

    def attempts(self, partner_id: str, renewal_id: str) -> dict[str, ReminderAttempts]:
        raw = cast(dict[bytes, bytes], self.redis.hgetall(self.keys.attempts(partner_id, renewal_id)))
        out = {}
        for key, value in raw.items():
            data = json.loads(value)
            out[key.decode()] = ReminderAttempts(
                int(data["attempts"]), data["last_error"], datetime.fromisoformat(data["at"])
            )
        return out

    def entries(self, query: HistoryFilter | None = None, *, page: int = 500) -> Iterator[HistoryEntry]:
        """Entries matching ``query``, newest first (read in pages, so a small limit reads little)."""
        query = query or HistoryFilter()
        # An entry's id is when Redis wrote it, at or after its ``at``: older ids cannot match --since.
        # Entries past HISTORY_DAYS that approximate trimming left (it drops whole nodes) are not shown.
        low_ms = self._min_id()
        if query.since is not None:
            low_ms = max(low_ms, int(query.since.astimezone(UTC).timestamp() * 1000))
        low = str(low_ms)
        high = "+"
        seen: set[str] = set()
        while True:
            rows = cast(
                list[tuple[bytes, dict[bytes, bytes]]],
                self.redis.xrevrange(self.keys.history(), max=high, min=low, count=page),
            )
            for entry_id, data in rows:
                entry = HistoryEntry.from_fields(entry_id, data)
                if entry.uid:
                    if entry.uid in seen:
                        continue  # the same entry written twice (see HistoryEntry)
                    if len(seen) > 100_000:  # repeats are written moments apart: a recent window is enough
                        seen.clear()
                    seen.add(entry.uid)
                if query.matches(entry):
                    yield entry
            if len(rows) < page:
                return
            high = "(" + rows[-1][0].decode()

    def size(self) -> int:
        return int(self.redis.xlen(self.keys.history()))
