"""Reads what plans depend on for every stored renewal, quickly: a few commands per thousand renewals.

``Planning.views`` builds whole models, as the delivery needs; a scan over a million renewals (the
rule diff) needs only start date, status, time zones, owners and the ledger's reminder ids, so it
reads records with MGET and their JSON without building models.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import redis
from pydantic import BaseModel

from ..domain.events import ClientData, OwnerData, PartnerData, RenewalData
from ..domain.rulediff import PlanFacts
from .keys import SEP, Keys
from .records import StoredRecord, payload_fields, read_record
from .scripts import LuaScript
from .store import Store

__all__ = ["plan_facts", "stored_plan_facts"]


def _latest(times: bytes) -> datetime | None:
    return max((datetime.fromisoformat(t) for t in times.decode().split(SEP)), default=None) if times else None


def _fields(cls: type[BaseModel], record: StoredRecord | None) -> tuple[bool, dict[str, Any]]:
    if record is None:
        return False, {}
    return record.removed, payload_fields(cls, record.payload) or {}


# Each renewal's record, the ids of its final reminders and when each of its sent ones was sent,
# for a batch, in one call: a thousand HGETALLs would cost the client more to write and read than
# the records themselves. An outcome's JSON starts {"kind": ..., "at": ...} (Outcome.to_json).
#   KEYS: n renewal records, then their n ledgers.
#   Returns per renewal: record, SEP-joined reminder ids, SEP-joined times of the sent ones.
_RECORDS_AND_LEDGERS = """
local n = #KEYS / 2
local out = {}
for i = 1, n do
  out[3 * i - 2] = redis.call('GET', KEYS[i])
  local ids, sent = {}, {}
  local ledger = redis.call('HGETALL', KEYS[n + i])
  for j = 1, #ledger, 2 do
    ids[#ids + 1] = ledger[j]
    local at = string.match(ledger[j + 1], '^{"kind": "sent", "at": "([^"]+)"')
    if at then sent[#sent + 1] = at end
  end
  out[3 * i - 1] = table.concat(ids, ARGV[1])
  out[3 * i] = table.concat(sent, ARGV[1])
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
    records = [read_record(raw or None) for raw in reply[0::3]]
    renewals = [_fields(RenewalData, record) for record in records]
    ledgers = [frozenset(ids.decode().split(SEP)) if ids else frozenset() for ids in reply[1::3]]
    last_sent = [_latest(times) for times in reply[2::3]]
    partner_ids = sorted({pid for pid, _ in pairs})
    clients = sorted({(pid, r["client_id"]) for (pid, _), (_, r) in zip(pairs, renewals, strict=True) if r})
    with client.pipeline(transaction=False) as pipe:
        pipe.mget([keys.partner(pid) for pid in partner_ids])
        for key in (keys.client, keys.owner, keys.ended):
            pipe.mget([key(pid, cid) for pid, cid in clients] or ["-"])
        partner_raws, client_raws, owner_raws, ended_raws = pipe.execute()
    partner_records = {pid: read_record(raw) for pid, raw in zip(partner_ids, partner_raws, strict=True)}
    partners = {pid: _fields(PartnerData, record)[1] for pid, record in partner_records.items()}
    known = {}
    for ref, c, o, e in zip(clients, client_raws, owner_raws, ended_raws, strict=False):
        client_record, owner_record = read_record(c), read_record(o)
        changed = [r.updated_at for r in (client_record, owner_record) if r is not None]
        known[ref] = (
            _fields(ClientData, client_record)[1],
            _fields(OwnerData, owner_record)[1],
            e is not None,
            changed,
        )
    out = []
    for (pid, _), record, (removed, renewal), ledger, sent in zip(
        pairs, records, renewals, ledgers, last_sent, strict=True
    ):
        if not renewal or record is None:
            out.append(PlanFacts(None))
            continue
        details, override, ended, changed = known[(pid, renewal["client_id"])]
        partner = partners[pid]
        partner_record = partner_records[pid]
        # When the renewal's data last changed: what the planner calls known_since (RenewalView).
        changed = [record.updated_at, *changed] + ([partner_record.updated_at] if partner_record else [])
        out.append(
            PlanFacts(
                start_date=_date(renewal["start_date"]),
                status=renewal.get("status", "pending"),
                removed=removed,
                services_ended=ended,
                client_known=bool(details),
                partner_known=bool(partner),
                client_timezone=details.get("timezone"),
                partner_timezone=partner.get("timezone"),
                default_owner=partner.get("default_owner"),
                override_owner=override.get("owner"),
                final=ledger,
                known_since=max(changed),
                last_sent_at=sent,
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
