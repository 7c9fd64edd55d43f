"""Turns stored state into the due index: re-plans the renewals an event touches, atomically."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis

from ..domain.events import (
    ClientOwnerChanged,
    ClientServicesEnded,
    ClientUpdated,
    Event,
    PartnerData,
    PartnerUpdated,
    RenewalRemoved,
    RenewalUpdated,
)
from ..domain.planner import NO_CLIENT_DETAILS, NO_PARTNER_SETTINGS, Plan, plan_renewal
from ..domain.rules import RuleSet
from .keys import CLIENT_BUCKETS, Keys
from .ledger import Outcome, due_member
from .records import StoredRecord, decode_payload, read_record
from .rule_change import RulesInForce, parse_rules_in_force
from .schedule import epoch_ms
from .scripts import LuaScript, run_pipeline
from .store import ClientState, RenewalState, Store, client_state_of, dirty_member, parse_dirty_member, renewal_state

__all__ = ["Planning", "RenewalView"]

_log = logging.getLogger("worker.planning")


@dataclass(frozen=True)
class RenewalView:
    """Everything known about one renewal at one moment: what the planner and the delivery decide on.

    ``version`` holds the stamps of the records it was read from, so a write can tell whether any
    of them changed in the meantime.
    """

    partner_id: str
    renewal_id: str
    renewal: RenewalState
    client: ClientState | None
    partner: PartnerData | None
    outcomes: dict[str, Outcome]
    version: tuple[tuple[str, str], ...] = ()
    known_since: datetime | None = None
    rules_in_force: RulesInForce | None = None

    def plan(self, rules: RuleSet, now: datetime) -> Plan:
        """The plan at ``now``; a rule edit and the reminders already sent keep it from mailing by surprise."""
        client = self.client
        sent_at = [outcome.at for outcome in self.outcomes.values() if outcome.kind == "sent"]
        return plan_renewal(
            self.renewal.renewal,
            removed=self.renewal.removed,
            services_ended=client.services_ended if client else False,
            client=client.client if client else None,
            partner=self.partner,
            override=client.override if client else None,
            rules=rules,
            now=now,
            final=self.outcomes.keys(),
            rule_change=None if self.rules_in_force is None else self.rules_in_force.change_for(rules, now),
            known_since=self.known_since,
            last_sent_at=max(sent_at, default=None),
        )


# Replaces a renewal's entry in the due index with its next planned reminder (the planner's first,
# or the second while the first is claimed: the others follow once it is final, when the delivery
# marks the renewal to be planned again; one entry per renewal, not per reminder, keeps the index a
# third of the size), unless a record the plan was made from
# changed since it was read (then it returns 0 and the caller plans again from fresh state): an
# optimistic check that costs no WATCH round trips, so thousands of renewals go in one pipeline.
# The previous plan is removed by trying every reminder id ever planned (a handful, kept in one
# set) rather than from a list kept per renewal, which would cost more than the plan itself.
# A reminder that is claimed (its delivery is under way) is not put back: the delivery re-checks
# the plan when it runs and hands the reminder back if it is not due after all; that keeps
# "enqueued once" true. A final reminder (in the ledger) is never planned.
# A renewal that waits for missing data (its client, its partner) is kept in the waiting set of
# that reason, from the first plan that found it waiting, so ops can count them and see the oldest.
#   KEYS: due, planned reminder ids, claimed, ledger, waiting for a client, waiting for a partner,
#         then the k version records
#   ARGV: k, k expected stamps ('' = absent), expected ledger size, the renewal's due-member prefix,
#         waiting ('' = not waiting, else the index of its KEYS: 5 or 6), now (ms),
#         n planned (reminder id, score) pairs, then (reminder id, outcome) pairs of skipped reminders
_WRITE_PLAN = """
local k = tonumber(ARGV[1])
for j = 1, k do
  local record = redis.call('GET', KEYS[6 + j])
  local stamp = record and string.match(record, '^[^\\31]*\\31[^\\31]*') or ''
  if stamp ~= ARGV[1 + j] then return 0 end
end
if redis.call('HLEN', KEYS[4]) ~= tonumber(ARGV[k + 2]) then return 0 end
local prefix = ARGV[k + 3]
local waiting = tonumber(ARGV[k + 4])
for w = 5, 6 do
  if w == waiting then redis.call('ZADD', KEYS[w], 'NX', ARGV[k + 5], prefix)
  else redis.call('ZREM', KEYS[w], prefix) end
end
for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do redis.call('ZREM', KEYS[1], prefix .. id) end
local i = k + 7
local indexed = false
for _ = 1, tonumber(ARGV[k + 6]) do
  local m = prefix .. ARGV[i]
  redis.call('SADD', KEYS[2], ARGV[i])
  if not indexed and not redis.call('ZSCORE', KEYS[3], m) then
    redis.call('ZADD', KEYS[1], ARGV[i + 1], m)
    indexed = true
  end
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
"""

_BATCH = 500
# Where the plan write finds each waiting set among its KEYS.
_WAITING_KEY_INDEX = {NO_CLIENT_DETAILS: 5, NO_PARTNER_SETTINGS: 6}

# Drops dirty marks that were handled, unless the mark was renewed since it was read (a newer
# event for the same thing came in while planning ran): that one stays for the next flush.
_CLEAR_DIRTY = """
local cleared = 0
for i = 1, #ARGV, 2 do
  if tonumber(redis.call('ZSCORE', KEYS[1], ARGV[i])) == tonumber(ARGV[i + 1]) then
    redis.call('ZREM', KEYS[1], ARGV[i])
    cleared = cleared + 1
  end
end
return cleared
"""


def _stamp(record: StoredRecord | None) -> str:
    """The stamp of a stored record as the plan write compares it ('' when there is none)."""
    return "" if record is None else record.stamp


def due_member_prefix(partner_id: str, renewal_id: str) -> str:
    """What every due-index member of one renewal starts with; the reminder id follows."""
    return due_member(partner_id, renewal_id, "")


class Planning:
    """Re-plans renewals: reads in two pipelined round trips per batch, writes with one checked script each."""

    def __init__(self, client: redis.Redis, store: Store, keys: Keys) -> None:
        self.redis = client
        self.store = store
        self.keys = keys
        self._write_plan = LuaScript(client, _WRITE_PLAN)
        self._clear_dirty = LuaScript(client, _CLEAR_DIRTY)

    def flush(self, rules: RuleSet, now: datetime, *, limit: int = 100_000, budget_s: float | None = None) -> int:
        """Re-plan what applied events marked dirty, in batches; returns how many distinct renewals were planned.

        Any number of processes may flush at once: a renewal planned twice gets the same plan, and
        a mark is only cleared if no newer event renewed it meanwhile. A partner's mark is first
        split into one per index hash, and a batch stops at some _BATCH renewals, so that with
        ``budget_s`` a flush returns after about that long (plus a batch) whatever was marked:
        the scheduler claims due reminders between flushes.
        """
        started = time.monotonic()
        planned = 0
        distinct: set[tuple[str, str]] = set()  # a renewal marked directly and through its partner counts once
        while planned < limit:
            rows = self.redis.zrange(self.keys.dirty(), 0, _BATCH - 1, withscores=True)
            if not rows:
                break
            pairs: list[tuple[str, str]] = []
            handled: list[tuple[bytes, float]] = []
            for member, score in rows:
                kind, partner_id, item_id = parse_dirty_member(member)
                if kind == "renewal":
                    pairs.append((partner_id, item_id))
                elif kind == "partner":
                    marks = {dirty_member("bucket", partner_id, str(b)): score for b in range(CLIENT_BUCKETS)}
                    self.redis.zadd(self.keys.dirty(), marks, nx=True)  # type: ignore[arg-type]
                elif kind == "bucket":
                    pairs.extend(
                        (partner_id, rid) for rid in self.store.renewal_ids_in_bucket(partner_id, int(item_id))
                    )
                else:
                    pairs.extend((partner_id, rid) for rid in self.store.renewal_ids(partner_id, item_id))
                handled.append((member, score))
                if len(pairs) >= _BATCH:
                    break
            pairs = list(dict.fromkeys(pairs))  # a renewal marked itself and through its client: planned once
            for start in range(0, len(pairs), _BATCH):
                self._replan_batch(pairs[start : start + _BATCH], rules, now)
            planned += len(pairs)
            distinct.update(pairs)
            args: list[bytes | str] = []
            for member, score in handled:
                args += [member, repr(score)]
            self._clear_dirty(keys=[self.keys.dirty()], args=args)
            if budget_s is not None and time.monotonic() - started >= budget_s:
                break
        return len(distinct)

    def view(self, partner_id: str, renewal_id: str) -> RenewalView:
        return self.views([(partner_id, renewal_id)])[0]

    def recheck(
        self,
        requests: Sequence[tuple[str, str, str]],
        *,
        before: Callable[[redis.client.Pipeline], int] | None = None,
        scripts: Sequence[LuaScript] = (),
    ) -> tuple[list[Any], list[RenewalView]]:
        """Read renewals again, each (partner, renewal, client it named when last read), in one round trip.

        ``before`` queues commands to run first in the same pipeline (outcomes waiting to be
        written) and returns how many replies they add; their replies come back first. Should a
        renewal now name another client, it is read again in a second round trip.
        """
        k = self.keys
        counted = [0]

        def build(pipe: redis.client.Pipeline) -> None:
            counted[0] = before(pipe) if before is not None else 0
            for partner_id, renewal_id, client_id in requests:
                pipe.get(k.renewal(partner_id, renewal_id))
                pipe.hgetall(k.ledger(partner_id, renewal_id))
                pipe.get(k.partner(partner_id))
                pipe.get(k.client(partner_id, client_id))
                pipe.get(k.owner(partner_id, client_id))
                pipe.get(k.ended(partner_id, client_id))
            pipe.hgetall(k.rules_change())

        replies = run_pipeline(self.redis, build, scripts)
        head, rest = replies[: counted[0]], replies[counted[0] : -1]
        rules_in_force = parse_rules_in_force(replies[-1])
        out: list[RenewalView] = []
        for n, (partner_id, renewal_id, client_id) in enumerate(requests):
            renewal_raw, ledger, partner_raw, *client_raws = rest[6 * n : 6 * n + 6]
            renewal_record = read_record(renewal_raw)
            renewal = renewal_state(renewal_record)
            if renewal.renewal is not None and renewal.renewal.client_id != client_id:
                out.append(self.view(partner_id, renewal_id))
                continue
            partner_record = read_record(partner_raw)
            partner = None if partner_record is None else decode_payload(PartnerData, partner_record.payload)
            version = [
                (k.renewal(partner_id, renewal_id), _stamp(renewal_record)),
                (k.partner(partner_id), _stamp(partner_record)),
            ]
            client = None
            changed = [record.updated_at for record in (renewal_record, partner_record) if record is not None]
            if renewal.renewal is not None:
                records = [read_record(raw) for raw in client_raws]
                client = client_state_of(client_id, *records)
                changed += [record.updated_at for record in records[:2] if record is not None]
                client_keys = (
                    k.client(partner_id, client_id),
                    k.owner(partner_id, client_id),
                    k.ended(partner_id, client_id),
                )
                version += [(key, _stamp(record)) for key, record in zip(client_keys, records, strict=True)]
            outcomes = {key.decode(): Outcome.from_json(value) for key, value in ledger.items()}
            view = RenewalView(partner_id, renewal_id, renewal, client, partner, outcomes, tuple(version))
            out.append(replace(view, known_since=max(changed, default=None), rules_in_force=rules_in_force))
        return head, out

    def views(self, pairs: Sequence[tuple[str, str]]) -> list[RenewalView]:
        """Read many renewals with their clients, partners and ledgers in two round trips."""
        k = self.keys
        partner_ids = sorted({pid for pid, _ in pairs})
        with self.redis.pipeline(transaction=False) as pipe:
            for pid, rid in pairs:
                pipe.get(k.renewal(pid, rid))
                pipe.hgetall(k.ledger(pid, rid))
            for pid in partner_ids:
                pipe.get(k.partner(pid))
            pipe.hgetall(k.rules_change())
            first = pipe.execute()
        rules_in_force = parse_rules_in_force(first[-1])
        partners = {}
        for pid, raw in zip(partner_ids, first[2 * len(pairs) : -1], strict=True):
            record = read_record(raw)
            model = None if record is None else decode_payload(PartnerData, record.payload)
            partners[pid] = (model, _stamp(record), None if record is None else record.updated_at)
        renewal_records = [read_record(first[2 * i]) for i in range(len(pairs))]
        renewals = [renewal_state(record) for record in renewal_records]
        clients = sorted(
            {(pid, r.renewal.client_id) for (pid, _), r in zip(pairs, renewals, strict=True) if r.renewal is not None}
        )
        with self.redis.pipeline(transaction=False) as pipe:
            for pid, cid in clients:
                pipe.get(k.client(pid, cid))
                pipe.get(k.owner(pid, cid))
                pipe.get(k.ended(pid, cid))
            second = pipe.execute()
        client_states: dict[tuple[str, str], tuple[ClientState, tuple[str, str, str], list[datetime]]] = {}
        for n, (pid, cid) in enumerate(clients):
            client, owner, ended = (read_record(raw) for raw in second[3 * n : 3 * n + 3])
            state = client_state_of(cid, client, owner, ended)
            changed = [record.updated_at for record in (client, owner) if record is not None]
            client_states[(pid, cid)] = (state, (_stamp(client), _stamp(owner), _stamp(ended)), changed)
        out = []
        for i, (pid, rid) in enumerate(pairs):
            ledger = first[2 * i + 1]
            renewal = renewals[i]
            partner, partner_stamp, partner_changed = partners[pid]
            version = [(k.renewal(pid, rid), _stamp(renewal_records[i])), (k.partner(pid), partner_stamp)]
            # When the data the plan is made from last changed: a reminder due before it came late.
            changed = [moment for moment in (renewal.updated_at, partner_changed) if moment is not None]
            client = None
            if renewal.renewal is not None:
                cid = renewal.renewal.client_id
                client, (client_stamp, owner_stamp, ended_stamp), client_changed = client_states[(pid, cid)]
                changed += client_changed
                version += [
                    (k.client(pid, cid), client_stamp),
                    (k.owner(pid, cid), owner_stamp),
                    (k.ended(pid, cid), ended_stamp),
                ]
            out.append(
                RenewalView(
                    pid,
                    rid,
                    renewal,
                    client,
                    partner,
                    {key.decode(): Outcome.from_json(value) for key, value in ledger.items()},
                    tuple(version),
                    known_since=max(changed, default=None),
                    rules_in_force=rules_in_force,
                )
            )
        return out

    def replan(self, partner_id: str, renewal_id: str, rules: RuleSet, now: datetime) -> Plan:
        return self._replan_batch([(partner_id, renewal_id)], rules, now)[0]

    def replan_many(self, partner_id: str, renewal_ids: Iterable[str], rules: RuleSet, now: datetime) -> int:
        ids = list(renewal_ids)
        for start in range(0, len(ids), _BATCH):
            self._replan_batch([(partner_id, rid) for rid in ids[start : start + _BATCH]], rules, now)
        return len(ids)

    def _replan_batch(self, pairs: list[tuple[str, str]], rules: RuleSet, now: datetime) -> list[Plan]:
        plans: dict[tuple[str, str], Plan] = {}
        pending = pairs
        while pending:
            views = self.views(pending)
            batch = [(view, view.plan(rules, now)) for view in views]

            def build(pipe: redis.client.Pipeline, batch: list[tuple[RenewalView, Plan]] = batch) -> None:
                for view, plan in batch:
                    self._queue_write(pipe, view, plan, now)

            written = run_pipeline(self.redis, build, [self._write_plan])
            retry = []
            for (view, plan), ok in zip(batch, written, strict=True):
                if ok:
                    plans[(view.partner_id, view.renewal_id)] = plan
                else:
                    retry.append((view.partner_id, view.renewal_id))
            pending = retry
        return [plans[pair] for pair in pairs]

    def _queue_write(self, pipe: redis.client.Pipeline, view: RenewalView, plan: Plan, now: datetime) -> None:
        k = self.keys
        pid, rid = view.partner_id, view.renewal_id
        args: list[str | int] = [len(view.version), *(stamp for _, stamp in view.version), len(view.outcomes)]
        # Only the next reminder is indexed (the plan is sorted by due time); the one after it is
        # sent along for when the next is in flight, so that a plan changed meanwhile (new rules
        # adding a later reminder) is never left without an entry.
        upcoming = plan.planned[:2]
        waiting = _WAITING_KEY_INDEX.get(plan.inactive_reason or "", "")
        args += [due_member_prefix(pid, rid), waiting, epoch_ms(now), len(upcoming)]
        for item in upcoming:
            args += [item.reminder_id, epoch_ms(item.due_at)]
        for skip in plan.skipped:
            outcome = Outcome("skipped", now, reason=skip.reason, extra={"due_at": skip.due_at.isoformat()})
            args += [skip.reminder_id, outcome.to_json()]
        keys = [k.due(), k.planned_reminder_ids(), k.claimed(), k.ledger(pid, rid)]
        keys += [k.waiting(NO_CLIENT_DETAILS), k.waiting(NO_PARTNER_SETTINGS), *(key for key, _ in view.version)]
        self._write_plan.queue(pipe, keys=keys, args=args)

    def renewals_touched(self, event: Event) -> list[str]:
        """The renewal ids whose plan an event may change."""
        pid = event.partner_id
        if isinstance(event, PartnerUpdated):
            return self.store.renewal_ids(pid)
        if isinstance(event, (ClientUpdated, ClientOwnerChanged, ClientServicesEnded)):
            return self.store.renewal_ids(pid, event.data.client_id)
        if isinstance(event, (RenewalUpdated, RenewalRemoved)):
            return [event.data.renewal_id]
        raise TypeError(f"unhandled event {type(event).__name__}")  # pragma: no cover

    def replan_for_event(self, event: Event, rules: RuleSet, now: datetime) -> int:
        ids = self.renewals_touched(event)
        for renewal_id in ids:
            self.replan(event.partner_id, renewal_id, rules, now)
        return len(ids)

    def replan_all(self, rules: RuleSet, now: datetime) -> int:
        count = 0
        for partner_id in self.store.partner_ids():
            count += self.replan_many(partner_id, self.store.renewal_ids(partner_id), rules, now)
        _log.info("re-planned %d renewal(s)", count)
        return count
