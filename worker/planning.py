"""Turns stored state into the due index: re-plans the renewals an event touches, atomically."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import redis

from .events import (
    ClientOwnerChanged,
    ClientServicesEnded,
    ClientUpdated,
    Event,
    PartnerData,
    PartnerUpdated,
    RenewalRemoved,
    RenewalUpdated,
)
from .keys import Keys
from .ledger import Outcome, due_member
from .planner import Plan, plan_renewal
from .rules import RuleSet
from .schedule import epoch_ms
from .store import ClientState, RenewalState, Store

__all__ = ["Planning", "RenewalView"]

_log = logging.getLogger("worker.planning")


@dataclass(frozen=True)
class RenewalView:
    """Everything known about one renewal at one moment: what the planner and the delivery decide on."""

    partner_id: str
    renewal_id: str
    renewal: RenewalState
    client: ClientState | None
    partner: PartnerData | None
    outcomes: dict[str, Outcome]

    def plan(self, rules: RuleSet, now: datetime) -> Plan:
        client = self.client
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
        )


# Replaces a renewal's planned reminders in the due index. A reminder that is claimed (its
# delivery is under way) is not put back: the delivery re-checks the plan when it runs, and hands
# the reminder back to planning if it is not due after all. That keeps "enqueued once" true.
_WRITE_PLAN = """
local old = redis.call('SMEMBERS', KEYS[2])
for _, m in ipairs(old) do redis.call('ZREM', KEYS[1], m) end
redis.call('DEL', KEYS[2])
local i = 2
for _ = 1, tonumber(ARGV[1]) do
  local m = ARGV[i]
  redis.call('SADD', KEYS[2], m)
  if not redis.call('ZSCORE', KEYS[3], m) then redis.call('ZADD', KEYS[1], ARGV[i + 1], m) end
  i = i + 2
end
while i <= #ARGV do
  redis.call('HSETNX', KEYS[4], ARGV[i], ARGV[i + 1])
  i = i + 2
end
return 1
"""


class Planning:
    """Re-plans renewals; each re-plan reads and writes under WATCH, so a concurrent change forces a redo."""

    def __init__(self, client: redis.Redis, store: Store, keys: Keys) -> None:
        self.redis = client
        self.store = store
        self.keys = keys
        self._write_plan = client.register_script(_WRITE_PLAN)

    def view(self, partner_id: str, renewal_id: str) -> RenewalView:
        renewal = self.store.renewal_state(partner_id, renewal_id)
        client_id = renewal.renewal.client_id if renewal.renewal else None
        client = self.store.client_state(partner_id, client_id) if client_id else None
        raw = self.redis.hgetall(self.keys.ledger(partner_id, renewal_id))
        outcomes = {k.decode(): Outcome.from_json(v) for k, v in raw.items()}
        return RenewalView(partner_id, renewal_id, renewal, client, self.store.partner(partner_id), outcomes)

    def replan(self, partner_id: str, renewal_id: str, rules: RuleSet, now: datetime) -> Plan:
        k = self.keys
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(
                        k.renewal(partner_id, renewal_id),
                        k.ledger(partner_id, renewal_id),
                        k.planned(partner_id, renewal_id),
                        k.partner(partner_id),
                    )
                    renewal = self.store.renewal_state(partner_id, renewal_id).renewal
                    if renewal is not None:
                        cid = renewal.client_id
                        pipe.watch(k.client(partner_id, cid), k.owner(partner_id, cid), k.ended(partner_id, cid))
                    view = self.view(partner_id, renewal_id)
                    plan = view.plan(rules, now)
                    args: list[str | int] = [len(plan.planned)]
                    for item in plan.planned:
                        args += [due_member(partner_id, renewal_id, item.reminder_id), epoch_ms(item.due_at)]
                    for skip in plan.skipped:
                        outcome = Outcome("skipped", now, reason=skip.reason, extra={"due_at": skip.due_at.isoformat()})
                        args += [skip.reminder_id, outcome.to_json()]
                    keys = [k.due(), k.planned(partner_id, renewal_id), k.claimed(), k.ledger(partner_id, renewal_id)]
                    pipe.multi()
                    self._write_plan(keys=keys, args=args, client=pipe)
                    pipe.execute()
                    return plan
                except redis.WatchError:
                    continue

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

    def replan_many(self, partner_id: str, renewal_ids: Iterable[str], rules: RuleSet, now: datetime) -> int:
        count = 0
        for renewal_id in renewal_ids:
            self.replan(partner_id, renewal_id, rules, now)
            count += 1
        return count
