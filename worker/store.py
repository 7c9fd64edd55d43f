"""The current state in Redis: partners, clients and renewals, applied once, in event-time order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import redis
from pydantic import BaseModel

from .errors import TransientError
from .events import (
    TRUSTED,
    ClientData,
    ClientOwnerChanged,
    ClientServicesEnded,
    ClientUpdated,
    Event,
    OwnerData,
    PartnerData,
    PartnerUpdated,
    RenewalData,
    RenewalRemoved,
    RenewalUpdated,
)
from .keys import SEP, Keys
from .scripts import LuaScript, run_pipeline

__all__ = [
    "ApplyOutcome",
    "ClientState",
    "DeadLetter",
    "RenewalState",
    "Store",
    "dirty_member",
    "from_micros",
    "micros",
    "parse_dirty_member",
    "parse_stored",
]

ApplyOutcome = Literal["applied", "duplicate", "stale", "already_ended"]
M = TypeVar("M", bound=BaseModel)

# Dedupe, the staleness check, the write and marking what must be re-planned happen in one
# script, so two workers applying events for the same thing at once cannot interleave and leave
# an older state behind, and no applied change can miss its re-plan. Ties on occurred_at are
# broken by event id, so every worker converges on the same state.
_APPLY = """
-- KEYS: seen, record, dirty, stats, index sets...
-- ARGV: event_id, ttl_s, ts, mode, data, dirty member, now_ms, index members...
local function done(outcome)
  redis.call('SET', KEYS[1], outcome, 'EX', ARGV[2])
  redis.call('HINCRBY', KEYS[4], outcome, 1)
  return outcome
end
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HINCRBY', KEYS[4], 'duplicate', 1)
  return 'duplicate'
end
local mode = ARGV[4]
if mode == 'final' then
  if redis.call('HEXISTS', KEYS[2], 'ts') == 1 then return done('already_ended') end
else
  local cur = redis.call('HMGET', KEYS[2], 'ts', 'eid')
  if cur[1] then
    local cts = tonumber(cur[1])
    local nts = tonumber(ARGV[3])
    if nts < cts or (nts == cts and ARGV[1] <= cur[2]) then return done('stale') end
  end
end
if mode == 'remove' then
  redis.call('HSET', KEYS[2], 'ts', ARGV[3], 'eid', ARGV[1], 'removed', '1')
else
  redis.call('HSET', KEYS[2], 'ts', ARGV[3], 'eid', ARGV[1], 'data', ARGV[5], 'removed', '0')
end
for i = 5, #KEYS do redis.call('SADD', KEYS[i], ARGV[i + 3]) end
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[6])
return done('applied')
"""


DirtyKind = Literal["renewal", "client", "partner"]


def dirty_member(kind: DirtyKind, partner_id: str, item_id: str = "") -> str:
    """What to re-plan: one renewal, every renewal of a client, or every renewal of a partner."""
    return SEP.join((kind, partner_id, item_id))


def parse_dirty_member(member: bytes | str) -> tuple[DirtyKind, str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    kind, partner_id, item_id = text.split(SEP)
    return kind, partner_id, item_id  # type: ignore[return-value]


def micros(moment: datetime) -> int:
    """Microseconds since the epoch: exact, comparable in Lua (well below 2**53)."""
    delta = moment - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True)
class ClientState:
    """What is known of one client: details, owner override and whether its services ended."""

    client_id: str
    client: ClientData | None
    override: OwnerData | None
    services_ended: bool
    ended_at: datetime | None = None


@dataclass(frozen=True)
class RenewalState:
    renewal: RenewalData | None
    removed: bool
    updated_at: datetime | None


@dataclass(frozen=True)
class DeadLetter:
    received_at: str
    reason: str
    errors: list[tuple[str, str]]
    raw: str


def from_micros(ts: bytes | None) -> datetime | None:
    if ts is None:
        return None
    value = int(ts)
    return datetime.fromtimestamp(value // 1_000_000, tz=UTC).replace(microsecond=value % 1_000_000)


class Store:
    """Reads and writes the worker's state; every write that races another is one atomic script."""

    def __init__(self, client: redis.Redis, *, keys: Keys, event_id_ttl_s: int, dead_letter_max: int = 100_000):
        self.redis = client
        self.keys = keys
        self.event_id_ttl_s = event_id_ttl_s
        self.dead_letter_max = dead_letter_max
        self._apply = LuaScript(client, _APPLY)

    # -- writing -------------------------------------------------------------------------------

    def load_scripts(self) -> None:
        """For callers that queue ``apply`` on a pipeline, where NOSCRIPT cannot be retried per call."""
        self._apply.load()

    def apply(self, event: Event, *, now: datetime | None = None) -> ApplyOutcome:
        """Apply one valid event unless it is a repeat or older than what is stored.

        An applied event also marks what it touched (a renewal, a client's renewals, a partner's
        renewals) in the dirty set, which planning drains in batches (Planning.flush).
        """
        keys, args = self._apply_call(event, now_ms=micros(now or datetime.now(UTC)) // 1000)
        try:
            outcome = self._apply(keys=keys, args=args)
        except redis.ConnectionError as exc:
            raise TransientError(f"Redis unavailable: {exc}") from exc
        return _outcome(outcome)

    def apply_many(self, events: Sequence[Event], *, now: datetime | None = None) -> list[ApplyOutcome]:
        """Apply several valid events in one round trip; each outcome is what ``apply`` would return.

        Each event is still its own atomic script, in the order given. If the round trip fails
        part way, running it all again is safe: the events already applied come back duplicate.
        """
        if not events:
            return []
        now_ms = micros(now or datetime.now(UTC)) // 1000
        calls = [self._apply_call(event, now_ms=now_ms) for event in events]

        def build(pipe: redis.client.Pipeline) -> None:
            for keys, args in calls:
                self._apply.queue(pipe, keys=keys, args=args)

        try:
            # On NOSCRIPT the whole pipeline runs again: safe, as the scripts that ran see their
            # event ids as seen and change nothing.
            outcomes = run_pipeline(self.redis, build, [self._apply])
        except redis.ConnectionError as exc:
            raise TransientError(f"Redis unavailable: {exc}") from exc
        return [_outcome(outcome) for outcome in outcomes]

    def _apply_call(self, event: Event, *, now_ms: int) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the apply script for one event."""
        k = self.keys
        pid = event.partner_id
        record: str
        dirty: str
        index: list[tuple[str, str]] = [(k.partners(), pid)]
        mode = "set"
        data = ""
        if isinstance(event, PartnerUpdated):
            record = k.partner(pid)
            dirty = dirty_member("partner", pid)
        elif isinstance(event, ClientUpdated):
            record = k.client(pid, event.data.client_id)
            index.append((k.partner_clients(pid), event.data.client_id))
        elif isinstance(event, ClientOwnerChanged):
            record = k.owner(pid, event.data.client_id)
            index.append((k.partner_clients(pid), event.data.client_id))
        elif isinstance(event, ClientServicesEnded):
            record = k.ended(pid, event.data.client_id)
            index.append((k.partner_clients(pid), event.data.client_id))
            mode = "final"
        elif isinstance(event, RenewalUpdated):
            record = k.renewal(pid, event.data.renewal_id)
            dirty = dirty_member("renewal", pid, event.data.renewal_id)
            index.append((k.partner_renewals(pid), event.data.renewal_id))
            index.append((k.client_renewals(pid, event.data.client_id), event.data.renewal_id))
        elif isinstance(event, RenewalRemoved):
            record = k.renewal(pid, event.data.renewal_id)
            dirty = dirty_member("renewal", pid, event.data.renewal_id)
            mode = "remove"
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"unhandled event {type(event).__name__}")
        if isinstance(event, (ClientUpdated, ClientOwnerChanged, ClientServicesEnded)):
            dirty = dirty_member("client", pid, event.data.client_id)
        if mode == "set":
            data = event.data.model_dump_json()
        keys = [k.seen(event.event_id), record, k.dirty(), k.event_stats(), *(key for key, _ in index)]
        args: list[Any] = [event.event_id, self.event_id_ttl_s, micros(event.occurred_at), mode, data, dirty, now_ms]
        args.extend(member for _, member in index)
        return keys, args

    def add_dead_letter(self, raw: str, reason: str, errors: Iterable[tuple[str, str]], *, now: datetime) -> None:
        self.add_dead_letters([(raw, reason, list(errors))], now=now)

    def add_dead_letters(self, rejected: Sequence[tuple[str, str, list[tuple[str, str]]]], *, now: datetime) -> None:
        """Keep each ``(raw, reason, errors)`` as its own dead letter, in order, in one round trip."""
        if not rejected:
            return
        received_at = now.isoformat()
        entries = [
            json.dumps({"received_at": received_at, "reason": reason, "errors": errors, "raw": raw})
            for raw, reason, errors in rejected
        ]
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpush(self.keys.dead_letters(), *entries)
            pipe.incrby(self.keys.dead_letter_count(), len(entries))
            pipe.ltrim(self.keys.dead_letters(), 0, self.dead_letter_max - 1)
            pipe.execute()

    # -- reading -------------------------------------------------------------------------------

    def event_stats(self) -> dict[str, int]:
        """How many events were applied, duplicate, stale or already_ended, and dead-lettered (total)."""
        stats = {key.decode(): int(value) for key, value in self.redis.hgetall(self.keys.event_stats()).items()}
        stats["dead_lettered"] = int(self.redis.get(self.keys.dead_letter_count()) or 0)
        return stats

    def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        """The newest dead letters first."""
        rows = self.redis.lrange(self.keys.dead_letters(), 0, limit - 1)
        out = []
        for row in rows:
            item = json.loads(row)
            out.append(DeadLetter(item["received_at"], item["reason"], [tuple(e) for e in item["errors"]], item["raw"]))
        return out

    def partner(self, partner_id: str) -> PartnerData | None:
        return parse_stored(PartnerData, self.redis.hget(self.keys.partner(partner_id), "data"))

    def client_state(self, partner_id: str, client_id: str) -> ClientState:
        k = self.keys
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hget(k.client(partner_id, client_id), "data")
            pipe.hget(k.owner(partner_id, client_id), "data")
            pipe.hget(k.ended(partner_id, client_id), "ts")
            client_raw, owner_raw, ended_ts = pipe.execute()
        return ClientState(
            client_id=client_id,
            client=parse_stored(ClientData, client_raw),
            override=parse_stored(OwnerData, owner_raw),
            services_ended=ended_ts is not None,
            ended_at=from_micros(ended_ts),
        )

    def renewal_state(self, partner_id: str, renewal_id: str) -> RenewalState:
        raw = self.redis.hmget(self.keys.renewal(partner_id, renewal_id), ["data", "removed", "ts"])
        return RenewalState(
            renewal=parse_stored(RenewalData, raw[0]), removed=raw[1] == b"1", updated_at=from_micros(raw[2])
        )

    def partner_ids(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.keys.partners()))

    def client_ids(self, partner_id: str) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.keys.partner_clients(partner_id)))

    def renewal_ids(self, partner_id: str, client_id: str | None = None) -> list[str]:
        """Renewal ids of a partner, or of one client (a superset: a renewal may have moved client)."""
        key = (
            self.keys.partner_renewals(partner_id)
            if client_id is None
            else self.keys.client_renewals(partner_id, client_id)
        )
        return sorted(m.decode() for m in self.redis.smembers(key))


def _outcome(reply: bytes | str) -> ApplyOutcome:
    return reply.decode() if isinstance(reply, bytes) else reply  # type: ignore[return-value]


def parse_stored(cls: type[M], raw: bytes | None) -> M | None:
    """Read back a record this store wrote: it was validated on the way in, so costly checks are skipped."""
    return None if raw is None else cls.model_validate_json(raw, context=TRUSTED)
