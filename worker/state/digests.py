"""The digest's state in Redis: a partner's renewals read in bulk, the period marks, and the ledger ids.

Digests use the send-once ledger of the reminders (claim, lease, finish) under a ledger id per
partner user that no renewal id can take: ids from events never hold control characters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from ..domain.digest import RenewalFacts, SentReminder
from ..domain.events import PartnerData
from .keys import SEP
from .ledger import Outcome
from .records import decode_payload, read_record
from .scripts import LuaScript, run_pipeline
from .store import Store, client_state_of, renewal_state

__all__ = ["DigestState", "PartnerDigestState", "digest_ledger_id"]

# A partner's renewals are read this many at a time: one pipelined round trip each.
_CHUNK = 2_000

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
    """A partner and every renewal it has, with clients and the reminders sent: what a digest is made from."""

    partner_id: str
    partner: PartnerData | None
    facts: tuple[RenewalFacts, ...]


class DigestState:
    """Reads what digests are made from and marks the periods enqueued."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.redis: redis.Redis = store.redis
        self.keys = store.keys
        self._claim_period = LuaScript(self.redis, _CLAIM_PERIOD)

    def partners(self) -> list[tuple[str, PartnerData | None]]:
        """Every partner with its settings, in one round trip after the list of ids."""
        ids = self.store.partner_ids()
        with self.redis.pipeline(transaction=False) as pipe:
            for pid in ids:
                pipe.get(self.keys.partner(pid))
            raws = pipe.execute()
        out = []
        for pid, raw in zip(ids, raws, strict=True):
            record = read_record(raw)
            out.append((pid, None if record is None else decode_payload(PartnerData, record.payload)))
        return out

    def claim_periods(self, periods: Sequence[tuple[str, str]]) -> list[bool]:
        """For each ``(partner id, period id)``: True when this call marked it enqueued (it was not yet)."""
        if not periods:
            return []
        key = self.keys.digest_periods()

        def build(pipe: redis.client.Pipeline) -> None:
            for pid, period_id in periods:
                self._claim_period.queue(pipe, keys=[key], args=[pid, period_id])

        return [bool(reply) for reply in run_pipeline(self.redis, build, [self._claim_period])]

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

    def partner_state(self, partner_id: str) -> PartnerDigestState:
        """The partner and all its renewals, read in a few pipelined round trips (chunks of renewals)."""
        k = self.keys
        partner = self.store.partner(partner_id)
        renewal_ids = self.store.renewal_ids(partner_id)
        renewals = []
        for start in range(0, len(renewal_ids), _CHUNK):
            chunk = renewal_ids[start : start + _CHUNK]
            with self.redis.pipeline(transaction=False) as pipe:
                for rid in chunk:
                    pipe.get(k.renewal(partner_id, rid))
                    pipe.hgetall(k.ledger(partner_id, rid))
                replies = pipe.execute()
            for i in range(len(chunk)):
                state = renewal_state(read_record(replies[2 * i]))
                if state.renewal is not None:
                    renewals.append((state.renewal, state.removed, _sent(replies[2 * i + 1])))
        client_ids = sorted({renewal.client_id for renewal, _, _ in renewals})
        clients = {}
        for start in range(0, len(client_ids), _CHUNK):
            chunk = client_ids[start : start + _CHUNK]
            with self.redis.pipeline(transaction=False) as pipe:
                for cid in chunk:
                    pipe.get(k.client(partner_id, cid))
                    pipe.get(k.owner(partner_id, cid))
                    pipe.get(k.ended(partner_id, cid))
                replies = pipe.execute()
            for n, cid in enumerate(chunk):
                records = (read_record(raw) for raw in replies[3 * n : 3 * n + 3])
                clients[cid] = client_state_of(cid, *records)
        facts = []
        for renewal, removed, sent in renewals:
            client = clients[renewal.client_id]
            facts.append(
                RenewalFacts(
                    renewal=renewal,
                    removed=removed,
                    client=client.client,
                    override=client.override,
                    services_ended=client.services_ended,
                    sent=sent,
                )
            )
        return PartnerDigestState(partner_id, partner, tuple(facts))


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _sent(ledger: dict[bytes, bytes]) -> tuple[SentReminder, ...]:
    """The reminders of a renewal's ledger that were sent; the others (skipped, failed...) reached nobody."""
    sent = []
    for reminder_id, raw in ledger.items():
        if b'"sent"' not in raw:  # most outcomes are skips: not worth parsing
            continue
        outcome = Outcome.from_json(raw)
        if outcome.kind == "sent":
            sent.append(SentReminder(reminder_id.decode(), outcome.at, outcome.to))
    return tuple(sent)
