"""The current state in Redis: partners, clients and renewals, applied once, in event-time order."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import redis
from pydantic import BaseModel

from ..domain.errors import TransientError
from ..domain.events import (
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
from .keys import CLIENT_BUCKETS, SEP, Keys
from .records import StoredRecord, decode_payload, encode_payload, read_record, ts_text
from .scripts import LuaScript, run_pipeline

__all__ = [
    "SEEN_BUCKETS",
    "ApplyOutcome",
    "ClientState",
    "DeadLetter",
    "RenewalState",
    "Store",
    "client_state_of",
    "dirty_member",
    "event_id_digest",
    "micros",
    "parse_dirty_member",
    "parse_stored",
    "renewal_state",
]

ApplyOutcome = Literal["applied", "duplicate", "stale", "already_ended"]
M = TypeVar("M", bound=BaseModel)

# Dedupe, the staleness check, the write and marking what must be re-planned happen in one
# script, so two workers applying events for the same thing at once cannot interleave and leave
# an older state behind, and no applied change can miss its re-plan. Ties on occurred_at are
# broken by event id, so every worker converges on the same state. Records are laid out as
# worker/records.py says; a removal keeps the last payload (what the renewal was) and sets the flag.
# Every event id applied or refused is remembered, so that an id reused for another record is a
# duplicate for the whole window, not only once it stops being its record's latest (whose repeat
# the record's own stamp also finds, for as long as it is the latest). An id is kept as a 52-bit
# digest (two polynomial hashes modulo primes below 2**26: exact in Lua's doubles, and two ids
# that differ in one character never collide) in one of SEEN_BUCKETS sets per time slice, so
# that each set stays an intset: 8 bytes an id (and some 90 a set: under 1 MB for all of them),
# where the id itself in a hashtable set costs some 90. A superseded id is remembered again in the current slice, so it
# is known for the configured time after it was replaced. The bucket of that id is only known
# here, so its set is named here (ARGV[11] is the current slice's name; standalone Redis only,
# as the rest of the worker).
_APPLY = """
-- KEYS: record, dirty, stats, partners, renewals by client, the event id's bucket in each seen
--       slice (the current one first)
-- ARGV: event_id, ts, mode, payload, dirty member, now_ms, current slice's TTL (ms), partner id,
--       client id to index ('' = none), renewal id to index under it ('' = none),
--       current slice's key ('<bucket>' appended), bucket count
local SEP = '\\31'
local function stamp_ts(text)  -- Lua 5.1's tonumber(text, 36) takes no sign
  if string.sub(text, 1, 1) == '-' then return -tonumber(string.sub(text, 2), 36) end
  return tonumber(text, 36)
end
local function digest(event_id)  -- event_id_digest() in Python computes the same
  local a, b = 0, 0
  for i = 1, #event_id do
    local c = string.byte(event_id, i)
    a = (a * 257 + c) % 67108859
    b = (b * 263 + c) % 67108837
  end
  return a * 67108864 + b
end
local function remember(event_id)
  local d = digest(event_id)
  local key = ARGV[11] .. ':' .. string.format('%d', d % tonumber(ARGV[12]))
  redis.call('SADD', key, string.format('%d', d))
  redis.call('PEXPIRE', key, ARGV[7])
end
local function done(outcome)
  redis.call('HINCRBY', KEYS[3], outcome, 1)
  return outcome
end
local mode = ARGV[3]
local cur = redis.call('GET', KEYS[1])
local cts, ceid, old
if cur then
  cts, ceid, old = string.match(cur, '^(-?%w+)\\31([^\\31]*)\\31[01](.*)$')
  if ceid == ARGV[1] then return done('duplicate') end
end
local own = string.format('%d', digest(ARGV[1]))
for i = 6, #KEYS do
  if redis.call('SISMEMBER', KEYS[i], own) == 1 then return done('duplicate') end
end
local payload = ARGV[4]
if cur then
  if mode == 'final' then
    remember(ARGV[1])
    return done('already_ended')
  end
  local nts = stamp_ts(ARGV[2])
  cts = stamp_ts(cts)
  if nts < cts or (nts == cts and ARGV[1] < ceid) then
    remember(ARGV[1])
    return done('stale')
  end
  if mode == 'remove' then payload = old end
  remember(ceid)
end
remember(ARGV[1])
redis.call('SET', KEYS[1], ARGV[2] .. SEP .. ARGV[1] .. SEP .. (mode == 'remove' and '1' or '0') .. payload)
redis.call('SADD', KEYS[4], ARGV[8])
local cid, rid = ARGV[9], ARGV[10]
if cid ~= '' then
  local ids = redis.call('HGET', KEYS[5], cid)
  if not ids then
    redis.call('HSET', KEYS[5], cid, rid)
  elseif rid ~= '' and not string.find(SEP .. ids .. SEP, SEP .. rid .. SEP, 1, true) then
    redis.call('HSET', KEYS[5], cid, ids == '' and rid or ids .. SEP .. rid)
  end
end
redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
return done('applied')
"""

# Ids are remembered (from when an event is applied, superseded or refused) for at least the
# configured time and at most 1/_SEEN_SLICES longer.
_SEEN_SLICES = 8
# Sets per slice: each stays an intset (set-max-intset-entries, 512) up to some 500,000 ids a slice.
SEEN_BUCKETS = 1024


def event_id_digest(event_id: str) -> int:
    """The 52-bit digest an event id is remembered by (the apply script computes the same)."""
    a = b = 0
    for c in event_id.encode():
        a = (a * 257 + c) % 67108859
        b = (b * 263 + c) % 67108837
    return a * 67108864 + b


DirtyKind = Literal["renewal", "client", "partner", "bucket"]


def dirty_member(kind: DirtyKind, partner_id: str, item_id: str = "") -> str:
    """What to re-plan: one renewal, every renewal of a client, every renewal of a partner, or the
    renewals of one of a partner's index hashes (``item_id`` its number: a partner mark is split
    into these, so that re-planning a large partner is done in parts between due claims)."""
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


class Store:
    """Reads and writes the worker's state; every write that races another is one atomic script."""

    def __init__(self, client: redis.Redis, *, keys: Keys, event_id_ttl_s: int, dead_letter_max: int = 100_000):
        self.redis = client
        self.keys = keys
        self.event_id_ttl_s = event_id_ttl_s
        self.dead_letter_max = dead_letter_max
        self._apply = LuaScript(client, _APPLY)

    # -- writing -------------------------------------------------------------------------------

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
        indexed_client = indexed_renewal = ""
        mode = "set"
        payload = b""
        if isinstance(event, PartnerUpdated):
            record = k.partner(pid)
            dirty = dirty_member("partner", pid)
        elif isinstance(event, ClientUpdated):
            record = k.client(pid, event.data.client_id)
        elif isinstance(event, ClientOwnerChanged):
            record = k.owner(pid, event.data.client_id)
        elif isinstance(event, ClientServicesEnded):
            record = k.ended(pid, event.data.client_id)
            mode = "final"
        elif isinstance(event, RenewalUpdated):
            record = k.renewal(pid, event.data.renewal_id)
            dirty = dirty_member("renewal", pid, event.data.renewal_id)
            indexed_client, indexed_renewal = event.data.client_id, event.data.renewal_id
        elif isinstance(event, RenewalRemoved):
            record = k.renewal(pid, event.data.renewal_id)
            dirty = dirty_member("renewal", pid, event.data.renewal_id)
            mode = "remove"
        else:  # pragma: no cover - the union is closed
            raise TypeError(f"unhandled event {type(event).__name__}")
        if isinstance(event, (ClientUpdated, ClientOwnerChanged, ClientServicesEnded)):
            dirty = dirty_member("client", pid, event.data.client_id)
            indexed_client = event.data.client_id
        if mode == "set":
            payload = encode_payload(event.data)
        bucket = event_id_digest(event.event_id) % SEEN_BUCKETS
        seen, seen_ttl_ms = self._seen_slices(now_ms)
        keys = [record, k.dirty(), k.event_stats(), k.partners(), k.renewals_by_client(pid, indexed_client)]
        keys += [f"{key}:{bucket}" for key in seen]
        args: list[Any] = [
            event.event_id,
            ts_text(micros(event.occurred_at)),
            mode,
            payload,
            dirty,
            now_ms,
            seen_ttl_ms,
            pid,
            indexed_client,
            indexed_renewal,
            seen[0],
            SEEN_BUCKETS,
        ]
        return keys, args

    def _seen_slices(self, now_ms: int) -> tuple[list[str], int]:
        """The sets of event ids to check (the current slice first) and how long the current one must live.

        An id added at ``now_ms`` is found until its slice leaves the window, between
        ``event_id_ttl_s`` and ``1 + 1/_SEEN_SLICES`` times that from now; the slice width is in
        the key, so a changed TTL never mixes slices of two widths.
        """
        slice_ms = -(-self.event_id_ttl_s * 1000 // _SEEN_SLICES)
        current = now_ms // slice_ms
        keys = [self.keys.seen(slice_ms, current - back) for back in range(_SEEN_SLICES + 1)]
        return keys, (current + _SEEN_SLICES + 1) * slice_ms - now_ms

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
        return parse_stored(PartnerData, self.redis.get(self.keys.partner(partner_id)))

    def client_state(self, partner_id: str, client_id: str) -> ClientState:
        k = self.keys
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.get(k.client(partner_id, client_id))
            pipe.get(k.owner(partner_id, client_id))
            pipe.get(k.ended(partner_id, client_id))
            client, owner, ended = (read_record(raw) for raw in pipe.execute())
        return client_state_of(client_id, client, owner, ended)

    def renewal_state(self, partner_id: str, renewal_id: str) -> RenewalState:
        return renewal_state(read_record(self.redis.get(self.keys.renewal(partner_id, renewal_id))))

    def partner_ids(self) -> list[str]:
        return sorted(m.decode() for m in self.redis.smembers(self.keys.partners()))

    def client_ids(self, partner_id: str) -> list[str]:
        with self.redis.pipeline(transaction=False) as pipe:
            for bucket in range(CLIENT_BUCKETS):
                pipe.hkeys(self.keys.renewals_by_client_bucket(partner_id, bucket))
            return sorted(m.decode() for keys in pipe.execute() for m in keys)

    def renewal_ids_in_bucket(self, partner_id: str, bucket: int) -> list[str]:
        """Renewal ids of the clients in one of a partner's index hashes (a chunk of a re-plan)."""
        joined = self.redis.hvals(self.keys.renewals_by_client_bucket(partner_id, bucket))
        return sorted({rid for ids in joined for rid in ids.decode().split(SEP) if rid})

    def renewal_ids(self, partner_id: str, client_id: str | None = None) -> list[str]:
        """Renewal ids of a partner, or of one client (a superset: a renewal may have moved client)."""
        if client_id is not None:
            joined = [self.redis.hget(self.keys.renewals_by_client(partner_id, client_id), client_id) or b""]
        else:
            with self.redis.pipeline(transaction=False) as pipe:
                for bucket in range(CLIENT_BUCKETS):
                    pipe.hvals(self.keys.renewals_by_client_bucket(partner_id, bucket))
                joined = [ids for values in pipe.execute() for ids in values]
        return sorted({rid for ids in joined for rid in ids.decode().split(SEP) if rid})


def client_state_of(
    client_id: str, client: StoredRecord | None, owner: StoredRecord | None, ended: StoredRecord | None
) -> ClientState:
    """A client as stored, from its three records: details, owner override, services ended."""
    return ClientState(
        client_id=client_id,
        client=None if client is None else decode_payload(ClientData, client.payload),
        override=None if owner is None else decode_payload(OwnerData, owner.payload),
        services_ended=ended is not None,
        ended_at=None if ended is None else ended.updated_at,
    )


def renewal_state(record: StoredRecord | None) -> RenewalState:
    """A renewal as stored; a removed one keeps what it was before the removal."""
    if record is None:
        return RenewalState(renewal=None, removed=False, updated_at=None)
    return RenewalState(
        renewal=decode_payload(RenewalData, record.payload), removed=record.removed, updated_at=record.updated_at
    )


def _outcome(reply: bytes | str) -> ApplyOutcome:
    return reply.decode() if isinstance(reply, bytes) else reply  # type: ignore[return-value]


def parse_stored(cls: type[M], raw: bytes | None) -> M | None:
    """Read back the model of a record this store wrote (strictly: another layout raises ``ValueError``)."""
    record = read_record(raw)
    return None if record is None else decode_payload(cls, record.payload)
