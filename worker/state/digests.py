"""The digest's state in Redis: a partner's renewals read in bulk, the period marks, and the ledger ids.

Digests use the send-once ledger of the reminders (claim, lease, finish) under a ledger id per
partner user that no renewal id can take: ids from events never hold control characters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date
from typing import TypeVar

import redis

from ..domain.digest import RenewalFacts, SentReminder
from ..domain.events import ClientData, OwnerData, PartnerData, RenewalData
from .keys import SEP
from .ledger import Outcome
from .records import decode_payload, payload_fields, read_record
from .scripts import LuaScript, run_pipeline
from .store import Store

__all__ = ["DigestState", "PartnerDigestState", "digest_ledger_id"]

# A partner's records are read this many at a time: one command (MGET, or the script) each.
_CHUNK = 1_000
T = TypeVar("T")

# HGETALL of many ledgers in one call: one reply (a flat field/value list) per key.
_READ_LEDGERS = """
local out = {}
for i, key in ipairs(KEYS) do out[i] = redis.call('HGETALL', key) end
return out
"""

# Marks a partner's period as enqueued unless it already is: of many schedulers, one enqueues it.
_CLAIM_PERIOD = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""


def digest_ledger_id(email: str) -> str:
    """Where one partner user's digests are recorded in the ledger (in place of a renewal id)."""
    return f"{SEP}digest{SEP}{email.casefold()}"


@dataclass(frozen=True)
class PartnerDigestState:
    """What a partner's digests are made from: its renewals (those asked for) with their clients and the
    reminders sent, and the owner overrides of its clients still served (who gets a digest)."""

    partner_id: str
    partner: PartnerData | None
    facts: tuple[RenewalFacts, ...]
    overrides: tuple[OwnerData, ...] = ()


class DigestState:
    """Reads what digests are made from and marks the periods enqueued."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis: redis.Redis = store.redis
        self.keys = store.keys
        self._claim_period = LuaScript(self.redis, _CLAIM_PERIOD)
        self._read_ledgers = LuaScript(self.redis, _READ_LEDGERS)

    def partner_timezones(self) -> list[tuple[str, str]]:
        """Every partner's id and time zone (``UTC`` before its settings arrived), in one round trip after
        the list of ids; the records are not validated again, only their time zone is read."""
        ids = self.store.partner_ids()
        out = []
        for chunk in _chunks(ids):
            for pid, raw in zip(chunk, self.redis.mget([self.keys.partner(pid) for pid in chunk]), strict=True):
                record = read_record(raw)
                fields = {} if record is None else payload_fields(PartnerData, record.payload)
                out.append((pid, str(fields.get("timezone") or "UTC")))
        return out

    def claim_periods(self, periods: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(partner id, period id)``: True when this call marked it enqueued (it was not yet)."""
        if not periods:
            return []
        key = self.keys.digest_periods()
        # Most looks find every due period already marked: one HMGET says so without a script call each.
        marked = self.redis.hmget(key, [pid for pid, _ in periods])
        todo = [
            i
            for i, ((_, period_id), mark) in enumerate(zip(periods, marked, strict=True))
            if mark != period_id.encode()
        ]
        claimed = [False] * len(periods)
        if not todo:
            return claimed

        def build(pipe: redis.client.Pipeline) -> None:
            for i in todo:
                self._claim_period.queue(pipe, keys=[key], args=list(periods[i]))

        for i, reply in zip(todo, run_pipeline(self.redis, build, [self._claim_period]), strict=True):
            claimed[i] = bool(reply)
        return claimed

    def outcomes(self, partner_id: str) -> list[tuple[str, str, Outcome]]:
        """Every digest outcome of a partner as ``(user email, period id, outcome)``, found by a SCAN of
        the ledger keys (for inspection and the simulation, not for the hot path)."""
        marker = digest_ledger_id("")
        pattern = _glob_escape(self.keys.ledger(partner_id, marker)[: -len(":ledger")]) + "*:ledger"
        found = []
        for key in self.redis.scan_iter(match=pattern, count=1_000):
            text = key.decode()
            email = text[text.index(marker) + len(marker) : -len(":ledger")]
            for period_id, raw in self.redis.hgetall(key).items():
                found.append((email, period_id.decode(), Outcome.from_json(raw)))
        return found

    def partner_state(
        self, partner_id: str, candidate: Callable[[str, date, bool], bool] = lambda status, start, removed: True
    ) -> PartnerDigestState:
        """The partner, the renewals that ``candidate(status, start_date, removed)`` accepts with their clients and
        the reminders sent, and the owner overrides of its clients still served.

        Built for a partner with tens of thousands of renewals: records are read with MGET and the
        ledgers with one script call per chunk (a command each costs more in redis-py than in
        Redis), and a client's details and a renewal's ledger only for the candidates.
        """
        k = self.keys
        partner = self.store.partner(partner_id)
        renewal_ids = self.store.renewal_ids(partner_id)
        candidates: list[tuple[RenewalData, bool]] = []
        client_ids: set[str] = set()
        for chunk in _chunks(renewal_ids):
            for raw in self.redis.mget([k.renewal(partner_id, rid) for rid in chunk]):
                record = read_record(raw)
                fields = {} if record is None else payload_fields(RenewalData, record.payload)
                if record is None or not fields:
                    continue
                client_ids.add(fields["client_id"])
                if candidate(fields["status"], date.fromisoformat(fields["start_date"]), record.removed):
                    renewal = decode_payload(RenewalData, record.payload)
                    if renewal is not None:
                        candidates.append((renewal, record.removed))
        served: dict[str, OwnerData | None] = {}
        for chunk in _chunks(sorted(client_ids)):
            keys = [key for cid in chunk for key in (k.owner(partner_id, cid), k.ended(partner_id, cid))]
            replies = self.redis.mget(keys)
            for n, cid in enumerate(chunk):
                owner, ended = read_record(replies[2 * n]), replies[2 * n + 1]
                if ended is None:
                    served[cid] = None if owner is None else decode_payload(OwnerData, owner.payload)
        wanted = sorted({renewal.client_id for renewal, _ in candidates})
        details: dict[str, ClientData | None] = {}
        for chunk in _chunks(wanted):
            for cid, raw in zip(chunk, self.redis.mget([k.client(partner_id, c) for c in chunk]), strict=True):
                record = read_record(raw)
                details[cid] = None if record is None else decode_payload(ClientData, record.payload)
        sent: list[tuple[SentReminder, ...]] = []
        for batch in _chunks(candidates):
            ledgers = self._read_ledgers(keys=[k.ledger(partner_id, r.renewal_id) for r, _ in batch], args=[])
            sent += [_sent(flat) for flat in ledgers]
        facts = tuple(
            RenewalFacts(
                renewal=renewal,
                removed=removed,
                client=details[renewal.client_id],
                override=served.get(renewal.client_id),
                services_ended=renewal.client_id not in served,
                sent=reminders,
            )
            for (renewal, removed), reminders in zip(candidates, sent, strict=True)
        )
        overrides = tuple(o for o in served.values() if o is not None)
        return PartnerDigestState(partner_id, partner, facts, overrides)


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _sent(flat: list[bytes]) -> tuple[SentReminder, ...]:
    """The reminders of a renewal's ledger (HGETALL's flat reply) that were sent; the others reached nobody."""
    sent = []
    for reminder_id, raw in zip(flat[::2], flat[1::2], strict=True):
        if b'"sent"' not in raw:  # most outcomes are skips: not worth parsing
            continue
        outcome = Outcome.from_json(raw)
        if outcome.kind == "sent":
            sent.append(SentReminder(reminder_id.decode(), outcome.at, outcome.to))
    return tuple(sent)
