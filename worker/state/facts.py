"""Reads what plans depend on for every stored renewal, quickly: a few commands per thousand renewals.

``Planning.views`` builds whole models, as the delivery needs; a scan over a million renewals (the
rule diff) needs only start date, status, time zones, owners and the ledger's reminder ids, so it
reads records with MGET and their JSON without building models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date
from functools import lru_cache
from typing import Any

import redis
from pydantic import BaseModel

from ..domain.events import ClientData, OwnerData, PartnerData, RenewalData
from ..domain.rulediff import PlanFacts
from .keys import SEP, Keys
from .records import payload_fields, read_record
from .scripts import LuaScript
from .store import Store

__all__ = ["plan_facts", "stored_plan_facts"]


def _fields(cls: type[BaseModel], raw: bytes | None) -> tuple[bool, dict[str, Any]]:
    record = read_record(raw)
    if record is None:
        return False, {}
    return record.removed, payload_fields(cls, record.payload) or {}


# Each renewal's record and the ids of its final reminders, for a batch, in one call: a thousand
# HKEYS would cost the client more to write and read than the records themselves.
#   KEYS: n renewal records, then their n ledgers. Returns record, SEP-joined ids, record, ...
_RECORDS_AND_LEDGERS = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  out[2 * i - 1] = redis.call('GET', KEYS[i])
  out[2 * i] = table.concat(redis.call('HKEYS', KEYS[n + i]), ARGV[1])
end
return out
"""


def plan_facts(client: redis.Redis, keys: Keys, pairs: Sequence[tuple[str, str]]) -> list[PlanFacts]:
    """The plan facts of renewals (partner id, renewal id), in order, in two round trips."""
    if not pairs:
        return []
    script = LuaScript(client, _RECORDS_AND_LEDGERS)
    reply = script(
        keys=[keys.renewal(pid, rid) for pid, rid in pairs] + [keys.ledger(pid, rid) for pid, rid in pairs],
        args=[SEP],
    )
    renewals = [_fields(RenewalData, raw or None) for raw in reply[0::2]]
    ledgers = [frozenset(ids.decode().split(SEP)) if ids else frozenset() for ids in reply[1::2]]
    partner_ids = sorted({pid for pid, _ in pairs})
    clients = sorted({(pid, r["client_id"]) for (pid, _), (_, r) in zip(pairs, renewals, strict=True) if r})
    with client.pipeline(transaction=False) as pipe:
        pipe.mget([keys.partner(pid) for pid in partner_ids])
        for key in (keys.client, keys.owner, keys.ended):
            pipe.mget([key(pid, cid) for pid, cid in clients] or ["-"])
        partner_raws, client_raws, owner_raws, ended_raws = pipe.execute()
    partners = {pid: _fields(PartnerData, raw)[1] for pid, raw in zip(partner_ids, partner_raws, strict=True)}
    known = {
        ref: (_fields(ClientData, c)[1], _fields(OwnerData, o)[1], e is not None)
        for ref, c, o, e in zip(clients, client_raws, owner_raws, ended_raws, strict=False)
    }
    out = []
    for (pid, _), (removed, renewal), ledger in zip(pairs, renewals, ledgers, strict=True):
        if not renewal:
            out.append(PlanFacts(None))
            continue
        details, override, ended = known[(pid, renewal["client_id"])]
        partner = partners[pid]
        out.append(
            PlanFacts(
                start_date=_date(renewal["start_date"]),
                status=renewal.get("status", "pending"),
                removed=removed,
                services_ended=ended,
                client_known=bool(details),
                client_timezone=details.get("timezone"),
                partner_timezone=partner.get("timezone"),
                default_owner=partner.get("default_owner"),
                override_owner=override.get("owner"),
                final=ledger,
            )
        )
    return out


def stored_plan_facts(store: Store, *, batch: int = 1000) -> Iterator[tuple[str, str, PlanFacts]]:
    """(partner id, renewal id, facts) of every stored renewal, partner by partner."""
    for partner_id in store.partner_ids():
        renewal_ids = store.renewal_ids(partner_id)
        for start in range(0, len(renewal_ids), batch):
            chunk = [(partner_id, rid) for rid in renewal_ids[start : start + batch]]
            for (pid, rid), facts in zip(chunk, plan_facts(store.redis, store.keys, chunk), strict=True):
                yield pid, rid, facts


@lru_cache(maxsize=4096)
def _date(text: str) -> date:
    # Start dates repeat a lot across a partner's renewals: each is parsed once.
    return date.fromisoformat(text)
