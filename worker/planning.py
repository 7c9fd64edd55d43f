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


class Planning:
    """Re-plans renewals; each re-plan reads and writes under WATCH, so a concurrent change forces a redo."""

    def __init__(self, client: redis.Redis, store: Store, keys: Keys) -> None:
        self.redis = client
        self.store = store
        self.keys = keys

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
                    old = pipe.smembers(k.planned(partner_id, renewal_id))
                    pipe.multi()
                    if old:
                        pipe.zrem(k.due(), *old)
                    pipe.delete(k.planned(partner_id, renewal_id))
                    for item in plan.planned:
                        member = due_member(partner_id, renewal_id, item.reminder_id)
                        pipe.zadd(k.due(), {member: epoch_ms(item.due_at)})
                        pipe.sadd(k.planned(partner_id, renewal_id), member)
                    for skip in plan.skipped:
                        outcome = Outcome("skipped", now, reason=skip.reason, extra={"due_at": skip.due_at.isoformat()})
                        pipe.hsetnx(k.ledger(partner_id, renewal_id), skip.reminder_id, outcome.to_json())
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
