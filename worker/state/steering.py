"""What operators change by hand: a failed reminder sent again, a planned one cancelled, dead letters
replayed or purged. Each step is atomic in Redis; the commands in `worker.ops.steering` record them."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, cast

import redis

from .keys import Keys
from .ledger import Ledger, Outcome
from .scripts import LuaScript
from .store import DeadLetter, dirty_member

__all__ = [
    "CancelResult",
    "DeadLetterRow",
    "RetryResult",
    "cancel_reminder",
    "dead_letter_rows",
    "remove_dead_letters",
    "retry_failed",
]

RetryResult = Literal["retrying", "not_failed", "no_outcome"]
CancelResult = Literal["cancelled", "already_final", "in_flight"]

# Only a failed outcome is removed (a sent one never is: the mail went out); the renewal is marked
# so the scheduler plans it again, and the delivery makes every send-time check again.
_RETRY = """
local raw = redis.call('HGET', KEYS[1], ARGV[1])
if not raw then return {'no_outcome', ''} end
if not string.find(raw, '"kind": "failed"', 1, true) then return {'not_failed', raw} end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
return {'retrying', raw}
"""


def retry_failed(
    client: redis.Redis, keys: Keys, partner_id: str, renewal_id: str, reminder_id: str, *, now: datetime
) -> tuple[RetryResult, Outcome | None]:
    """Forget a ``failed`` outcome so the reminder is planned (and checked) again; returns what was there."""
    script = LuaScript(client, _RETRY)
    ledger_key = keys.ledger(partner_id, renewal_id)
    mark = dirty_member("renewal", partner_id, renewal_id)
    result, raw = script(
        keys=[ledger_key, keys.attempts(partner_id, renewal_id), keys.dirty()],
        args=[reminder_id, int(now.timestamp() * 1000), mark],
    )
    status = cast(RetryResult, result.decode() if isinstance(result, bytes) else result)
    return status, (Outcome.from_json(raw) if raw else None)


def cancel_reminder(
    ledger: Ledger, partner_id: str, renewal_id: str, reminder_id: str, *, reason: str, by: str, now: datetime
) -> tuple[CancelResult, Outcome | None]:
    """Record a not yet final reminder as skipped (cancelled by an operator); refused while it is being sent."""
    existing = ledger.outcome(partner_id, renewal_id, reminder_id)
    if existing is not None:
        return "already_final", existing
    if ledger.redis.exists(ledger.keys.lease(partner_id, renewal_id, reminder_id)):
        return "in_flight", None
    outcome = Outcome("skipped", now, reason=f"cancelled by an operator: {reason}", extra={"by": by})
    written = ledger.finish(partner_id, renewal_id, reminder_id, outcome, plan_next=True)
    if not written:
        return "already_final", ledger.outcome(partner_id, renewal_id, reminder_id)
    return "cancelled", outcome


@dataclass(frozen=True)
class DeadLetterRow:
    """A dead letter with its id (a digest of the stored row, stable while it is kept) and the row itself."""

    id: str
    letter: DeadLetter
    row: bytes


def _row_id(row: bytes) -> str:
    return hashlib.sha1(row).hexdigest()[:12]


def dead_letter_rows(client: redis.Redis, keys: Keys, limit: int | None = None) -> list[DeadLetterRow]:
    """Dead letters newest first (by when they were received; the list's order breaks ties)."""
    rows = cast(list[bytes], client.lrange(keys.dead_letters(), 0, -1 if limit is None else limit - 1))
    out = []
    for row in rows:
        item = json.loads(row)
        letter = DeadLetter(item["received_at"], item["reason"], [tuple(e) for e in item["errors"]], item["raw"])
        out.append(DeadLetterRow(_row_id(row), letter, row))
    # Workers push with their own clocks, so the list alone can be out of time order; sorted() is
    # stable, so rows of one batch (same time) keep the list's order.
    out.sort(key=lambda r: datetime.fromisoformat(r.letter.received_at), reverse=True)
    return out


def remove_dead_letters(client: redis.Redis, keys: Keys, rows: Sequence[DeadLetterRow] | Collection[bytes]) -> int:
    """Remove these rows from the dead letters (one each); returns how many went."""
    raw = [r.row if isinstance(r, DeadLetterRow) else r for r in rows]
    if not raw:
        return 0
    with client.pipeline(transaction=True) as pipe:
        for row in raw:
            pipe.lrem(keys.dead_letters(), 1, row)  # type: ignore[arg-type]  # redis-py accepts bytes
        return sum(int(n) for n in pipe.execute())
